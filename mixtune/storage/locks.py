"""One lock per artifact while it is computed, so runs sharing a root compute it once.

Two runs of one config started seconds apart both miss the cache (neither has
committed yet) and would both compute the same artifact into the same folder.
With the lock, the second one waits, then finds the first one's committed
artifact (``ArtifactStore.find``) and uses it.

A lock is named by the stage and the artifact's content key, under
``<root>/_locks/<stage>/<key[:16]>.lock``, and taken with an OS file lock
(``filelock``: ``flock`` on POSIX, never the soft marker-file fallback). The
kernel releases it when its holder exits, SIGKILL and OOM kill included, so a
lock file left behind by a dead run is just an empty file: the next run takes
it at once.

Local roots only: an ``s3://`` root is not locked, so two workers that share
an S3 root may still compute one artifact at the same time. That wastes work
but tears nothing: tables and ``manifest.json`` are whole-object PUTs, the
manifest is written last, and both writers write the same content.
"""

from __future__ import annotations

import contextlib
import os
from typing import Callable, Iterator

from filelock import FileLock, Timeout

from mixtune.storage.artifacts import ArtifactStore

LOCKS = "_locks"


def lock_path(store: ArtifactStore, stage: str, key: str) -> str | None:
    """The lock file of one artifact, or None where the root is not local (not locked)."""
    if not store.is_local:
        return None
    return store.uri(LOCKS, stage, f"{key[:16]}.lock")


@contextlib.contextmanager
def artifact_lock(store: ArtifactStore, stage: str, key: str, *, label: str | None = None,
                  on_wait: Callable[[str], object] | None = None) -> Iterator[str | None]:
    """Hold the artifact's lock for the block; yields the lock's path (None: not locked).

    Blocks while another run (or thread) holds it, with no time limit: the
    holder is alive, since a dead holder's lock is already released. Calls
    ``on_wait`` once with "waiting for <label>: another run is computing it
    (lock <path>)" before it blocks.
    """
    path = lock_path(store, stage, key)
    if path is None:
        yield None
        return
    os.makedirs(os.path.dirname(path), exist_ok=True)
    # A marker file would outlive a killed holder and block every later run: OS locks only.
    lock = FileLock(path, fallback_to_soft=False)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        if on_wait is not None:
            on_wait(f"waiting for {label or stage}: another run is computing it (lock {path})")
        lock.acquire()
    try:
        yield path
    finally:
        lock.release()
