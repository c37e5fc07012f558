"""Transform: map a source's columns to Hugging Face chat ``messages``.

Input: the sanitized frame of one source. Output: the same rows (minus
rejects) with a ``messages`` column, List(Struct{role: Utf8, content: Utf8})
plus ``weight: Int8`` when the source's turns carry weights, and every other
column kept (stratify and group columns are needed by split;
the lineage columns by everything after). The only column dropped is a
mapped messages column not named ``messages``, which ``messages`` replaces.

Mapping kinds (``SourceConfig.columns``):

- ``prompt_response``: user = prompt, assistant = response;
- ``instruction``: user = instruction, plus ``"\\n\\n" + input`` when input is
  non-blank; assistant = output;
- ``label``: user = optional constant instruction + ``"\\n\\n"`` + text,
  assistant = the label as text;
- ``messages``: an OpenAI-style column, a list of {role, content} structs or a
  JSON string of one; turns kept in order (system turns stay where they are).
  A turn holds ``role``, ``content`` and optionally ``weight`` (OpenAI chat
  fine-tuning format: 0 shows an assistant turn as context without training
  on it, 1 or no weight trains on it). Other keys (``name``, ``tool_calls``
  ...) change what a model would see and mixtune does not render them, so a
  turn carrying one with a non-null value rejects its row
  (``unknown_message_key``) rather than being dropped silently.

Text is what the file says. A mapped text column may hold text, or values
with one exact written form (integers, decimals, booleans: ``2``, ``19.90``,
``true``); a column of binary floats (``Float64``) or of any other type fails
the file, since ``19.90`` stored as a float reads back as ``19.9``. (JSON,
CSV and TSV files already arrive as text, numbers as written; see
``mixtune.prepare.formats``.) A turn's content must be text.

A system turn from ``system_prompt`` (constant) or ``system_column`` (per
row; null or blank gives none) goes first. A messages row that already opens
with its own system turn keeps it and gets no second one.

Faults: a mapped column missing from the frame, or of a type without exact
text, fails the whole file (``DataError`` naming the file, the column and the
columns present). These reject just their row: a null in a mapped column
(``missing_value``); a messages value that is not a list of turns with a text
role (``bad_messages``); a turn whose content is not text (``not_a_string``,
field ``<column>[i].content``); a weight other than 0 or 1 on an assistant
turn, or any weight on another turn (``invalid_weight``, field
``<column>[i].weight``); a turn key other than role, content and weight
(``unknown_message_key``, field ``<column>[i].<key>``). Empty text is not
judged here: validate rejects it as ``empty_content``.
Invariant: rows in = rows kept + rows rejected.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import polars as pl

from mixtune.errors import DataError
from mixtune.sections import (
    InstructionColumns,
    LabelColumns,
    MessagesColumns,
    PromptResponseColumns,
    SourceConfig,
)

LINEAGE_COLUMNS = ["_row_id", "_source_file", "_source_row"]
MESSAGES_DTYPE = pl.List(pl.Struct({"role": pl.String, "content": pl.String}))
WEIGHTED_MESSAGES_DTYPE = pl.List(pl.Struct({"role": pl.String, "content": pl.String, "weight": pl.Int8}))
MESSAGE_KEYS = ("role", "content", "weight")  # what a turn may hold; see the module docstring
# Row faults of a messages column, in the order a row's first fault is chosen.
MESSAGES_REASONS = ("missing_value", "bad_messages", "not_a_string", "invalid_weight",
                    "unknown_message_key")
REJECTS_SCHEMA = {
    "_row_id": pl.Int64,
    "_source_file": pl.String,
    "_source_row": pl.Int64,
    "field": pl.String,
    "reason": pl.String,
    "detail": pl.String,
}
# Internal per-row verdict columns; a row is rejected when _reason is not null.
_VERDICT = ["_field", "_reason", "_detail"]


@dataclass
class TransformResult:
    frame: pl.DataFrame
    rejects: pl.DataFrame


def empty_rejects() -> pl.DataFrame:
    return pl.DataFrame(schema=REJECTS_SCHEMA)


def rejects_table(frame: pl.DataFrame) -> pl.DataFrame:
    """The rejects schema from rows carrying verdict columns; lineage is null where absent."""
    lineage = [
        (pl.col(c) if c in frame.columns else pl.lit(None)).cast(REJECTS_SCHEMA[c]).alias(c)
        for c in LINEAGE_COLUMNS
    ]
    return frame.select(
        *lineage, pl.col("_field").alias("field"), pl.col("_reason").alias("reason"),
        pl.col("_detail").alias("detail"),
    ).cast(REJECTS_SCHEMA)


def split_verdict(frame: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Kept rows (verdict columns dropped) and the rejected rows with their verdict, in input order."""
    rejected = pl.col("_reason").is_not_null()
    return frame.filter(~rejected).drop(_VERDICT), frame.filter(rejected)


def transform(frame: pl.DataFrame, source: SourceConfig) -> TransformResult:
    """Build ``messages`` for every row of one source; reject rows that cannot be mapped."""
    mapping = source.columns
    required = _required_columns(source)
    _check_columns_present(frame, source, required)
    if isinstance(mapping, MessagesColumns):
        framed = _from_messages_column(frame, mapping.messages, _files_of(frame, source))
    else:
        framed = _from_text_columns(frame, source, required)
    framed = _add_system_turn(framed, source)
    if isinstance(mapping, MessagesColumns) and mapping.messages != "messages":
        framed = framed.drop(mapping.messages)
    kept, rejected = split_verdict(framed)
    return TransformResult(kept, rejects_table(rejected))


def _required_columns(source: SourceConfig) -> dict[str, str]:
    """Config key path -> column name, for every column the mapping reads."""
    m = source.columns
    if isinstance(m, PromptResponseColumns):
        keys = {"prompt": m.prompt, "response": m.response}
    elif isinstance(m, InstructionColumns):
        keys = {"instruction": m.instruction, "input": m.input, "output": m.output}
    elif isinstance(m, MessagesColumns):
        keys = {"messages": m.messages}
    elif isinstance(m, LabelColumns):
        keys = {"text": m.text, "label": m.label}
    else:  # pragma: no cover - the mapping union is closed
        raise TypeError(f"unknown column mapping {type(m).__name__}")
    paths = {f"columns.{k}": v for k, v in keys.items() if v is not None}
    if source.system_column:
        paths["system_column"] = source.system_column
    return paths


def _files_of(frame: pl.DataFrame, source: SourceConfig) -> str:
    if "_source_file" not in frame.columns or frame.height == 0:
        return source.uri
    files = frame.get_column("_source_file").drop_nulls().unique(maintain_order=True).to_list()
    if not files:
        return source.uri
    return ", ".join(files[:3]) + (f" (+{len(files) - 3} more)" if len(files) > 3 else "")


def _check_columns_present(frame: pl.DataFrame, source: SourceConfig, required: dict[str, str]) -> None:
    present = [c for c in frame.columns if c not in LINEAGE_COLUMNS]
    for key_path, column in required.items():
        if column in frame.columns:
            dtype = frame.schema[column]
            if key_path != "columns.messages" and dtype.is_nested():
                raise DataError(_files_of(frame, source),
                                f"column {column!r} ({key_path}) holds {dtype}, expected text",
                                field=column)
            if key_path != "columns.messages" and not _has_exact_text(dtype):
                raise DataError(
                    _files_of(frame, source),
                    f"column {column!r} ({key_path}) holds {dtype} values, which have no exact "
                    "text to train on (a float stores 19.90 as 19.9); store the column as text "
                    "(string) in the file", field=column)
            continue
        hint = " (set columns.input: null if the data has no input column)" if key_path == "columns.input" else ""
        if "messages" in present and key_path != "columns.messages":
            hint += "; the file holds chat messages: map them with columns: {kind: messages} (check-data: --columns messages)"
        raise DataError(
            _files_of(frame, source),
            f"missing column {column!r} ({key_path} of source {source.name!r}); "
            f"columns present: {', '.join(present) or '(none)'}{hint}",
            field=column,
        )


def _has_exact_text(dtype: pl.DataType) -> bool:
    """Types whose values cast to text exactly as a file would write them."""
    return (dtype in (pl.String, pl.Null, pl.Boolean) or dtype.is_integer()
            or isinstance(dtype, pl.Decimal))


def _text(column: str) -> pl.Expr:
    return pl.col(column).cast(pl.String)


def _turn(role: str, content: pl.Expr, weighted: bool = False) -> pl.Expr:
    fields = [pl.lit(role, dtype=pl.String).alias("role"), content.alias("content")]
    if weighted:  # a turn added to weighted messages has no weight of its own: the default
        fields.append(pl.lit(None, dtype=pl.Int8).alias("weight"))
    return pl.struct(*fields)


def _non_blank(expr: pl.Expr) -> pl.Expr:
    return expr.is_not_null() & (expr.str.strip_chars() != "")


def _from_text_columns(frame: pl.DataFrame, source: SourceConfig, required: dict[str, str]) -> pl.DataFrame:
    m = source.columns
    if isinstance(m, PromptResponseColumns):
        user, assistant = _text(m.prompt), _text(m.response)
    elif isinstance(m, InstructionColumns):
        user = _text(m.instruction)
        if m.input is not None:
            context = _text(m.input)
            user = pl.when(_non_blank(context)).then(user + "\n\n" + context).otherwise(user)
        assistant = _text(m.output)
    else:
        assert isinstance(m, LabelColumns)
        user = _text(m.text)
        if m.instruction:
            user = pl.lit(m.instruction + "\n\n") + user
        assistant = _text(m.label)
    # input is optional (null means no context); system_column null means no system turn.
    must_have = [c for k, c in required.items() if k not in ("columns.input", "system_column")]
    first_null = pl.coalesce([pl.when(pl.col(c).is_null()).then(pl.lit(c)) for c in must_have])
    return frame.with_columns(
        messages=pl.concat_list([_turn("user", user), _turn("assistant", assistant)]),
        _field=first_null,
        _reason=pl.when(first_null.is_not_null()).then(pl.lit("missing_value")),
        _detail=pl.when(first_null.is_not_null()).then(pl.format("column '{}' is null", first_null)),
    )


def _from_messages_column(frame: pl.DataFrame, column: str, file: str) -> pl.DataFrame:
    dtype = frame.schema[column]
    if dtype == pl.String:
        parsed, problems = _parse_json_messages(frame.get_column(column), column)
        verdict = {name: pl.lit(pl.Series([p[i] if p else None for p in problems], dtype=pl.String))
                   for i, name in enumerate(("reason", "field", "detail"))}
        return frame.with_columns(messages=parsed, **_messages_verdict(column, verdict))
    if not (isinstance(dtype, pl.List) and isinstance(dtype.inner, pl.Struct)):
        raise DataError(file, f"column {column!r} holds {dtype}; expected a list of "
                              "{role, content} turns or a JSON string of one", field=column)
    fields = {f.name: f.dtype for f in dtype.inner.fields}
    missing = [f for f in ("role", "content") if f not in fields]
    nested = [f for f in ("role", "content") if f in fields and fields[f].is_nested()]
    if missing or nested:
        raise DataError(file, f"turns in column {column!r} have fields {sorted(fields)} "
                              f"({dtype}); expected text fields role and content", field=column)
    turn = pl.element().struct
    built = [turn.field("role").cast(pl.String), turn.field("content").cast(pl.String)]
    if "weight" in fields:
        built.append(turn.field("weight").cast(pl.Int8, strict=False))
    return frame.with_columns(
        messages=pl.col(column).list.eval(pl.struct(*built)),
        **_messages_verdict(column, _typed_turn_problems(column, fields)),
    )


def _first_turn(column: str, failing: pl.Expr) -> tuple[pl.Expr, pl.Expr]:
    """Whether some turn fails, and the index of the first that does."""
    per_turn = pl.col(column).list.eval(failing.fill_null(False))
    return per_turn.list.any(), per_turn.list.arg_max()


def _typed_turn_problems(column: str, fields: dict[str, pl.DataType]) -> dict[str, pl.Expr]:
    """Reason, field and detail of each row's first fault, in MESSAGES_REASONS order."""
    turn = pl.element().struct
    role = turn.field("role")
    # (reason, failing per turn, the turn's key at fault, what the detail says about it)
    checks: list[tuple[str, pl.Expr, str, str]] = [("bad_messages", role.is_null(), "role", "")]
    if fields["content"] not in (pl.String, pl.Null):
        checks.append(("not_a_string", turn.field("content").is_not_null(), "content",
                       f"content is {fields['content']} {{value}}, expected text"))
    if "weight" in fields:
        weight = turn.field("weight")
        numeric = fields["weight"].is_numeric() and fields["weight"] != pl.Boolean
        bad_value = ((weight != 0) & (weight != 1)) if numeric else pl.lit(True)
        checks.append(("invalid_weight", weight.is_not_null() & (bad_value | (role != "assistant")),
                       "weight", f"has weight {{value}}; {_WEIGHT_RULE}"))
    for key in fields:
        if key not in MESSAGE_KEYS:
            checks.append(("unknown_message_key", turn.field(key).is_not_null(), key,
                           f"has key '{key}' {{value}}; {_UNKNOWN_KEY_RULE}"))
    verdict = dict.fromkeys(("reason", "field", "detail"), pl.lit(None, dtype=pl.String))
    for reason, failing, key, says in reversed(checks):  # built inside out: the first check wins
        fails, index = _first_turn(column, failing)
        turn_text = index.cast(pl.String)
        if reason == "bad_messages":
            field_name, detail = pl.lit(column), pl.concat_str(pl.lit("turn "), turn_text, pl.lit(" has no role"))
        else:
            at = pl.col(column).list.get(index, null_on_oob=True).struct
            value = pl.lit("(a nested value)")
            if not fields[key].is_nested():
                value = at.field(key).cast(pl.String)
                value = pl.concat_str(pl.lit('"'), value, pl.lit('"')) if fields[key] == pl.String else value
            before, _, after = says.partition("{value}")
            field_name = pl.concat_str(pl.lit(f"{column}["), turn_text, pl.lit(f"].{key}"))
            detail = pl.concat_str(pl.lit("turn "), turn_text, pl.lit(" ("), at.field("role").fill_null("?"),
                                   pl.lit(") " + before), value, pl.lit(after))
        verdict = {
            "reason": pl.when(fails).then(pl.lit(reason)).otherwise(verdict["reason"]),
            "field": pl.when(fails).then(field_name).otherwise(verdict["field"]),
            "detail": pl.when(fails).then(detail).otherwise(verdict["detail"]),
        }
    return verdict


_WEIGHT_RULE = "a weight must be the number 0 (context, not trained) or 1 (trained), on an assistant turn"
_UNKNOWN_KEY_RULE = ("mixtune trains on role, content and weight only; remove the key from the "
                     "file, or move what it says into the content")


def _messages_verdict(column: str, problem: dict[str, pl.Expr]) -> dict[str, pl.Expr]:
    """Verdict columns: a null value is missing_value, else the row's first turn problem."""
    is_null = pl.col(column).is_null()
    return {
        "_field": pl.when(is_null).then(pl.lit(column)).otherwise(problem["field"]),
        "_reason": pl.when(is_null).then(pl.lit("missing_value")).otherwise(problem["reason"]),
        "_detail": pl.when(is_null).then(pl.lit(f"column '{column}' is null")).otherwise(problem["detail"]),
    }


def _parse_json_messages(values: pl.Series, column: str) -> tuple[pl.Series, list[tuple[str, str, str] | None]]:
    """JSON strings -> messages; per row a (reason, field, detail) problem, or None when it parsed.

    Python per row: JSON text needs a real parser to name what is wrong with each row.
    """
    conversations: list[list[dict] | None] = []
    problems: list[tuple[str, str, str] | None] = []
    weighted = False
    for text in values.to_list():
        if text is None:
            conversations.append(None)
            problems.append(None)  # reported as missing_value
            continue
        turns, problem = _parse_turns(text, column)
        conversations.append(turns)
        problems.append(problem)
        weighted = weighted or any(t["weight"] is not None for t in turns or ())
    if not weighted:
        conversations = [c and [{"role": t["role"], "content": t["content"]} for t in c] for c in conversations]
    dtype = WEIGHTED_MESSAGES_DTYPE if weighted else MESSAGES_DTYPE
    return pl.Series("messages", conversations, dtype=dtype, strict=True), problems


def _parse_turns(text: str, column: str) -> tuple[list[dict] | None, tuple[str, str, str] | None]:
    """The turns of one JSON conversation, or None and the first fault (MESSAGES_REASONS order)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        return None, ("bad_messages", column, f"not valid JSON: {exc.msg} at char {exc.pos}")
    if not isinstance(value, list):
        return None, ("bad_messages", column, f"expected a JSON list of turns, got {_json_kind(value)}")
    turns = []
    found: dict[str, tuple[str, str, str]] = {}  # reason -> its first fault
    for i, turn in enumerate(value):
        if not isinstance(turn, dict):
            return None, ("bad_messages", column,
                          f"turn {i} is {_json_kind(turn)}, expected an object with role and content")
        role, content, weight = turn.get("role"), turn.get("content"), turn.get("weight")
        if not isinstance(role, str):
            return None, ("bad_messages", column, f"turn {i} has no text role")
        if content is not None and not isinstance(content, str):
            found.setdefault("not_a_string", (f"{column}[{i}].content",
                                              f"turn {i} ({role}) content is {_json_kind(content)} "
                                              f"{_shown(content)}, expected text"))
        if weight is not None and not (_is_zero_or_one(weight) and role == "assistant"):
            found.setdefault("invalid_weight", (f"{column}[{i}].weight",
                                                f"turn {i} ({role}) has weight {_shown(weight)}; {_WEIGHT_RULE}"))
        for key, key_value in turn.items():
            if key not in MESSAGE_KEYS and key_value is not None:
                found.setdefault("unknown_message_key", (
                    f"{column}[{i}].{key}",
                    f"turn {i} ({role}) has key '{key}' (value {_shown(key_value)}); {_UNKNOWN_KEY_RULE}"))
        turns.append({"role": role, "content": content,
                      "weight": int(weight) if _is_zero_or_one(weight) else None})
    for reason in MESSAGES_REASONS:
        if reason in found:
            return None, (reason, *found[reason])
    return turns, None


def _is_zero_or_one(weight: object) -> bool:
    """0 or 1 as a JSON number (1.0 is the number 1); true, "1" and 0.5 are not."""
    return isinstance(weight, (int, float)) and not isinstance(weight, bool) and weight in (0, 1)


def _json_kind(value: object) -> str:
    if isinstance(value, bool):
        return "a boolean"
    names = {dict: "an object", list: "an array", str: "a string", int: "a number", float: "a number"}
    return next((n for t, n in names.items() if isinstance(value, t)), "null" if value is None else type(value).__name__)


def _shown(value: object, limit: int = 60) -> str:
    """A value as JSON, cut for a one-line message."""
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _add_system_turn(frame: pl.DataFrame, source: SourceConfig) -> pl.DataFrame:
    if source.system_prompt is not None:
        system = pl.lit(source.system_prompt, dtype=pl.String)
    elif source.system_column is not None:
        system = _text(source.system_column)
    else:
        return frame
    dtype = frame.schema["messages"]
    weighted = dtype == WEIGHTED_MESSAGES_DTYPE
    opens_with_system = (
        pl.col("messages").list.first().struct.field("role").fill_null("") == "system"
    )
    add = _non_blank(system) & ~opens_with_system & pl.col("messages").is_not_null()
    with_system = pl.concat_list([pl.concat_list([_turn("system", system, weighted)]), pl.col("messages")])
    return frame.with_columns(
        messages=pl.when(add).then(with_system).otherwise(pl.col("messages")).cast(dtype)
    )
