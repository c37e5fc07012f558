"""One lock per artifact while it is computed, so runs sharing a root compute it once.

Two runs of one config started seconds apart both miss the cache (neither has
committed yet) and would both compute the same artifact into the same folder.
With the lock, the second one waits, then finds the first one's committed
artifact (``ArtifactStore.find``) and uses it.

A lock is named by the stage and the artifact's content key, under
``<root>/_locks/<stage>/``:

- Local root: ``<key[:16]>.lock``, an OS file lock (``filelock``: ``flock`` on
  POSIX, never the soft marker-file fallback). The kernel releases it when its
  holder exits, SIGKILL and OOM kill included, so a lock file left behind by a
  dead run is just an empty file: the next run takes it at once.
- ``s3://`` root: ``<key[:16]>.lease``, an object created with a conditional
  PUT (``If-None-Match: *``), so of two workers exactly one creates it. Its
  holder rewrites it every ``lease_s / 4`` (``If-Match`` its last ETag); a waiter
  that sees the same ETag for a whole ``lease_s`` by its own clock takes the
  lease over (``If-Match`` that ETag), so a killed holder delays others by about
  ``lease_s``, never forever, and no two clocks are compared. A store that
  ignores conditional writes (an old MinIO, say) makes every PUT succeed: both
  runs then compute, as without a lock; that wastes work but tears nothing
  (whole-object writes, manifest last, same content).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
import uuid
from typing import Callable, Iterator

from filelock import FileLock, Timeout

from mixtune.storage.artifacts import ArtifactStore

LOCKS = "_locks"
LEASE_S = 60.0  # an S3 lease not renewed for this long is taken over: its holder is gone
POLL_S = 2.0  # how often a waiter on an S3 lease looks again

log = logging.getLogger(__name__)


def lock_path(store: ArtifactStore, stage: str, key: str) -> str:
    """The lock file (local root) or lease object (S3 root) of one artifact."""
    return store.uri(LOCKS, stage, f"{key[:16]}.{'lock' if store.is_local else 'lease'}")


@contextlib.contextmanager
def artifact_lock(store: ArtifactStore, stage: str, key: str, *, label: str | None = None,
                  on_wait: Callable[[str], object] | None = None, lease_s: float = LEASE_S) -> Iterator[str]:
    """Hold the artifact's lock for the block; yields the lock's path.

    Blocks while another run (or thread) holds it, with no time limit: a live
    holder is computing, a dead one's lock is released by the kernel (local) or
    taken over after ``lease_s`` (S3). Calls ``on_wait`` once with "waiting for
    <label>: another run is computing it (lock <path>)" before it blocks.
    """
    path = lock_path(store, stage, key)
    waiting = f"waiting for {label or stage}: another run is computing it (lock {path})"
    held = _file_lock(path, waiting, on_wait) if store.is_local else _S3Lease(store, path, lease_s).held(waiting, on_wait)
    with held:
        yield path


@contextlib.contextmanager
def _file_lock(path: str, waiting: str, on_wait: Callable[[str], object] | None) -> Iterator[None]:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    # A marker file would outlive a killed holder and block every later run: OS locks only.
    lock = FileLock(path, fallback_to_soft=False)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        if on_wait is not None:
            on_wait(waiting)
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


def _error_code(error: BaseException | None) -> str | None:
    """The S3 error code behind an s3fs error (s3fs keeps botocore's ClientError as the cause)."""
    while error is not None:
        code = getattr(error, "response", {}).get("Error", {}).get("Code")
        if code:
            return code
        error = error.__cause__
    return None


def _precondition_failed(error: BaseException) -> bool:
    """Whether an s3fs error is a conditional write that lost (412, or 409 for a concurrent one)."""
    # FileExistsError: s3fs's word for a failed If-None-Match.
    return isinstance(error, FileExistsError) or _error_code(error) in ("PreconditionFailed",
                                                                          "ConditionalRequestConflict")


class _S3Lease:
    """One lease object; ``held`` takes it (waiting as long as a live holder renews it) and gives it back."""

    def __init__(self, store: ArtifactStore, uri: str, lease_s: float) -> None:
        self.fs, self.lease_s = store.fs, lease_s
        self.bucket, _, self.key = store.fs_path(uri).partition("/")
        self.holder = f"{socket.gethostname()} pid {os.getpid()} ({uuid.uuid4().hex[:8]})"
        self.etag: str | None = None
        self.beats = 0

    def _put(self, **condition: str) -> str:
        self.beats += 1
        body = json.dumps({"holder": self.holder, "beat": self.beats, "lease_s": self.lease_s}).encode()
        return self.fs.call_s3("put_object", Bucket=self.bucket, Key=self.key, Body=body, **condition)["ETag"]

    def _take(self, on_wait: Callable[[], None]) -> None:
        seen_etag, seen_since = None, 0.0
        while True:
            try:
                self.etag = self._put(IfNoneMatch="*")
                return
            except OSError as error:
                if _error_code(error) == "NotImplemented":  # a store without conditional writes
                    log.warning("%s: no conditional writes on this S3 store, so no lease: a concurrent run "
                                "may compute the same artifact", self.key)
                    return
                if not _precondition_failed(error):
                    raise
            try:
                etag = self.fs.call_s3("head_object", Bucket=self.bucket, Key=self.key)["ETag"]
            except FileNotFoundError:
                continue  # released in between: try to create it again
            now = time.monotonic()
            if etag != seen_etag:
                seen_etag, seen_since = etag, now
            elif now - seen_since >= self.lease_s:  # not renewed for a whole lease: its holder is gone
                try:
                    self.etag = self._put(IfMatch=etag)
                    return
                except OSError as error:
                    if not _precondition_failed(error):
                        raise
                    continue  # another waiter took it over first
            on_wait()
            time.sleep(min(POLL_S, self.lease_s / 4))

    def _renew(self, stop: threading.Event) -> None:
        while not stop.wait(self.lease_s / 4):
            try:
                self.etag = self._put(IfMatch=self.etag)
            except Exception as error:  # botocore's connection errors are not OSErrors
                if _precondition_failed(error):
                    return  # taken over (we were silent a whole lease): the computation goes on regardless
                # An outage: keep trying; the stage itself fails on it if it lasts.

    @contextlib.contextmanager
    def held(self, waiting: str, on_wait: Callable[[str], object] | None) -> Iterator[None]:
        told = []

        def tell() -> None:
            if not told and on_wait is not None:
                on_wait(waiting)
            told.append(True)

        self._take(tell)
        if self.etag is None:  # no lease on this store (see _take)
            yield
            return
        stop = threading.Event()
        renewer = threading.Thread(target=self._renew, args=(stop,), daemon=True, name="mixtune-lease")
        renewer.start()
        try:
            yield
        finally:
            stop.set()
            renewer.join()
            # Best effort: lost to a takeover, or S3 unreachable (botocore's errors are not OSErrors);
            # a lease left behind is taken over after lease_s.
            with contextlib.suppress(Exception):
                self.fs.call_s3("delete_object", Bucket=self.bucket, Key=self.key, IfMatch=self.etag)
