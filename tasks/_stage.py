"""Plumbing every stage task shares: one cache key, results under the storage root.

The cache key is a hash of the task's inputs (an ``ArtifactRef`` counts by its
fingerprint, not its location), its parameters, the content of any model it
loads (``mixtune.models.model_identity``), and the code version: the source of
every ``mixtune`` module the task module imports, transitively, and the
versions of the libraries that shape its output (``mixtune.storage.code_identity``).
So an edit to ``mixtune/train/packing.py`` re-runs training, not data preparation.
The artifact's fingerprint is that hash without the storage section
(``content_key``), so it names content only; Prefect's cache key adds the
storage section, one more place-to-look on top.
Prefect's ``DEFAULT`` policy is not used: its RUN_ID would stop a sweep from
reusing prepared data, and TASK_SOURCE misses edits in ``mixtune/``.

While a stage computes, it holds its artifact's lock (``mixtune.storage.locks``):
a second run of the same config on the same root waits, then finds the
first run's committed artifact and uses it instead of computing it again.

Prefect keeps its result records (the small ``ArtifactRef`` each task returns)
in ``<storage root>/_prefect``, so a second run on another worker that shares
the root hits the same cache. A record whose artifact's manifest has since been
deleted or damaged is dropped, and the stage runs again.
"""

from __future__ import annotations

import functools
import logging
import re
from pathlib import Path
from types import ModuleType
from typing import Any, Callable

from prefect import Task, get_run_logger, task
from prefect.context import TaskRunContext

from mixtune.storage.artifacts import ArtifactRef, ArtifactStore, code_version, fingerprint, storage_options
from mixtune.storage.faults import storage_faults
from mixtune.storage.locks import artifact_lock
from mixtune.models import model_identity
from mixtune.sections import ModelConfig, StorageConfig


def stage_code_version(name: str) -> str:
    """A registered stage's code version, computed now from the source on disk."""
    # This module only makes keys; the modules it imports to do so do not shape any stage's output.
    return code_version(*_ROOTS[name], exclude=(__name__,))


class _CodeVersions(dict):
    """Stage name -> code version, computed on a stage's first key: parsing the closure costs ~0.1 s a stage."""

    def __missing__(self, name: str) -> str:
        self[name] = stage_code_version(name)
        return self[name]


_ROOTS: dict[str, tuple[str, ...]] = {}  # stage name -> the modules its code version starts from
_VERSIONS: dict[str, str] = _CodeVersions()
_KEY_EXTRAS: dict[str, Callable[[dict[str, Any]], Any]] = {}
_NOT_IN_KEY: dict[str, tuple[str, ...]] = {}


def content_key(name: str, parameters: dict[str, Any]) -> str:
    """The artifact's content fingerprint: inputs, parameters and code, never where it is stored.

    A storage section (root, endpoint, region, profile) says where to look, not
    what to compute, so it is left out: the same data, seed and config give the
    same fingerprint, hence the same shuffle seeds and the same model, on any root.
    """
    extra = _KEY_EXTRAS[name](parameters) if name in _KEY_EXTRAS else None
    keyed = {k: (None if isinstance(v, StorageConfig) else v)
             for k, v in parameters.items() if k not in _NOT_IN_KEY.get(name, ())}
    return f"{name}-{fingerprint(name, _VERSIONS[name], keyed, extra)}"


def _key(name: str, parameters: dict[str, Any]) -> str:
    """Prefect's cache key: the content key plus the storage it was written to (a place to look)."""
    storages = [v for v in parameters.values() if isinstance(v, StorageConfig)]
    return f"{content_key(name, parameters)}-{fingerprint(storages)[:12]}"


def stage_task(
    name: str,
    *core_modules: ModuleType,
    key_extra: Callable[[dict[str, Any]], Any] | None = None,
    not_in_key: tuple[str, ...] = (),
    retries: int = 0,
    retry_delay_seconds: list[float] | None = None,
    run_name: Callable[..., str] | None = None,
) -> Callable[[Callable[..., Any]], Task]:
    """Make a Prefect task of a stage function with mixtune's cache key.

    ``key_extra`` adds what the parameters alone do not say, e.g. the size and
    mtime of a file at a fixed path, so new data at the same URI re-runs.
    ``not_in_key`` names parameters that say where to report (an MLflow run
    id), not what to compute. ``run_name`` names each task run after what it
    works on (``mixtune.tasks._names.task_run_namer``).
    """

    def wrap(fn: Callable[..., Any]) -> Task:
        _ROOTS[name] = (fn.__module__, *(m.__name__ for m in core_modules))
        _VERSIONS.pop(name, None)
        _KEY_EXTRAS[name] = _with_model_identity(key_extra)
        _NOT_IN_KEY[name] = not_in_key
        return task(
            _locked(name, fn),
            name=name,
            cache_key_fn=lambda ctx, parameters: _forget_if_artifact_gone(ctx, parameters, _key(name, parameters)),
            persist_result=True,
            # Stages log through the run logger. Captured prints also break `datasets`, whose
            # dill hashing reads dis.dis output from stdout (a flow's log_prints would steal it).
            log_prints=False,
            retries=retries,
            retry_delay_seconds=retry_delay_seconds or 0,
            task_run_name=run_name,
        )

    return wrap


def _refs(value: Any) -> list[ArtifactRef]:
    """Every ArtifactRef in a task result (a ref, or lists and dicts of them)."""
    if isinstance(value, ArtifactRef):
        return [value]
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, (list, tuple)):
        return [ref for item in value for ref in _refs(item)]
    return []


def _forget_if_artifact_gone(ctx: TaskRunContext, parameters: dict[str, Any], key: str) -> str:
    """Prefect's cache key, after dropping a cached result that points at an artifact no longer whole.

    Prefect's record of a finished stage holds only the ``ArtifactRef``; the
    artifact is the folder it names. When that folder's manifest was deleted or
    damaged since (a cleanup, a torn copy), a cache hit would hand the next
    stage a ref to nothing. The record (``<root>/_prefect/<key>``, see
    ``result_storage_for``) is deleted instead, so the stage runs, finds no
    artifact (``ArtifactStore.find``) and computes it again.
    """
    storages = [v for v in parameters.values() if isinstance(v, StorageConfig)]
    result_store = getattr(ctx, "result_store", None)
    if not storages or result_store is None:
        return key
    try:
        if not result_store.exists(key):
            return key
        refs = _refs(result_store.read(key).result)
        store = ArtifactStore(storages[0])
        gone = [r for r in refs if store.find(r.stage, r.name, r.fingerprint) is None]
        record = store.uri("_prefect", key)
        if gone and store.exists(record):
            logging.getLogger(__name__).warning(
                "%s: the cached result points at %s, whose manifest is missing or damaged; computing it again",
                ctx.task.name, ", ".join(r.uri for r in gone))
            store.remove(record)
    except Exception:  # an unreadable record or an unreachable store: Prefect's lookup and the stage decide
        pass
    return key


def _locked(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    """The stage function, run while holding its artifact's lock (keyed by the content key).

    The stage's own ``store.find`` runs inside the lock, so a run that waited
    finds what the holder committed. A stage without a storage parameter has
    no artifact to lock. A storage fault (S3 unreachable, disk full or
    read-only under the root) leaves it as one ``StorageError`` naming the root
    (``mixtune.storage.faults``).
    """

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        ctx = TaskRunContext.get()
        storages = [v for v in ctx.parameters.values() if isinstance(v, StorageConfig)] if ctx else []
        if not storages:
            return fn(*args, **kwargs)
        key = content_key(name, ctx.parameters).removeprefix(f"{name}-")
        with storage_faults(storages[0]), artifact_lock(ArtifactStore(storages[0]), name, key,
                                                        label=ctx.task_run.name, on_wait=get_run_logger().info):
            return fn(*args, **kwargs)

    return run


def _with_model_identity(key_extra: Callable[[dict[str, Any]], Any] | None) -> Callable[[dict[str, Any]], Any]:
    """The stage's own key extra plus the weights' identity of every ModelConfig parameter.

    A config names a model by path or id; the identity (tiny corpus, GGUF hash, folder files) is
    what changes when the weights behind that name do.
    """

    def extra(parameters: dict[str, Any]) -> Any:
        models = [model_identity(v) for _, v in sorted(parameters.items()) if isinstance(v, ModelConfig)]
        own = key_extra(parameters) if key_extra is not None else None
        return own if not models else {"extra": own, "models": models}

    return extra


def current_key() -> str:
    """The running stage's content key (``content_key``); names the artifact folder it writes."""
    ctx = TaskRunContext.get()
    if ctx is None:
        raise RuntimeError("current_key() is only meaningful inside a running stage task")
    return content_key(ctx.task.name, ctx.parameters)


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
