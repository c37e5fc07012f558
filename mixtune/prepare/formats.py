"""Turning one file's bytes into a polars frame, or a DataError that says where it broke.

Every parser here takes the file's raw bytes (gzip already detected and
undone) and its URI for messages. Whole-file faults raise ``DataError``:
not UTF-8 (with the byte offset), empty, a malformed JSONL line (with the
1-based line number and the JSON parser's message), a JSON file that is not
an array of objects, an unreadable CSV or Parquet file. Text formats are
checked for UTF-8 up front so the offset is exact rather than whatever the
fast parser happened to report.
"""

from __future__ import annotations

import gzip
import io
import json
import zlib

import polars as pl

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
UTF8_BOM = b"\xef\xbb\xbf"


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
        text = _decode_utf8(data, uri)
        if fmt == "jsonl":
            frame = _parse_jsonl(data, text, uri)
        elif fmt == "json":
            frame = _parse_json_array(text, uri)
        elif fmt in ("csv", "tsv"):
            frame = _parse_delimited(data, uri, separator="," if fmt == "csv" else "\t")
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


def _parse_jsonl(data: bytes, text: str, uri: str) -> pl.DataFrame:
    """Fast path: polars reads the whole file; on failure, find the bad line for the message."""
    body = data[len(UTF8_BOM) :] if data.startswith(UTF8_BOM) else data
    try:
        # Scan every row for the schema: a field that is null for the first
        # hundred rows must not be guessed as null-typed.
        return pl.read_ndjson(io.BytesIO(body), infer_schema_length=None)
    except Exception as fast_error:  # noqa: BLE001 - polars raises several types; we re-diagnose
        records = _jsonl_records(text.removeprefix("\ufeff"), uri)
        try:
            return pl.from_dicts(records, infer_schema_length=None)
        except Exception as exc:  # noqa: BLE001
            raise DataError(
                uri, f"records do not form one table (a field changes type?): {exc}; "
                f"polars said: {fast_error}"
            ) from None


def _jsonl_records(text: str, uri: str) -> list[dict]:
    """Slow path, only after the fast parser failed: raise at the first bad line."""
    records: list[dict] = []
    # split("\n"), not splitlines(): U+2028 and friends are legal inside JSON strings.
    for line_number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(
                uri, f"not valid JSON: {exc.msg} (column {exc.colno})", line=line_number
            ) from None
        if not isinstance(record, dict):
            raise DataError(
                uri, f"expected a JSON object, got {_json_type(record)}", line=line_number
            )
        records.append(record)
    return records


def _parse_json_array(text: str, uri: str) -> pl.DataFrame:
    try:
        records = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(
            uri, f"not valid JSON: {exc.msg} (column {exc.colno})", line=exc.lineno
        ) from None
    if not isinstance(records, list):
        raise DataError(
            uri, f"expected a JSON array of objects, got {_json_type(records)} "
            "(one object per line is JSONL: name the file .jsonl)"
        )
    for index, record in enumerate(records):
        if not isinstance(record, dict):
            raise DataError(
                uri, f"expected a JSON array of objects, but element {index} is "
                f"{_json_type(record)}"
            )
    if not records:
        raise DataError(uri, "file is empty: the JSON array has no records")
    try:
        return pl.from_dicts(records, infer_schema_length=None)
    except Exception as exc:  # noqa: BLE001
        raise DataError(uri, f"records do not form one table (a field changes type?): {exc}") from None


def _parse_delimited(data: bytes, uri: str, separator: str) -> pl.DataFrame:
    try:
        # Every column as text: IDs like "007" keep their zeros, and a column
        # does not change type between files of one source.
        return pl.read_csv(io.BytesIO(data), separator=separator, infer_schema=False)
    except Exception as exc:  # noqa: BLE001
        kind = "CSV" if separator == "," else "TSV"
        raise DataError(uri, f"not a readable {kind} file: {_first_line(exc)}") from None


def _parse_parquet(data: bytes, uri: str) -> pl.DataFrame:
    try:
        return pl.read_parquet(io.BytesIO(data))
    except Exception as exc:  # noqa: BLE001
        raise DataError(uri, f"not a readable Parquet file: {_first_line(exc)}") from None


def _json_type(value: object) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean",
             int: "a number", float: "a number", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def _first_line(exc: Exception) -> str:
    return str(exc).strip().split("\n", 1)[0]
