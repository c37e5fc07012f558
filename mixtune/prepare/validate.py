"""Validate: keep only conversations a trainer can use as they are.

Input: the transformed frame (``messages`` per row). Output: the kept rows
with ``num_tokens`` (Int64: tokens of the conversation rendered with the
model's chat template), and a rejects table. Each rejected row gets exactly
one reason, the first check it fails, in this order:

1. ``bad_schema``: no ``messages`` column, the wrong type, a null value, a
   null turn or a turn without a role;
2. ``bad_role_order``: roles must be an optional ``system`` first, then
   ``user``/``assistant`` alternating from ``user``, ending with ``assistant``;
   then, where turns carry a ``weight`` (OpenAI chat fine-tuning format):
   ``invalid_weight``, a weight other than 0 or 1, or one on a turn that is
   not the assistant's (field ``messages[i].weight``); and
   ``no_supervised_tokens``, every assistant turn has weight 0, so training
   would learn nothing from the row;
3. ``empty_content``: a null, empty or whitespace-only content
   (field ``messages[i].content``);
4. ``reserved_string``: a reserved literal (special tokens, ``[EOS]`` ...)
   or a role prefix (``User:``) left in some content;
5. ``too_long``: more than ``max_length`` tokens. With
   ``on_too_long: truncate`` the final assistant content is cut from its end
   to fit instead (counted in ``truncated``), and a row whose other turns
   alone leave no room is rejected as ``prompt_too_long``;
6. ``duplicate``: the same conversation as an earlier row, which is kept
   (when ``drop_duplicates``). Checked after truncation: what is trained on
   is what must be unique.

Invariant: rows in = rows kept + rows rejected; kept and rejected rows stay
in input order.
"""

from __future__ import annotations

import os
from collections import Counter, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import polars as pl

from mixtune.prepare.sanitize import find_reserved
from mixtune.sections import SanitizeConfig, ValidateConfig
from mixtune.prepare.transform import LINEAGE_COLUMNS, empty_rejects, rejects_table

REASONS = ("bad_schema", "bad_role_order", "invalid_weight", "no_supervised_tokens",
           "empty_content", "reserved_string",
           "too_long", "prompt_too_long", "duplicate")
_ROLE_CODES = {"system": "s", "user": "u", "assistant": "a"}
_ROLE_ORDER = r"^s?(ua)+$"
# Re-cut attempts when the cut answer tokenizes differently inside the template.
_MAX_TRUNCATE_TRIES = 4
# Conversations rendered and counted per batched call: big enough that per-call overhead
# vanishes, small enough that a chunk's encodings stay small and every core gets chunks.
_TOKENIZE_BATCH_ROWS = 1024
# Rendered chunks waiting for a counting thread, per thread: bounds the rendered text held at
# once (rendering runs ~10x faster than tokenizing and would otherwise hold all of it).
_CHUNKS_IN_FLIGHT_PER_THREAD = 2
_POS = "__validate_pos"  # input position, so rejects from every check merge back in input order
_ROW, _TURN, _FOUND, _CUT = "__validate_row", "__validate_turn", "__validate_found", "__validate_cut"


@dataclass
class ValidateResult:
    frame: pl.DataFrame
    rejects: pl.DataFrame
    reasons: dict[str, int] = field(default_factory=dict)  # reason code -> rows rejected
    truncated: int = 0  # kept rows whose final answer was cut to fit max_length

    @property
    def rows_rejected(self) -> int:
        return self.rejects.height


def reject_share_exceeded(rows_in: int, rows_rejected: int, max_reject_percent: float) -> bool:
    """True when more than ``max_reject_percent`` of the rows were rejected."""
    if rows_in <= 0:
        return False
    return 100.0 * rows_rejected / rows_in > max_reject_percent


def validate(
    frame: pl.DataFrame,
    cfg: ValidateConfig,
    tokenizer,
    reserved: list[str],
    role_prefixes: list[str] | None = None,
) -> ValidateResult:
    """Check every row (see the module docstring); ``reserved`` are literal strings
    (``sanitize.reserved_strings``), ``role_prefixes`` default to the sanitize defaults."""
    if role_prefixes is None:
        role_prefixes = SanitizeConfig().role_prefixes
    alive = frame.with_row_index(_POS)
    rejected: list[pl.DataFrame] = []
    schema_problem = _schema_problem(frame)
    if schema_problem is not None:
        rejected.append(alive.with_columns(
            _field=pl.lit("messages"), _reason=pl.lit("bad_schema"), _detail=pl.lit(schema_problem)))
        alive = alive.clear()
    else:
        for check in (_check_rows_schema, _check_role_order, _check_weights, _check_empty_content):
            alive = _split(check(alive), rejected)
        alive = _split(_check_reserved(alive, reserved, role_prefixes), rejected)
    truncated = 0
    if alive.height:
        alive, truncated = _count_tokens(alive, cfg, tokenizer)
        alive = _split(alive, rejected)
        if cfg.drop_duplicates:
            alive = _split(_check_duplicates(alive), rejected)
    else:
        alive = alive.with_columns(num_tokens=pl.lit(None, dtype=pl.Int64))
    # Each check's rejects come out in input order; merging on _pos keeps that order overall.
    rejects = (rejects_table(pl.concat(rejected, how="diagonal_relaxed").sort(_POS))
               if rejected else empty_rejects())
    reasons = dict(sorted(Counter(rejects.get_column("reason").to_list()).items()))
    kept = alive.drop(_POS).with_columns(pl.col("num_tokens").cast(pl.Int64))
    return ValidateResult(kept, rejects, reasons, truncated)


def _split(checked: pl.DataFrame, rejected: list[pl.DataFrame]) -> pl.DataFrame:
    """Move rows with a verdict to ``rejected``; return the rest without verdict columns."""
    failing = pl.col("_reason").is_not_null()
    bad = checked.filter(failing)
    if bad.height:
        keep = [c for c in (*LINEAGE_COLUMNS, _POS, "_field", "_reason", "_detail") if c in bad.columns]
        rejected.append(bad.select(keep))
    return checked.filter(~failing).drop("_field", "_reason", "_detail")


def _verdict(failing: pl.Expr, reason: str, field_name: pl.Expr, detail: pl.Expr) -> dict[str, pl.Expr]:
    return {
        "_field": pl.when(failing).then(field_name),
        "_reason": pl.when(failing).then(pl.lit(reason)),
        "_detail": pl.when(failing).then(detail),
    }


def _schema_problem(frame: pl.DataFrame) -> str | None:
    """Why the messages column as a whole cannot be checked, or None."""
    if "messages" not in frame.columns:
        return "no messages column; columns present: " + ", ".join(frame.columns)
    dtype = frame.schema["messages"]
    ok = isinstance(dtype, pl.List) and isinstance(dtype.inner, pl.Struct) and all(
        any(f.name == name and f.dtype == pl.String for f in dtype.inner.fields)
        for name in ("role", "content")
    ) and all(f.dtype.is_integer() for f in dtype.inner.fields if f.name == "weight")
    return None if ok else (f"messages has type {dtype}; expected list[struct[role: str, content: str]] "
                            "(plus weight: int)")


def _check_rows_schema(alive: pl.DataFrame) -> pl.DataFrame:
    turn = pl.element()
    roleless = pl.col("messages").list.eval(turn.is_null() | turn.struct.field("role").is_null())
    return alive.with_columns(
        **_verdict(pl.col("messages").is_null(), "bad_schema", pl.lit("messages"),
                   pl.lit("messages is null"))
    ).with_columns(
        **{k: pl.coalesce(pl.col(k), v) for k, v in _verdict(
            roleless.list.any(), "bad_schema", pl.lit("messages"),
            pl.format("turn {} has no role", roleless.list.arg_max())).items()}
    )


def _check_role_order(alive: pl.DataFrame) -> pl.DataFrame:
    roles = pl.col("messages").list.eval(pl.element().struct.field("role"))
    codes = roles.list.eval(pl.element().replace_strict(_ROLE_CODES, default="x")).list.join("")
    detail = pl.format(
        "roles are [{}]; expected an optional system turn, then user and assistant "
        "alternating from user, ending with assistant", roles.list.join(", "))
    return alive.with_columns(
        **_verdict(~codes.str.contains(_ROLE_ORDER), "bad_role_order", pl.lit("messages"), detail))


def _check_weights(alive: pl.DataFrame) -> pl.DataFrame:
    """invalid_weight, then no_supervised_tokens; rows without weights pass."""
    if not any(f.name == "weight" for f in alive.schema["messages"].inner.fields):
        return alive.with_columns(**_verdict(pl.lit(False), "invalid_weight", pl.lit(None), pl.lit(None)))
    turn = pl.element().struct
    role, weight = turn.field("role"), turn.field("weight")
    invalid = pl.col("messages").list.eval(
        (weight.is_not_null() & ((weight != 0) & (weight != 1) | (role != "assistant"))).fill_null(False))
    first = invalid.list.arg_max()
    at = pl.col("messages").list.get(first, null_on_oob=True).struct
    trained = pl.col("messages").list.eval((role == "assistant") & (weight.is_null() | (weight != 0)))
    return alive.with_columns(**_verdict(
        invalid.list.any(), "invalid_weight", pl.format("messages[{}].weight", first),
        pl.format("turn {} ({}) has weight {}; a weight must be 0 (context, not trained) or 1 "
                  "(trained), on an assistant turn", first, at.field("role"), at.field("weight")),
    )).with_columns(**{k: pl.coalesce(pl.col(k), v) for k, v in _verdict(
        ~trained.list.any(), "no_supervised_tokens", pl.lit("messages"),
        pl.lit("every assistant turn has weight 0, so no token of this row is trained on; "
               "give the answers to learn weight 1 (or no weight)")).items()})


def _check_empty_content(alive: pl.DataFrame) -> pl.DataFrame:
    content = pl.element().struct.field("content")
    blank = pl.col("messages").list.eval(content.is_null() | (content.str.strip_chars() == ""))
    first = blank.list.arg_max()
    return alive.with_columns(**_verdict(
        blank.list.any(), "empty_content", pl.format("messages[{}].content", first),
        pl.format("turn {} ({}) has empty content", first,
                  pl.col("messages").list.get(first).struct.field("role"))))


def _check_reserved(alive: pl.DataFrame, reserved: list[str], role_prefixes: list[str]) -> pl.DataFrame:
    # One string per turn so the sanitize prefilter scans all text in one pass.
    turns = (
        alive.select(_POS, pl.col("messages").list.eval(pl.element().struct.field("content")).alias(_FOUND))
        .with_columns(pl.int_ranges(pl.col(_FOUND).list.len()).alias(_TURN))
        .explode(_FOUND, _TURN)
    )
    # find_reserved keeps the series name, so the found string replaces the content
    turns = turns.with_columns(find_reserved(turns.get_column(_FOUND), reserved, role_prefixes))
    first_hit = (
        turns.filter(pl.col(_FOUND).is_not_null())
        .group_by(_POS, maintain_order=True)
        .agg(pl.col(_TURN).first(), pl.col(_FOUND).first())
    )
    checked = alive.join(first_hit, on=_POS, how="left", maintain_order="left")
    failing = pl.col(_FOUND).is_not_null()
    return checked.with_columns(**_verdict(
        failing, "reserved_string", pl.format("messages[{}].content", pl.col(_TURN)),
        pl.format("turn {} contains the reserved string '{}'", pl.col(_TURN), pl.col(_FOUND)),
    )).drop(_TURN, _FOUND)


def _render(tokenizer, conversations: list[list[dict]]) -> list[str]:
    # Templates see role and content only, as in training (chat_tokens): a weight is not text.
    plain = [[{"role": m["role"], "content": m["content"]} for m in turns] for turns in conversations]
    return tokenizer.apply_chat_template(plain, tokenize=False)


def _slow_token_counts(tokenizer, texts: list[str]) -> list[int]:
    """Tokens per text through the tokenizer's own call, for a tokenizer with no Rust backend."""
    # verbose=False: counting a too-long row is the point here, not an "indexing error" to warn of.
    encoded = tokenizer(texts, add_special_tokens=False, return_attention_mask=False,
                        return_token_type_ids=False, verbose=False)
    return [len(ids) for ids in encoded["input_ids"]]


def _counting_backend(tokenizer):
    """The Rust ``tokenizers.Tokenizer`` to count with, or None for a slow (Python) tokenizer.

    A private copy when the shared one carries truncation or padding state: both would change
    the count, and the transformers wrapper only clears them inside its own calls."""
    backend = getattr(tokenizer, "backend_tokenizer", None) if getattr(tokenizer, "is_fast", False) else None
    if backend is not None and (backend.truncation is not None or backend.padding is not None):
        from tokenizers import Tokenizer

        backend = Tokenizer.from_str(backend.to_str())
        backend.no_truncation()
        backend.no_padding()
    return backend


def _counting_threads() -> int:
    """CPU cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _conversation_tokens(tokenizer, conversations: list[list[dict]]) -> list[int]:
    """Chat-template tokens per conversation, in input order, on every core.

    Chunks are rendered with the tokenizer's own chat template (Python, under the GIL) and
    counted by the Rust tokenizer in a thread pool: ``encode_batch_fast`` (ids without
    offsets; the same ids as the transformers call) releases the GIL, so counting runs on all
    cores while the next chunk renders. Threads rather than ``TOKENIZERS_PARALLELISM``: that
    switch is process-wide and the Rust thread pool it starts makes a later fork (Prefect,
    datasets) turn parallelism off with a warning; these threads end before this returns.
    The template already holds any BOS, so no special tokens are added."""
    threads = _counting_threads()
    # A few thousand rows still spread over every core.
    chunk_rows = max(1, min(_TOKENIZE_BATCH_ROWS, -(-len(conversations) // threads)))
    chunks = [conversations[start:start + chunk_rows] for start in range(0, len(conversations), chunk_rows)]
    backend = _counting_backend(tokenizer)
    if backend is None:
        return [n for chunk in chunks for n in _slow_token_counts(tokenizer, _render(tokenizer, chunk))]
    encode = getattr(backend, "encode_batch_fast", backend.encode_batch)

    def count(texts: list[str]) -> list[int]:
        return [len(encoding) for encoding in encode(texts, add_special_tokens=False)]

    threads = min(threads, len(chunks))
    if threads <= 1:
        return [n for chunk in chunks for n in count(_render(tokenizer, chunk))]
    counts: list[int] = []
    with ThreadPoolExecutor(threads, thread_name_prefix="validate-count") as pool:
        pending: deque = deque()
        for chunk in chunks:
            if len(pending) >= threads * _CHUNKS_IN_FLIGHT_PER_THREAD:
                counts += pending.popleft().result()
            pending.append(pool.submit(count, _render(tokenizer, chunk)))
        while pending:
            counts += pending.popleft().result()
    return counts


def _count_tokens(alive: pl.DataFrame, cfg: ValidateConfig, tokenizer) -> tuple[pl.DataFrame, int]:
    """Add num_tokens; reject (or truncate) rows over max_length. Returns rows with verdicts."""
    conversations = alive.get_column("messages").to_list()
    counts = _conversation_tokens(tokenizer, conversations)
    fields: list[str | None] = [None] * len(counts)
    reasons: list[str | None] = [None] * len(counts)
    details: list[str | None] = [None] * len(counts)
    truncated = 0
    changed: dict[int, list[dict]] = {}
    for i, n_tokens in enumerate(counts):
        if n_tokens <= cfg.max_length:
            continue
        if cfg.on_too_long == "reject":
            fields[i], reasons[i] = "messages", "too_long"
            details[i] = f"{n_tokens} tokens with the chat template; max_length is {cfg.max_length}"
            continue
        cut = _truncate_answer(tokenizer, conversations[i], cfg.max_length)
        if cut is None:
            fields[i], reasons[i] = "messages", "prompt_too_long"
            details[i] = (f"{n_tokens} tokens; the turns before the final answer leave no room "
                          f"for it within max_length {cfg.max_length}")
            continue
        changed[i], counts[i] = cut
        truncated += 1
    out = alive.with_columns(
        num_tokens=pl.Series(counts, dtype=pl.Int64),
        _field=pl.Series(fields, dtype=pl.String),
        _reason=pl.Series(reasons, dtype=pl.String),
        _detail=pl.Series(details, dtype=pl.String),
    )
    if changed:  # polars cannot scatter into nested columns, so the cut rows are joined in
        patch = pl.DataFrame({
            _ROW: pl.Series(list(changed), dtype=pl.UInt32),
            _CUT: pl.Series(list(changed.values()), dtype=alive.schema["messages"]),
        })
        out = (
            out.with_row_index(_ROW).join(patch, on=_ROW, how="left", maintain_order="left")
            .with_columns(messages=pl.when(pl.col(_CUT).is_not_null()).then(_CUT).otherwise("messages"))
            .drop(_ROW, _CUT)
        )
    return out, truncated


def _truncate_answer(tokenizer, conversation: list[dict], max_length: int) -> tuple[list[dict], int] | None:
    """The conversation with its final answer cut to fit, and its token count; None if it cannot."""
    *before, last = conversation
    answer = last["content"]
    room = max_length - _conversation_tokens(tokenizer, [[*before, {**last, "content": ""}]])[0]
    offsets = tokenizer(answer, add_special_tokens=False, return_offsets_mapping=True, verbose=False)["offset_mapping"]
    for _ in range(_MAX_TRUNCATE_TRIES):
        if room < 1:
            return None
        cut_text = answer[: offsets[min(room, len(offsets)) - 1][1]]
        if not cut_text.strip():
            return None
        candidate = [*before, {**last, "content": cut_text}]
        n_tokens = _conversation_tokens(tokenizer, [candidate])[0]
        if n_tokens <= max_length:
            return candidate, n_tokens
        room -= n_tokens - max_length  # tokens merged differently at the cut; try shorter
    return None


def _check_duplicates(alive: pl.DataFrame) -> pl.DataFrame:
    first_row_id = (pl.col("_row_id") if "_row_id" in alive.columns else pl.col(_POS)).first().over("messages")
    return alive.with_columns(**_verdict(
        ~pl.col("messages").is_first_distinct(), "duplicate", pl.lit("messages"),
        pl.format("same conversation as _row_id {}, which is kept", first_row_id)))
