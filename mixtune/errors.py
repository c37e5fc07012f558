"""The few error types mixtune raises.

Whole-file faults (not UTF-8, empty, missing columns, malformed lines) raise
``DataError``; faults in single rows never raise, they go to a rejects table
with a snake_case reason so nothing is lost. ``ConfigError`` gathers every bad
key at once, so a user fixes a config in one pass rather than one key per run;
``StorageError`` says which storage root failed and which config field names it;
``read_yaml`` is the one way a config, catalog or sweep file is read into data.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator


class MixtuneError(Exception):
    """Base class: catch this to handle any mixtune failure."""


class DataError(MixtuneError):
    """Input data that cannot be read as given.

    Reads like "train.jsonl line 3, field messages: not valid JSON" so the user
    can open the file at the right place.
    """

    def __init__(
        self,
        file: str,
        reason: str,
        *,
        row: int | None = None,
        field: str | None = None,
        line: int | None = None,
        byte_offset: int | None = None,
    ) -> None:
        self.file, self.reason = file, reason
        self.row, self.field, self.line, self.byte_offset = row, field, line, byte_offset
        where = [file]
        if line is not None:
            where.append(f"line {line}")
        if row is not None:
            where.append(f"row {row}")
        if byte_offset is not None:
            where.append(f"byte {byte_offset}")
        head = " ".join(where)
        if field is not None:
            head += f", field {field}"
        super().__init__(f"{head}: {reason}")


class RejectShareExceeded(MixtuneError):
    """Validation rejected more rows than the configured threshold allows.

    Carries the reason counts so the message says what to fix first.
    """

    def __init__(self, source: str, rows_in: int, rows_rejected: int,
                 max_reject_percent: float, reasons: dict[str, int], rejects_uri: str) -> None:
        self.source, self.rows_in, self.rows_rejected = source, rows_in, rows_rejected
        self.reasons = reasons
        share = 100.0 * rows_rejected / max(rows_in, 1)
        top = ", ".join(f"{r}: {n}" for r, n in sorted(reasons.items(), key=lambda kv: -kv[1]))
        super().__init__(
            f"source {source!r}: {rows_rejected} of {rows_in} rows rejected ({share:.1f}%), "
            f"over the {max_reject_percent:g}% limit (validate.max_reject_percent). "
            f"Reasons: {top}. Rejected rows with reasons are in {rejects_uri}"
        )


class StorageError(MixtuneError):
    """The storage root cannot be reached or written: an S3 outage, a full or read-only disk.

    Names the root and the config fields to check, e.g. "storage s3://b/runs
    (storage.root) at http://minio:9000 (storage.endpoint_url): cannot be
    reached (...)", so one line says where and what, however many stages hit it.
    """

    def __init__(self, root: str, reason: str, *, endpoint_url: str | None = None, path: str | None = None,
                 advice: str = "") -> None:
        self.root, self.reason, self.endpoint_url, self.path = root, reason, endpoint_url, path
        where = f"storage {root} (storage.root)"
        if endpoint_url:
            where += f" at {endpoint_url} (storage.endpoint_url)"
        what = f"{reason}, at {path}" if path and path != root else reason
        super().__init__(f"{where}: {what}" + (f". {advice}" if advice else ""))


class ConfigError(MixtuneError):
    """A config that does not parse; lists every bad key path at once."""

    def __init__(self, problems: list[str], source: str | None = None) -> None:
        self.problems = problems
        head = f"invalid config {source}" if source else "invalid config"
        super().__init__(head + ":\n" + "\n".join(f"  - {p}" for p in problems))


# The pydantic error type of a URI refused for holding a credential: its input is never echoed.
CREDENTIALS_IN_URI = "credentials_in_uri"
# Checks across sections have no path of their own: name the fields they compare.
_CROSS_SECTION_PATHS = {"length_limits_disagree": "train.max_length, validate.max_length"}
# What pydantic puts before a validator's own message ("Value error, domain_percent is ...").
_PYDANTIC_PREFIXES = ("Value error, ", "Assertion failed, ")


def validation_problem(err: dict[str, Any], *, show_input: bool = True) -> str:
    """One line for one pydantic error: ``key.path[0]: message (got value)``; the one formatter for
    config, catalog, sweep and mix files.

    An unknown key reads ``path: unknown key``; a mapping, list, None or a URI
    refused for its credentials is never echoed; pydantic's "Value error, "
    prefix is dropped (the message is ours).
    """
    path = ""
    for part in err["loc"]:
        if isinstance(part, int):
            path += f"[{part}]"
        elif not str(part).startswith("function-"):
            # Discriminated unions put the tag in the path ("columns.label.text"); it helps.
            path += f".{part}" if path else str(part)
    if err["type"] == "extra_forbidden":
        return f"{path}: unknown key"
    message = str(err["msg"])
    for prefix in _PYDANTIC_PREFIXES:
        message = message.removeprefix(prefix)
    got = err.get("input")
    hidden = (not show_input or isinstance(got, (dict, list)) or got is None or err["type"] == CREDENTIALS_IN_URI
              or "got " in message)  # our own messages already say what they got
    shown = "" if hidden else f" (got {got!r})"
    if not path and err["type"] in _CROSS_SECTION_PATHS:
        path = _CROSS_SECTION_PATHS[err["type"]]
    return f"{path or '<root>'}: {message}{shown}"


def causes(exc: BaseException) -> Iterator[BaseException]:
    """``exc``, then every exception it was raised from or while handling, each once."""
    seen: set[int] = set()
    todo = [exc]
    while todo:
        current = todo.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        todo += [e for e in (current.__cause__, current.__context__) if e is not None]


def read_yaml(path: str | Path, what: str = "") -> Any:
    """A YAML file's data (config, catalog or sweep file), or a ConfigError naming the file.

    ``what`` prefixes the not-found message (e.g. ``"catalog"``), since a missing
    file has no config of its own to name.
    """
    path = Path(path)
    import yaml  # here, not at import: the error types stay free of third-party imports

    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([f"{what + ': ' if what else ''}file not found: {path}"]) from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError([f"not valid YAML: {exc}"], str(path)) from None
