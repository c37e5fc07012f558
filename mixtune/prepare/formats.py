"""Turning one file's bytes into a polars frame, or a DataError that says where it broke.

Every parser here takes the file's raw bytes (gzip already detected and
undone) and its URI for messages. Text formats are checked for UTF-8 up
front so the byte offset of a bad byte is exact.

What a text field holds is what the file says, never a parser's guess:

- CSV and TSV: every column is text (no type inference: ``007`` and
  ``19.90`` stay as written); an empty field is null. CSV quotes with ``"``
  (doubled inside a quoted value, RFC 4180); TSV has no quoting, so a ``"``
  is data and a value cannot hold a tab or a line break (IANA
  text/tab-separated-values).
- JSON and JSONL: a field holding a string, number or ``true``/``false`` is
  read as text exactly as written (``2``, ``3.14``, ``9007199254740993``,
  ``19.90``, ``true``); null is null. Nested values (arrays, objects: a
  ``messages`` list) keep their structure with exact types: a field that
  would need a type changed between records (``content`` a string in one
  turn and a number in another) is kept as its JSON text instead, so that
  the row, not the file, is rejected later with a reason.
- Parquet: the file's own column types; transform decides which types a
  text field may hold.

Whole-file faults raise ``DataError``: not UTF-8 (with the byte offset),
empty, a line that cannot be read (with its 1-based line number: malformed
JSON, a CSV/TSV record whose field count differs from the header's, a
broken quote), a field that is text in one record and nested in another, a
key that appears twice in one object or header, a JSON file that is not an
array of objects, an unreadable Parquet file. A blank line is no record.

The JSON and CSV readers are Python's ``json`` and ``csv`` rather than
polars' readers: polars infers types (``19.90`` -> ``19.9``), coerces a
field that changes type to text of the coerced value, fills short CSV
records with nulls and reports no line numbers. Measured on 100 MB of 1 KB
rows (two shared cores): 35-40 MB/s for flat JSONL, CSV and TSV, 17 MB/s for
chat JSONL (polars: 25-400 MB/s, inexact); still over ten times the
chat-template tokenizer every row meets in validate (~1.5 MB/s per core).
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import re
import zlib

import polars as pl
import pyarrow as pa

from mixtune.errors import DataError

# Format by file extension (after a trailing ".gz" is removed).
EXTENSION_FORMATS = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "json",
    ".csv": "csv",
    ".tsv": "tsv",
    ".parquet": "parquet",
    ".pq": "parquet",
}
GZIP_MAGIC = b"\x1f\x8b"
UTF8_BOM = "\ufeff"
# The csv module refuses fields over 128 KiB by default; a long answer is data, not an attack.
csv.field_size_limit(2**31 - 1)
_JSON_SPACE = re.compile(r"[ \t\n\r]*")


def format_of(uri: str) -> str | None:
    """The format a file's extension names, or None when it names none."""
    name = uri.rsplit("/", 1)[-1].lower()
    if name.endswith(".gz"):
        name = name[: -len(".gz")]
    dot = name.rfind(".")
    return EXTENSION_FORMATS.get(name[dot:]) if dot >= 0 else None


def parse_file(raw: bytes, uri: str, file_format: str) -> pl.DataFrame:
    """Parse one file's raw bytes; ``file_format`` is 'auto' or a concrete format."""
    fmt = format_of(uri) if file_format == "auto" else file_format
    if fmt is None:
        known = ", ".join(sorted(EXTENSION_FORMATS))
        raise DataError(
            uri, f"cannot tell the format from the file name (known: {known}, each "
            "optionally .gz); set the source's format"
        )
    data = _gunzip(raw, uri) if raw[:2] == GZIP_MAGIC else raw
    if not data or data.isspace():  # isspace stops at the first non-space: no copy
        raise DataError(uri, "file is empty")
    if fmt == "parquet":
        frame = _parse_parquet(data, uri)
    else:
        text = _decode_utf8(data, uri).removeprefix(UTF8_BOM)
        if fmt == "jsonl":
            frame = _records_frame(*_jsonl_records(text, uri), uri)
        elif fmt == "json":
            frame = _records_frame(*_json_array_records(text, uri), uri)
        elif fmt in ("csv", "tsv"):
            frame = _parse_delimited(text, uri, fmt)
        else:
            raise DataError(uri, f"format {fmt!r} is not a file format")
    if frame.height == 0:
        raise DataError(uri, "file is empty: it has no records")
    return frame


def _gunzip(raw: bytes, uri: str) -> bytes:
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(uri, f"not a valid gzip file: {exc}") from None


def _decode_utf8(data: bytes, uri: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        bad = data[exc.start : exc.start + 4].hex(" ")
        raise DataError(
            uri, f"not valid UTF-8 (bytes {bad}); re-save the file as UTF-8",
            byte_offset=exc.start,
        ) from None


# --- JSON and JSONL ---


class _JsonInt(int):
    """``-0``, the one JSON integer whose token ``str(int(token))`` does not give back."""

    token: str


class _JsonFloat(float):
    """A JSON number with a fraction or exponent (or NaN, Infinity), remembering its token."""

    token: str


class _DuplicateKey(ValueError):
    pass


def _int_token(token: str) -> int:
    # JSON integers have no "+" and no leading zeros, so str(int) is the token, save for -0.
    if token != "-0":
        return int(token)
    number = _JsonInt(token)
    number.token = token
    return number


def _float_token(token: str) -> _JsonFloat:
    number = _JsonFloat(token)
    number.token = token
    return number


def _unique_keys(pairs: list[tuple[str, object]]) -> dict:
    record = dict(pairs)
    if len(record) != len(pairs):
        seen: set[str] = set()
        twice = next(k for k, _ in pairs if k in seen or seen.add(k))
        raise _DuplicateKey(twice)
    return record


_DECODER = json.JSONDecoder(parse_int=_int_token, parse_float=_float_token,
                            parse_constant=_float_token, object_pairs_hook=_unique_keys)


def _jsonl_records(text: str, uri: str) -> tuple[list[dict], list[int]]:
    """One object per non-blank line; the records and their 1-based line numbers."""
    records: list[dict] = []
    lines: list[int] = []
    # split("\n"), not splitlines(): U+2028 and friends are legal inside JSON strings.
    for line_number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            record = _DECODER.decode(line)
        except json.JSONDecodeError as exc:
            raise DataError(
                uri, f"not valid JSON: {exc.msg} (column {exc.colno})", line=line_number
            ) from None
        except _DuplicateKey as exc:
            raise DataError(uri, f"key {exc.args[0]!r} appears twice in one object", line=line_number) from None
        if not isinstance(record, dict):
            raise DataError(
                uri, f"expected a JSON object, got {_json_type(record)}", line=line_number
            )
        records.append(record)
        lines.append(line_number)
    return records, lines


def _json_array_records(text: str, uri: str) -> tuple[list[dict], list[int]]:
    """The objects of one top-level JSON array, and the line each starts on.

    The array is walked element by element (``raw_decode``) so each record
    keeps its line number for later messages.
    """
    pos = _JSON_SPACE.match(text).end()
    if not text.startswith("[", pos):
        value = _decode_whole(text, uri)  # raises on invalid JSON, with its line
        raise DataError(
            uri, f"expected a JSON array of objects, got {_json_type(value)} "
            "(one object per line is JSONL: name the file .jsonl)"
        )
    records: list[dict] = []
    lines: list[int] = []
    line, counted = 1, 0
    pos = _JSON_SPACE.match(text, pos + 1).end()
    if text.startswith("]", pos):
        raise DataError(uri, "file is empty: the JSON array has no records")
    while True:
        line, counted = line + text.count("\n", counted, pos), pos
        try:
            value, pos = _DECODER.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            raise DataError(uri, f"not valid JSON: {exc.msg} (column {exc.colno})",
                            line=exc.lineno) from None
        except _DuplicateKey as exc:
            raise DataError(uri, f"key {exc.args[0]!r} appears twice in one object", line=line) from None
        if not isinstance(value, dict):
            raise DataError(uri, f"expected a JSON array of objects, but element {len(records)} "
                                 f"is {_json_type(value)}", line=line)
        records.append(value)
        lines.append(line)
        pos = _JSON_SPACE.match(text, pos).end()
        if text.startswith(",", pos):
            pos = _JSON_SPACE.match(text, pos + 1).end()
            continue
        if text.startswith("]", pos) and not text[pos + 1:].strip(" \t\n\r"):
            return records, lines
        _decode_whole(text, uri)  # names the line and column of what is wrong
        raise DataError(uri, "not valid JSON after the array")  # pragma: no cover - decode raised


def parse_json_text(text: str) -> object:
    """One JSON value, numbers keeping their written form (``json_text`` writes it back exactly).

    Raises ``json.JSONDecodeError`` or ``ValueError`` (a key twice in one object).
    """
    return _DECODER.decode(text)


def json_text(value: object) -> str:
    """JSON text of a parsed value with every number as written in the file."""
    return _json_text(value)


def _decode_whole(text: str, uri: str) -> object:
    try:
        return _DECODER.decode(text)
    except json.JSONDecodeError as exc:
        raise DataError(uri, f"not valid JSON: {exc.msg} (column {exc.colno})",
                        line=exc.lineno) from None
    except _DuplicateKey as exc:
        raise DataError(uri, f"key {exc.args[0]!r} appears twice in one object") from None


def _records_frame(records: list[dict], lines: list[int], uri: str) -> pl.DataFrame:
    """One column per key, in first-seen order; a key absent from a record is null there."""
    names = list(dict.fromkeys(key for record in records for key in record))
    return pl.DataFrame([_json_column(name, [r.get(name) for r in records], lines, uri)
                         for name in names])


def _json_column(name: str, values: list, lines: list[int], uri: str) -> pl.Series:
    """Scalars as text as written; nested values with exact types, else as their JSON text."""
    first_nested = next((i for i, v in enumerate(values) if isinstance(v, (list, dict))), None)
    if first_nested is None:
        return pl.Series(name, [_as_text(v) for v in values], dtype=pl.String)
    first_scalar = next((i for i, v in enumerate(values) if v is not None
                         and not isinstance(v, (list, dict))), None)
    if first_scalar is not None:
        raise DataError(
            uri, f"field {name!r} is {_json_type(values[first_scalar])} on line "
            f"{lines[first_scalar]} but {_json_type(values[first_nested])} on line "
            f"{lines[first_nested]}; a field holds one kind of value in every record",
            line=lines[max(first_scalar, first_nested)], field=name,
        )
    try:
        # The type is worked out here, not inferred by polars or pyarrow: both coerce a place
        # that holds two kinds of value (polars: 0.5 -> 0, 2 -> "2"; pyarrow: true -> 1.0).
        arrow_type = _arrow_type(_unified_kind(values))
        return pl.Series(name, pa.array(values, type=arrow_type))
    except (_MixedKinds, pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
        # e.g. an int a double cannot hold, or one past int64
        return pl.Series(name, [None if v is None else _json_text(v) for v in values],
                         dtype=pl.String)


class _MixedKinds(ValueError):
    """One place in nested values holds two kinds of value (text and a number ...)."""


def _unified_kind(values: list) -> object:
    kind: object = "null"
    for value in values:
        kind = _unify(kind, _kind_of(value))
    return kind


_SCALAR_KINDS = {type(None): "null", bool: "bool", int: "int", _JsonInt: "int", _JsonFloat: "float",
                 float: "float", str: "str"}
# Kinds of flat objects by their keys and value types: turns share a few shapes, so most
# objects cost one tuple and one lookup, and equal kinds are the same object (cheap to unify).
_FLAT_KINDS: dict[tuple, object] = {}


def _kind_of(value: object) -> object:
    """"null", "bool", "int", "float", "str", ("list", kind) or ("struct", {key: kind})."""
    scalar = _SCALAR_KINDS.get(type(value))
    if scalar is not None:
        return scalar
    if isinstance(value, list):
        return ("list", _unified_kind(value))
    shape = tuple((key, type(v)) for key, v in value.items())
    kind = _FLAT_KINDS.get(shape)
    if kind is None:
        kind = ("struct", {key: _kind_of(v) for key, v in value.items()})
        if all(t in _SCALAR_KINDS for _, t in shape) and len(_FLAT_KINDS) < 4096:
            _FLAT_KINDS[shape] = kind
    return kind


def _unify(a: object, b: object) -> object:
    """The kind holding both; an int beside a float is a float (pyarrow then checks it is exact)."""
    if a is b or a == "null" or a == b:
        return b
    if b == "null":
        return a
    if a in ("int", "float") and b in ("int", "float"):
        return "float"
    if isinstance(a, tuple) and isinstance(b, tuple) and a[0] == b[0]:
        if a[0] == "list":
            return ("list", _unify(a[1], b[1]))
        keys = list(dict.fromkeys([*a[1], *b[1]]))
        return ("struct", {k: _unify(a[1].get(k, "null"), b[1].get(k, "null")) for k in keys})
    raise _MixedKinds(f"{a} and {b}")


def _arrow_type(kind: object) -> pa.DataType:
    scalars = {"null": pa.null(), "bool": pa.bool_(), "int": pa.int64(), "float": pa.float64(),
               "str": pa.string()}
    if isinstance(kind, str):
        return scalars[kind]
    if kind[0] == "list":
        return pa.list_(_arrow_type(kind[1]))
    return pa.struct([(key, _arrow_type(k)) for key, k in kind[1].items()])


def _as_text(value: object) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (_JsonInt, _JsonFloat)):
        return value.token  # the number as written
    return str(value)  # an int: its token


def _json_text(value: object) -> str:
    """JSON text of a parsed value with every number as written in the file."""
    if isinstance(value, (_JsonInt, _JsonFloat)):
        return value.token
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k, ensure_ascii=False)}: {_json_text(v)}"
                               for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_json_text(v) for v in value) + "]"
    return json.dumps(value, ensure_ascii=False)


# --- CSV and TSV ---


def _parse_delimited(text: str, uri: str, fmt: str) -> pl.DataFrame:
    """Header plus records, every field as text (empty is null), each line's fault named."""
    kind = fmt.upper()
    if fmt == "csv":
        options = {"delimiter": ",", "quotechar": '"', "doublequote": True, "strict": True}
        hint = "a value holding a comma, a quote or a line break must be in double quotes"
    else:
        options = {"delimiter": "\t", "quoting": csv.QUOTE_NONE}
        hint = "TSV has no quoting, so a value cannot hold a tab or a line break"
    reader = csv.reader(io.StringIO(text, newline=""), **options)
    last_line = 0  # the line the previous record ended on
    try:
        header = next(reader, [])
        if not header:
            raise DataError(uri, f"the first line, the {kind} header, is blank", line=1)
        _check_header(header, uri)
        columns: list[list[str | None]] = [[] for _ in header]
        last_line = reader.line_num
        for record in reader:
            line, last_line = last_line + 1, reader.line_num
            if not record:
                continue  # a blank line is no record
            if len(record) != len(header):
                raise DataError(uri, f"{len(record)} field{'s' if len(record) != 1 else ''}, but the "
                                     f"header has {len(header)} ({hint})", line=line)
            for column, value in zip(columns, record):
                column.append(value if value != "" else None)
    except csv.Error as exc:
        # Named by the line the broken record starts on: an open quote may run to the end.
        raise DataError(uri, f"not a readable {kind} record: {exc} ({hint})",
                        line=last_line + 1) from None
    return pl.DataFrame([pl.Series(name, column, dtype=pl.String)
                         for name, column in zip(header, columns)])


def _check_header(header: list[str], uri: str) -> None:
    seen: dict[str, int] = {}
    for position, name in enumerate(header, start=1):
        if name in seen:
            raise DataError(uri, f"column {name!r} appears twice in the header (columns "
                                 f"{seen[name]} and {position})", line=1, field=name)
        seen[name] = position


# --- Parquet ---


def _parse_parquet(data: bytes, uri: str) -> pl.DataFrame:
    try:
        return pl.read_parquet(io.BytesIO(data))
    except Exception as exc:  # noqa: BLE001
        raise DataError(uri, f"not a readable Parquet file: {_first_line(exc)}") from None


def _json_type(value: object) -> str:
    if isinstance(value, bool):
        return "a boolean"
    names = {dict: "an object", list: "an array", str: "a string", int: "a number",
             float: "a number", type(None): "null"}
    return next((n for t, n in names.items() if isinstance(value, t)), type(value).__name__)


def _first_line(exc: Exception) -> str:
    return str(exc).strip().split("\n", 1)[0]
