"""Storage faults as one user-facing error: which root, which config field, what to do.

An S3 outage reaches mixtune as botocore's ``EndpointConnectionError`` (after
botocore and s3fs retried), a full or read-only disk as an ``OSError``
(ENOSPC, EDQUOT, EROFS). Left as they are, Prefect logs each one from every
task and flow run it passes through, with a traceback each time. Turned into
a ``StorageError`` (a ``MixtuneError``), the CLI prints it once, as the last
line, naming ``storage.root`` (and ``storage.endpoint_url``), and the
tracebacks go to the log file (``mixtune.console``).

What counts: a connection failure when the root is ``s3://``; a disk error
whose path lies under a local root. Both are looked for along the whole
exception chain (``__cause__`` and ``__context__``), so an error raised while
handling the first one (a failing cleanup, a tracking store on the same full
disk) does not hide it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
from typing import Iterator

from mixtune.errors import MixtuneError, StorageError, causes
from mixtune.sections import StorageConfig

# errno -> (what happened, what to do)
_DISK_FAULTS = {
    errno.ENOSPC: ("no space left on device", "Free space there or point storage.root at another disk"),
    errno.EDQUOT: ("disk quota exceeded", "Free space there or point storage.root at another disk"),
    errno.EROFS: ("read-only file system", "Point storage.root at a writable folder"),
    errno.EACCES: ("permission denied", "Point storage.root at a folder this user can write"),
}


def _is_connection_error(exc: BaseException) -> bool:
    try:
        from botocore.exceptions import ConnectionError as BotoConnectionError
    except ImportError:  # no s3fs, no S3 root
        return False
    try:
        from aiohttp import ClientConnectorError
    except ImportError:
        ClientConnectorError = ()  # type: ignore[assignment,misc]
    return isinstance(exc, (BotoConnectionError, ClientConnectorError))


def _under(path: str, root: str) -> bool:
    path, root = os.path.abspath(path), os.path.abspath(root)
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def _disk_errors(exc: BaseException) -> Iterator[tuple[int, str]]:
    """(errno, path) of a disk error: an OSError, or each file a ``shutil.copytree`` could not copy.

    ``copytree`` gathers its failures into one ``shutil.Error`` of (src, dst, message) and
    keeps only each message, "[Errno 28] No space left on device: ...", so the errno is read from it.
    """
    if isinstance(exc, shutil.Error) and exc.args and isinstance(exc.args[0], list):
        for entry in exc.args[0]:
            if len(entry) == 3 and (match := re.match(r"\[Errno (\d+)\]", str(entry[2]))):
                yield int(match.group(1)), str(entry[1])
    elif isinstance(exc, OSError) and exc.errno is not None and isinstance(exc.filename, str):
        yield exc.errno, exc.filename


def storage_fault(exc: BaseException, storage: StorageConfig) -> StorageError | None:
    """The ``StorageError`` an exception amounts to under this storage section, or None."""
    remote = storage.root.startswith("s3://")
    for cause in causes(exc):
        if isinstance(cause, StorageError):
            return cause
        if remote and _is_connection_error(cause):
            return StorageError(storage.root, f"cannot be reached ({cause})", endpoint_url=storage.endpoint_url,
                                advice="Check that the S3 server is up and that storage.endpoint_url names it")
        for code, path in _disk_errors(cause) if not remote else ():
            if code in _DISK_FAULTS and _under(path, storage.root):
                reason, advice = _DISK_FAULTS[code]
                return StorageError(storage.root, reason, path=path, advice=advice)
    return None


@contextlib.contextmanager
def storage_faults(storage: StorageConfig) -> Iterator[None]:
    """Raise a storage fault in the block as a ``StorageError`` (the original kept as its cause)."""
    try:
        yield
    except MixtuneError:
        raise
    except Exception as exc:
        fault = storage_fault(exc, storage)
        if fault is None:
            raise
        if fault.__traceback__ is not None:
            raise fault  # raised before, deeper down: its own cause stays (Python keeps the context acyclic)
        raise fault from exc
