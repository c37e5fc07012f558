"""Transform: map a source's columns to Hugging Face chat ``messages``.

Input: the sanitized frame of one source. Output: the same rows (minus
rejects) with a ``messages`` column, List(Struct{role: Utf8, content: Utf8}),
and every other column kept (stratify and group columns are needed by split;
the lineage columns by everything after). The only column dropped is a
mapped messages column not named ``messages``, which ``messages`` replaces.

Mapping kinds (``SourceConfig.columns``):

- ``prompt_response``: user = prompt, assistant = response;
- ``instruction``: user = instruction, plus ``"\\n\\n" + input`` when input is
  non-blank; assistant = output;
- ``label``: user = optional constant instruction + ``"\\n\\n"`` + text,
  assistant = the label as text;
- ``messages``: an OpenAI-style column, a list of {role, content} structs or a
  JSON string of one; turns kept in order (system turns stay where they are),
  other keys on a turn dropped.

A system turn from ``system_prompt`` (constant) or ``system_column`` (per
row; null or blank gives none) goes first. A messages row that already opens
with its own system turn keeps it and gets no second one.

Faults: a mapped column missing from the frame fails the whole file
(``DataError`` naming the file, the column and the columns present). A null
in a mapped column (``missing_value``) or a messages value that is not a list
of turns with a text role (``bad_messages``) rejects just that row. Empty
text is not judged here: validate rejects it as ``empty_content``.
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
            continue
        hint = " (set columns.input: null if the data has no input column)" if key_path == "columns.input" else ""
        raise DataError(
            _files_of(frame, source),
            f"missing column {column!r} ({key_path} of source {source.name!r}); "
            f"columns present: {', '.join(present) or '(none)'}{hint}",
            field=column,
        )


def _text(column: str) -> pl.Expr:
    return pl.col(column).cast(pl.String)


def _turn(role: str, content: pl.Expr) -> pl.Expr:
    return pl.struct(pl.lit(role, dtype=pl.String).alias("role"), content.alias("content"))


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
        parsed, problems = _parse_json_messages(frame.get_column(column))
        problem = pl.lit(pl.Series(problems, dtype=pl.String))
        return frame.with_columns(messages=parsed, **_messages_verdict(column, problem))
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
    roleless = pl.col(column).list.eval(turn.field("role").is_null())
    problem = pl.when(roleless.list.any()).then(
        pl.format("turn {} has no role", roleless.list.arg_max())
    )
    return frame.with_columns(
        messages=pl.col(column).list.eval(
            pl.struct(turn.field("role").cast(pl.String), turn.field("content").cast(pl.String))
        ),
        **_messages_verdict(column, problem),
    )


def _messages_verdict(column: str, problem: pl.Expr) -> dict[str, pl.Expr]:
    """Verdict columns read from the raw column: null is missing_value, a problem is bad_messages."""
    is_null = pl.col(column).is_null()
    return {
        "_field": pl.when(is_null | problem.is_not_null()).then(pl.lit(column)),
        "_reason": pl.when(is_null).then(pl.lit("missing_value"))
        .when(problem.is_not_null()).then(pl.lit("bad_messages")),
        "_detail": pl.when(is_null).then(pl.lit(f"column '{column}' is null")).otherwise(problem),
    }


def _parse_json_messages(values: pl.Series) -> tuple[pl.Series, list[str | None]]:
    """JSON strings -> messages; per row a problem sentence, or None when it parsed.

    Python per row: JSON text needs a real parser to name what is wrong with each row.
    """
    conversations: list[list[dict] | None] = []
    problems: list[str | None] = []
    for text in values.to_list():
        if text is None:
            conversations.append(None)
            problems.append(None)  # reported as missing_value
            continue
        turns, problem = _parse_turns(text)
        conversations.append(turns)
        problems.append(problem)
    return pl.Series("messages", conversations, dtype=MESSAGES_DTYPE), problems


def _parse_turns(text: str) -> tuple[list[dict] | None, str | None]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        return None, f"not valid JSON: {exc.msg} at char {exc.pos}"
    if not isinstance(value, list):
        return None, f"expected a JSON list of turns, got {type(value).__name__}"
    turns = []
    for i, turn in enumerate(value):
        if not isinstance(turn, dict):
            return None, f"turn {i} is {type(turn).__name__}, expected an object with role and content"
        role, content = turn.get("role"), turn.get("content")
        if not isinstance(role, str):
            return None, f"turn {i} has no text role"
        if content is not None and not isinstance(content, str):
            return None, f"turn {i} content is {type(content).__name__}, expected text"
        turns.append({"role": role, "content": content})
    return turns, None


def _add_system_turn(frame: pl.DataFrame, source: SourceConfig) -> pl.DataFrame:
    if source.system_prompt is not None:
        system = pl.lit(source.system_prompt, dtype=pl.String)
    elif source.system_column is not None:
        system = _text(source.system_column)
    else:
        return frame
    opens_with_system = (
        pl.col("messages").list.first().struct.field("role").fill_null("") == "system"
    )
    add = _non_blank(system) & ~opens_with_system & pl.col("messages").is_not_null()
    with_system = pl.concat_list([pl.concat_list([_turn("system", system)]), pl.col("messages")])
    return frame.with_columns(
        messages=pl.when(add).then(with_system).otherwise(pl.col("messages")).cast(MESSAGES_DTYPE)
    )
