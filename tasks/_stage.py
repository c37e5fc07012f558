"""Plumbing every stage task shares: one cache key, results under the storage root.

The cache key is a hash of the task's inputs (an ``ArtifactRef`` counts by its
fingerprint, not its location), its parameters, and the code version: the
source of the core ``mixtune`` modules it wraps plus the task's own lines.
Prefect's ``DEFAULT`` policy is not used: its RUN_ID would stop a sweep from
reusing prepared data, and TASK_SOURCE misses edits in ``mixtune/``.

Prefect keeps its result records (the small ``ArtifactRef`` each task returns)
in ``<storage root>/_prefect``, so a second run on another worker that shares
the root hits the same cache.
"""

from __future__ import annotations

import inspect
import re
from pathlib import Path
from types import ModuleType
from typing import Any, Callable

from prefect import Task, task
from prefect.context import TaskRunContext

from mixtune.storage.artifacts import ArtifactStore, code_version, fingerprint, storage_options
from mixtune.sections import StorageConfig

_VERSIONS: dict[str, str] = {}
_KEY_EXTRAS: dict[str, Callable[[dict[str, Any]], Any]] = {}
_NOT_IN_KEY: dict[str, tuple[str, ...]] = {}


def _key(name: str, parameters: dict[str, Any]) -> str:
    extra = _KEY_EXTRAS[name](parameters) if name in _KEY_EXTRAS else None
    keyed = {k: v for k, v in parameters.items() if k not in _NOT_IN_KEY.get(name, ())}
    return f"{name}-{fingerprint(name, _VERSIONS[name], keyed, extra)}"


def stage_task(
    name: str,
    *core_modules: ModuleType,
    key_extra: Callable[[dict[str, Any]], Any] | None = None,
    not_in_key: tuple[str, ...] = (),
    retries: int = 0,
    retry_delay_seconds: list[float] | None = None,
) -> Callable[[Callable[..., Any]], Task]:
    """Make a Prefect task of a stage function with mixtune's cache key.

    ``key_extra`` adds what the parameters alone do not say, e.g. the size and
    mtime of a file at a fixed path, so new data at the same URI re-runs.
    ``not_in_key`` names parameters that say where to report (an MLflow run
    id), not what to compute.
    """

    def wrap(fn: Callable[..., Any]) -> Task:
        _VERSIONS[name] = code_version(*core_modules) + fingerprint(inspect.getsource(fn))[:16]
        if key_extra is not None:
            _KEY_EXTRAS[name] = key_extra
        _NOT_IN_KEY[name] = not_in_key
        return task(
            fn,
            name=name,
            cache_key_fn=lambda _ctx, parameters: _key(name, parameters),
            persist_result=True,
            # Stages log through the run logger. Captured prints also break `datasets`, whose
            # dill hashing reads dis.dis output from stdout (a flow's log_prints would steal it).
            log_prints=False,
            retries=retries,
            retry_delay_seconds=retry_delay_seconds or 0,
        )

    return wrap


def current_key() -> str:
    """The running stage's cache key; names the artifact folder it writes."""
    ctx = TaskRunContext.get()
    if ctx is None:
        raise RuntimeError("current_key() is only meaningful inside a running stage task")
    return _key(ctx.task.name, ctx.parameters)


def artifact_key(text: str) -> str:
    """A Prefect artifact key (lowercase letters, digits, dashes) from any name."""
    return re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")


def result_storage_for(storage: StorageConfig) -> Path | str:
    """Where Prefect keeps result records: a folder, or a saved block for S3.

    An S3 root is saved as a ``RemoteFileSystem`` block holding only the path,
    endpoint and region; keys stay in the environment (a block stores its
    settings in plain text in the Prefect database).
    """
    store = ArtifactStore(storage)
    if store.is_local:
        return Path(store.root) / "_prefect"
    from prefect.filesystems import RemoteFileSystem

    block_name = f"mixtune-{fingerprint(storage)[:12]}"
    RemoteFileSystem(
        basepath=store.uri("_prefect"), settings=storage_options(storage)
    ).save(block_name, overwrite=True)
    return f"remote-file-system/{block_name}"


def bind(storage: StorageConfig, *tasks: Task) -> list[Task]:
    """The given tasks with their results kept under this run's storage root."""
    result_storage = result_storage_for(storage)
    return [t.with_options(result_storage=result_storage) for t in tasks]
