"""check-data: is a data file clean? Every problem the prepare flow would meet, row by row.

Runs the prepare stages' own functions on one file (or folder, or glob), in
memory, writing nothing: download -> scan the raw text for reserved strings
-> sanitize -> transform -> validate. It reports

- ``reserved_string`` found in the file's text *before* sanitize: a reserved
  literal (``[EOS]`` ...), a special token of the model (``<|im_end|>``) or a
  role prefix (``User:``). The pipeline would rewrite or remove it, but the
  user should know it is in their data; the detail says what happens to it.
- transform's rejects: ``missing_value``, ``bad_messages``, and for a
  messages column ``not_a_string`` (a turn's content is not text),
  ``invalid_weight`` (a per-turn weight other than 0 or 1, or off an
  assistant turn) and ``unknown_message_key`` (a turn key beyond role,
  content and weight, e.g. ``name``);
- validate's rejects on the sanitized rows: ``bad_schema``, ``bad_role_order``,
  ``no_supervised_tokens`` (every answer has weight 0), ``empty_content``,
  ``reserved_string`` (one sanitize leaves, e.g. a special token with
  ``strip_model_special_tokens: false``; not repeated for a row the raw scan
  already reported), ``too_long``, ``duplicate``.

The file is read by the pipeline's own readers, so what is checked is what
would train: numbers in a JSON text field as written, ``"`` in TSV as data.

Length is always judged as ``reject``: a row over ``max_length`` is reported
as ``too_long`` even when the config truncates (the detail then says the
answer would be cut), because a cut answer is content lost.

A problem reads like ``DataError``: ``FILE row N, field F: reason: detail``.
N is the 0-based record index within FILE (``_source_row``, as in every
rejects table; in a JSONL file without blank lines that is line N+1). F is
the file's column where the problem sits in one column (``answer``,
``messages[2].content`` for a messages column), and ``messages`` where it is
about the whole conversation (role order, length, duplicates).

Whole-file faults (an unreadable line in any format, named by its line
number; not UTF-8; empty; a missing column or one of floats mapped as text)
raise ``DataError``. The CLI's exit codes: 0 clean, 1 problems found,
2 unreadable file or bad arguments.
"""

from __future__ import annotations

import argparse
import json
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import polars as pl
from pydantic import ValidationError

from mixtune.prepare.download import download
from mixtune.errors import DataError, MixtuneError
from mixtune.prepare.sanitize import find_reserved, reserved_strings, sanitize, special_tokens_of, text_columns_of
from mixtune.sections import (
    DEFAULT_MODEL,
    TINY_MODEL,
    InstructionColumns,
    LabelColumns,
    MessagesColumns,
    ModelConfig,
    PromptResponseColumns,
    SanitizeConfig,
    SourceConfig,
    StorageConfig,
    TinyModelConfig,
    ValidateConfig,
    redact_uri,
    uri_credentials_problem,
    where_credentials_go,
)
from mixtune.prepare.transform import LINEAGE_COLUMNS, REJECTS_SCHEMA, empty_rejects, transform
from mixtune.prepare.validate import validate

SOURCE_NAME = "check-data"
_MAPPINGS = {
    "prompt_response": PromptResponseColumns,
    "instruction": InstructionColumns,
    "messages": MessagesColumns,
    "label": LabelColumns,
}
_FOUND, _TURN, _STAGE, _ROLES = "__check_found", "__check_turn", "__check_stage", "__check_roles"
_KEPT_ID, _KEPT_FILE, _KEPT_ROW = "__check_kept_id", "__check_kept_file", "__check_kept_row"


@dataclass
class CheckReport:
    """Every problem found (rejects schema, in file order) and how many rows were read."""

    problems: pl.DataFrame
    rows_checked: int

    @property
    def reasons(self) -> dict[str, int]:
        return dict(sorted(Counter(self.problems.get_column("reason").to_list()).items()))

    @property
    def rows_with_problems(self) -> int:
        return self.problems.get_column("_row_id").n_unique()


# --- which columns mean what ---


def source_for(file: str, columns: str | None = None, kind: str | None = None) -> SourceConfig:
    """A source for one file from the CLI's ``--columns a,b`` and ``--kind``.

    Without ``--kind`` the count of names picks it: 1 messages, 2 prompt_response,
    3 instruction (text,label needs ``--kind label``). An instruction mapping
    with two names has no input column.
    """
    names = [n.strip() for n in columns.split(",")] if columns is not None else []
    if any(not n for n in names):
        raise MixtuneError(f"--columns {columns!r}: a column name is empty")
    if kind is None:
        kind = {0: "prompt_response", 1: "messages", 2: "prompt_response", 3: "instruction"}.get(len(names))
        if kind is None:
            raise MixtuneError(f"--columns {columns!r}: give 1 (messages), 2 (prompt,response, or "
                               "text,label with --kind label) or 3 (instruction,input,output) names")
    keys = {
        "prompt_response": [("prompt", "response")],
        "instruction": [("instruction", "input", "output"), ("instruction", "output")],
        "messages": [("messages",)],
        "label": [("text", "label")],
    }[kind]
    if not names:
        mapping = _MAPPINGS[kind]()
    else:
        fitting = [k for k in keys if len(k) == len(names)]
        if not fitting:
            wanted = " or ".join(",".join(k) for k in keys)
            raise MixtuneError(f"--columns {columns!r} does not fit --kind {kind}: expected {wanted}")
        values = dict(zip(fitting[0], names))
        if kind == "instruction" and "input" not in values:
            values["input"] = None
        mapping = _MAPPINGS[kind](**values)
    # Absolute, as download names the rows' files, so every message names the file one way.
    uri = file if "://" in file or file.startswith("hf:") else os.path.abspath(os.path.expanduser(file))
    if (why := uri_credentials_problem(uri)) is not None:  # refused before anything reads or prints it
        raise MixtuneError(f"{redact_uri(uri)}: {why}; credentials go in {where_credentials_go(uri)}, "
                           "never in the URI")
    return SourceConfig(name=SOURCE_NAME, uri=uri, columns=mapping)


# --- the check ---


def read_source(source: SourceConfig) -> pl.DataFrame:
    """Download the source; raise ``DataError`` for whole-file faults, a missing column included."""
    raw = download(source).frame
    # Transform's column check on zero rows: a missing column fails here, before any model loads.
    transform(raw.clear(), source)
    return raw


def check_frame(raw: pl.DataFrame, source: SourceConfig, sanitize_cfg: SanitizeConfig,
                validate_cfg: ValidateConfig, tokenizer) -> CheckReport:
    """Every problem in the downloaded rows (see the module docstring), in file order."""
    special = special_tokens_of(tokenizer)
    reserved = reserved_strings(sanitize_cfg, special)
    raw_hits = _raw_reserved(raw, source, sanitize_cfg, reserved, special)

    stripped = special if sanitize_cfg.strip_model_special_tokens else []
    clean = sanitize(raw, sanitize_cfg, text_columns_of(source), stripped).frame
    transformed = transform(clean, source)
    judged = validate(transformed.frame, validate_cfg.model_copy(update={"on_too_long": "reject"}),
                      tokenizer, reserved, role_prefixes=sanitize_cfg.role_prefixes)
    validate_rejects = judged.rejects.filter(
        ~((pl.col("reason") == "reserved_string") & pl.col("_row_id").is_in(raw_hits["_row_id"].implode()))
    )
    validate_rejects = _with_source_fields(validate_rejects, transformed.frame, source)
    if validate_cfg.on_too_long == "truncate":
        validate_rejects = validate_rejects.with_columns(
            detail=pl.when(pl.col("reason") == "too_long")
            .then(pl.col("detail") + "; with on_too_long: truncate the final answer would be cut to fit")
            .otherwise(pl.col("detail"))
        )
    validate_rejects = _duplicate_rows_named(validate_rejects, raw)
    stages = [raw_hits, transformed.rejects, validate_rejects]
    problems = (
        pl.concat([t.with_columns(pl.lit(i).alias(_STAGE)) for i, t in enumerate(stages)])
        .sort("_row_id", _STAGE, maintain_order=True)
        .drop(_STAGE)
    )
    return CheckReport(problems, raw.height)


def check_data(source: SourceConfig, sanitize_cfg: SanitizeConfig, validate_cfg: ValidateConfig,
               tokenizer) -> CheckReport:
    """Read one source and check it; writes nothing."""
    return check_frame(read_source(source), source, sanitize_cfg, validate_cfg, tokenizer)


def _raw_reserved(raw: pl.DataFrame, source: SourceConfig, cfg: SanitizeConfig,
                  reserved: list[str], special: list[str]) -> pl.DataFrame:
    """One ``reserved_string`` problem per row and text field holding one, before sanitize."""
    lineage = pl.col(*LINEAGE_COLUMNS)
    found: list[pl.DataFrame] = []
    if isinstance(source.columns, MessagesColumns):
        column = source.columns.messages
        turns = (
            transform(raw, source).frame
            .select(lineage, pl.col("messages").list.eval(pl.element().struct.field("content")).alias(_FOUND))
            .with_columns(pl.int_ranges(pl.col(_FOUND).list.len()).alias(_TURN))
            .explode(_FOUND, _TURN)
        )
        # find_reserved keeps the series name, so the found string replaces the content.
        found.append(turns.with_columns(find_reserved(turns.get_column(_FOUND), reserved, cfg.role_prefixes))
                     .select(lineage, pl.concat_str(pl.lit(f"{column}["), pl.col(_TURN).cast(pl.String),
                                                    pl.lit("].content")).alias("field"), _FOUND))
    scanned = {source.columns.messages} if isinstance(source.columns, MessagesColumns) else set()
    for column in text_columns_of(source):
        if column not in scanned and column in raw.columns and raw.schema[column] == pl.String:
            hits = find_reserved(raw.get_column(column), reserved, cfg.role_prefixes).alias(_FOUND)
            found.append(raw.select(lineage, pl.lit(column).alias("field")).with_columns(hits))
    if not found:
        return empty_rejects()
    hits = pl.concat(found).filter(pl.col(_FOUND).is_not_null())
    return hits.select(
        *LINEAGE_COLUMNS, "field", pl.lit("reserved_string").alias("reason"),
        _reserved_detail(pl.col(_FOUND), cfg, special).alias("detail"),
    ).cast(REJECTS_SCHEMA)


def _reserved_detail(found: pl.Expr, cfg: SanitizeConfig, special: list[str]) -> pl.Expr:
    """What the string is and what the pipeline does with it (sanitize's rule order)."""
    quoted = pl.lit("'") + found + pl.lit("'")
    literal = pl.lit("contains the reserved literal ") + quoted + pl.lit("; sanitize removes it")
    token = pl.lit("contains the model special token ") + quoted
    return (
        pl.when(found.is_in(pl.lit(cfg.reserved_literals, dtype=pl.List(pl.String))))
        .then(literal)
        .when(found.is_in(pl.lit(special, dtype=pl.List(pl.String))))
        .then(token + pl.lit("; sanitize removes it" if cfg.strip_model_special_tokens else
                             "; validate rejects the row (sanitize.strip_model_special_tokens is off)"))
        .otherwise(pl.lit("contains the role prefix ") + quoted + pl.lit("; sanitize writes it as '")
                   + found.str.strip_suffix(":") + pl.lit(" :'"))
    )


def _duplicate_rows_named(rejects: pl.DataFrame, raw: pl.DataFrame) -> pl.DataFrame:
    """"same conversation as _row_id 7" -> "... as row 7" (with its file when it is another file)."""
    kept = raw.select(pl.col("_row_id").alias(_KEPT_ID), pl.col("_source_file").alias(_KEPT_FILE),
                      pl.col("_source_row").alias(_KEPT_ROW))
    named = (
        rejects.with_columns(pl.col("detail").str.extract(r"as _row_id (\d+),", 1).cast(pl.Int64).alias(_KEPT_ID))
        .join(kept, on=_KEPT_ID, how="left", maintain_order="left")
    )
    where = (pl.when(pl.col(_KEPT_FILE) == pl.col("_source_file")).then(pl.lit("row "))
             .otherwise(pl.col(_KEPT_FILE) + pl.lit(" row ")) + pl.col(_KEPT_ROW).cast(pl.String))
    return named.with_columns(
        detail=pl.when((pl.col("reason") == "duplicate") & pl.col(_KEPT_ROW).is_not_null())
        .then(pl.lit("same conversation as ") + where + pl.lit(", which is kept"))
        .otherwise(pl.col("detail"))
    ).select(list(REJECTS_SCHEMA))


def _with_source_fields(rejects: pl.DataFrame, conversations: pl.DataFrame, source: SourceConfig) -> pl.DataFrame:
    """``messages[i].content`` -> the file's column that turn came from (``answer``)."""
    turn_of_field = r"^messages\[(\d+)\]\.content$"
    mapping = source.columns
    if isinstance(mapping, MessagesColumns):
        return rejects.with_columns(pl.col("field").str.replace("messages[", f"{mapping.messages}[", literal=True))
    user, assistant = {
        PromptResponseColumns: lambda m: (m.prompt, m.response),
        InstructionColumns: lambda m: (m.instruction, m.output),
        LabelColumns: lambda m: (m.text, m.label),
    }[type(mapping)](mapping)
    columns_by_role = {"user": user, "assistant": assistant,
                       "system": source.system_column or "system_prompt"}
    roles = conversations.select(
        "_row_id", pl.col("messages").list.eval(pl.element().struct.field("role")).alias(_ROLES))
    turn = pl.col("field").str.extract(turn_of_field, 1).cast(pl.Int64)
    role = pl.col(_ROLES).list.get(pl.col(_TURN), null_on_oob=True)
    column = role.replace_strict(columns_by_role, default=None, return_dtype=pl.String)
    return (
        rejects.with_columns(turn.alias(_TURN))
        .join(roles, on="_row_id", how="left", maintain_order="left")
        .with_columns(field=pl.when(pl.col(_TURN).is_not_null()).then(pl.coalesce(column, pl.col("field")))
                      .otherwise(pl.col("field")))
        .select(list(REJECTS_SCHEMA))
    )


# --- the command ---


def check_data_cli(args: argparse.Namespace) -> int:
    """``mixtune check-data``: print problems (or JSON lines) and a summary; 0 clean, 1 problems, 2 errors."""
    try:
        source = source_for(args.file, args.columns, args.kind)
        sanitize_cfg, validate_cfg, model, storage = _settings(args)
        raw = read_source(source)
        tokenizer = _load_tokenizer(model, storage)
        report = check_frame(raw, source, sanitize_cfg, validate_cfg, tokenizer)
    except MixtuneError as exc:
        if not args.json:
            raise  # the CLI prints "error: ..." and exits 2
        print(json.dumps(_error_record(exc), ensure_ascii=False))
        return 2
    for row in report.problems.iter_rows(named=True):
        if args.json:
            print(json.dumps({"type": "problem", "file": row["_source_file"], "row": row["_source_row"],
                              "field": row["field"], "reason": row["reason"], "detail": row["detail"]},
                             ensure_ascii=False))
        else:
            print(DataError(row["_source_file"], f"{row['reason']}: {row['detail']}",
                            row=row["_source_row"], field=row["field"]))
    print(_summary(report, source.uri, args.json))
    return 1 if report.problems.height else 0


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _summary(report: CheckReport, file: str, as_json: bool) -> str:
    if as_json:
        return json.dumps({"type": "summary", "file": file, "rows_checked": report.rows_checked,
                           "rows_with_problems": report.rows_with_problems,
                           "problems": report.problems.height, "reasons": report.reasons},
                          ensure_ascii=False)
    line = f"{file}: {_count(report.rows_checked, 'row')} checked, {_count(report.problems.height, 'problem')}"
    if report.problems.height:
        per_reason = ", ".join(f"{reason} {n}" for reason, n in report.reasons.items())
        line += f" in {_count(report.rows_with_problems, 'row')} ({per_reason})"
    return line


def _error_record(exc: MixtuneError) -> dict:
    record = {"type": "error", "error": str(exc)}
    if isinstance(exc, DataError):
        record.update(file=exc.file, line=exc.line, row=exc.row, field=exc.field, byte_offset=exc.byte_offset)
    return record


def _settings(args: argparse.Namespace) -> tuple[SanitizeConfig, ValidateConfig, ModelConfig, StorageConfig]:
    """Sections from --config (defaults without one); --model and --max-length override."""
    from mixtune.config import load_config

    cfg = load_config(args.config) if args.config else None
    sanitize_cfg = cfg.sanitize if cfg else SanitizeConfig()
    validate_cfg = cfg.validate_ if cfg else ValidateConfig()
    if args.max_length is not None:
        try:
            validate_cfg = ValidateConfig.model_validate({**validate_cfg.model_dump(),
                                                          "max_length": args.max_length})
        except ValidationError:
            raise MixtuneError(f"--max-length {args.max_length}: must be a positive number of tokens") from None
    if args.model is not None and args.model != TINY_MODEL:
        model = (cfg.model if cfg else ModelConfig()).model_copy(update={"name_or_path": _local_or_id(args.model)})
        return sanitize_cfg, validate_cfg, model, cfg.storage if cfg else StorageConfig()
    if cfg is None:
        # The default model, converted once into ./.mixtune/store (never into the installed package);
        # --model mixtune:tiny builds the test model with a tokenizer trained on the shipped demo data.
        from mixtune.resources import data_dir

        tiny = TinyModelConfig(corpus_files=[str(data_dir() / "medquad" / "medquad.jsonl")])
        model = ModelConfig(name_or_path=args.model or DEFAULT_MODEL, tiny=tiny)
        return sanitize_cfg, validate_cfg, model, StorageConfig()
    model = cfg.model if args.model is None else cfg.model.model_copy(update={"name_or_path": TINY_MODEL})
    return sanitize_cfg, validate_cfg, model, cfg.storage


def _local_or_id(name: str) -> str:
    path = Path(name).expanduser()
    return str(path.resolve()) if path.exists() else name


def _load_tokenizer(model: ModelConfig, storage: StorageConfig):
    """The model's tokenizer; a GGUF model (the default) or the tiny test model is converted or built
    once into the storage root's model cache, then reused."""
    from mixtune.models import load_tokenizer

    try:
        return load_tokenizer(model, storage)
    except (OSError, ValueError) as exc:
        first_line = str(exc).strip().split("\n", 1)[0]
        raise MixtuneError(f"cannot load the tokenizer of model {model.name_or_path!r}: {first_line}") from None
