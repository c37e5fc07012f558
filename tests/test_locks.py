"""One lock per artifact: concurrent runs on one root compute it once, a dead holder blocks nobody."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import polars as pl
import pytest

from mixtune.sections import SourceConfig, StorageConfig
from mixtune.storage.artifacts import ArtifactStore
from mixtune.storage.locks import LEASE_S, artifact_lock, lock_path
from s3_server import S3_TEST_ENV, create_bucket, running_moto_process

REPO = Path(__file__).resolve().parents[1]
KEY = "ab" * 32

# One run's stage core: under the lock, find the artifact or compute it (2 s) and commit it.
_RUN = textwrap.dedent("""
    import json, os, sys, time
    import polars as pl
    from mixtune.sections import StorageConfig
    from mixtune.storage.artifacts import ArtifactStore
    from mixtune.storage.locks import artifact_lock

    root, endpoint, key, computed_log = sys.argv[1:5]
    store = ArtifactStore(StorageConfig(root=root, endpoint_url=endpoint or None))
    with artifact_lock(store, "probe", key, label="probe p", on_wait=lambda line: print(line, flush=True)):
        ref = store.find("probe", "p", key)
        if ref is None:
            with open(computed_log, "a") as f:
                f.write(f"{os.getpid()}\\n")
            time.sleep(2)
            ref = store.commit(stage="probe", name="p", key=key, tables={"data": pl.DataFrame({"x": [os.getpid()]})},
                               rows_in=1, rows_kept=1)
    print(json.dumps(ref.model_dump()), flush=True)
""")

# A holder that takes the lock and never lets go (until it is killed).
_HOLD = textwrap.dedent("""
    import sys, time
    from mixtune.sections import StorageConfig
    from mixtune.storage.artifacts import ArtifactStore
    from mixtune.storage.locks import artifact_lock

    root, endpoint, key, lease_s = sys.argv[1:5]
    store = ArtifactStore(StorageConfig(root=root, endpoint_url=endpoint or None))
    with artifact_lock(store, "probe", key, lease_s=float(lease_s)):
        print("held", flush=True)
        time.sleep(600)
""")


@pytest.fixture
def s3_root(tmp_path, monkeypatch):
    """A real S3 server process (moto) with a bucket; yields (root, endpoint)."""
    for name, value in S3_TEST_ENV.items():
        monkeypatch.setenv(name, value)
    with running_moto_process(tmp_path) as endpoint:
        create_bucket(endpoint, "locks")
        yield "s3://locks/store", endpoint


def _python(*args: str, **popen) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, *args], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, **popen)


def _two_runs_compute_once(root: str, endpoint: str, tmp_path: Path) -> None:
    computed_log = tmp_path / "computed.log"
    first = _python("-c", _RUN, root, endpoint, KEY, str(computed_log))
    time.sleep(0.5)  # imports take longer than that: the two start seconds apart at most, as two runs would
    second = _python("-c", _RUN, root, endpoint, KEY, str(computed_log))
    outputs = [p.communicate(timeout=120) for p in (first, second)]
    assert [p.returncode for p in (first, second)] == [0, 0], [err for _, err in outputs]

    assert len(computed_log.read_text().split()) == 1  # computed once, by one of them
    refs = [json.loads(out.strip().splitlines()[-1]) for out, _ in outputs]
    assert refs[0] == refs[1]
    waited = [line for out, _ in outputs for line in out.splitlines() if line.startswith("waiting for")]
    lock = lock_path(ArtifactStore(StorageConfig(root=root, endpoint_url=endpoint or None)), "probe", KEY)
    assert waited == [f"waiting for probe p: another run is computing it (lock {lock})"]


def test_locks_two_processes_compute_one_artifact_once(tmp_path):
    _two_runs_compute_once(str(tmp_path / "store"), "", tmp_path)


def test_locks_two_processes_compute_one_artifact_once_on_s3(tmp_path, s3_root):
    _two_runs_compute_once(*s3_root, tmp_path)


def _killed_holder_blocks_nobody_for_long(root: str, endpoint: str, lease_s: float, within_s: float) -> None:
    store = ArtifactStore(StorageConfig(root=root, endpoint_url=endpoint or None))
    holder = _python("-c", _HOLD, root, endpoint, KEY, str(lease_s))
    try:
        assert holder.stdout.readline().strip() == "held", holder.stderr.read()
        waits: list[str] = []
        acquired = threading.Event()

        def take() -> None:
            with artifact_lock(store, "probe", KEY, on_wait=waits.append, lease_s=lease_s):
                acquired.set()

        taker = threading.Thread(target=take, daemon=True)
        taker.start()
        assert not acquired.wait(1.0)  # held by a live process: it waits
        assert len(waits) == 1
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(timeout=10)
        assert store.exists(lock_path(store, "probe", KEY))  # the stale lock stays behind ...
        assert acquired.wait(within_s)  # ... and blocks nobody for long
        taker.join(timeout=30)  # released while the store is still up
    finally:
        holder.kill()
        holder.wait(timeout=10)


def test_locks_a_sigkilled_holder_blocks_nobody(tmp_path):
    # The kernel released the lock with its holder: taken at once.
    _killed_holder_blocks_nobody_for_long(str(tmp_path / "store"), "", LEASE_S, within_s=5.0)


def test_locks_a_sigkilled_holders_s3_lease_is_taken_over_after_one_lease(s3_root):
    # Not renewed since the kill: taken over once the waiter has seen it unchanged for a whole lease.
    _killed_holder_blocks_nobody_for_long(*s3_root, lease_s=3.0, within_s=3.0 + 10.0)


@pytest.mark.usefixtures("prefect_server")
def test_stage_task_waits_for_a_concurrent_run_and_reuses_its_artifact(tmp_path, monkeypatch):
    """Two flow runs of one stage at once, as two `mixtune run`s on one root: one computes, both get its ref."""
    from prefect import flow

    import mixtune.prepare.transform as transform_core
    from mixtune.tasks.transform import transform

    source = SourceConfig.model_validate({"name": "med", "uri": str(tmp_path / "rows.jsonl"), "columns": {
        "kind": "prompt_response", "prompt": "question", "response": "answer"}})
    storage = StorageConfig(root=str(tmp_path / "store"))
    rows = pl.DataFrame({"question": ["q1", "q2"], "answer": ["a1", "a2"],
                         "_source_file": ["rows.jsonl"] * 2, "_source_row": [0, 1]})
    clean = ArtifactStore(storage).commit(stage="sanitize", name="med", key="cd" * 32, tables={"data": rows},
                                          rows_in=2, rows_kept=2)
    computed = []
    real = transform_core.transform

    def slow_transform(*args, **kwargs):  # the real transform, counted and slow enough to overlap
        computed.append(threading.get_ident())
        time.sleep(3)
        return real(*args, **kwargs)

    monkeypatch.setattr(transform_core, "transform", slow_transform)

    @flow
    def one_run(clean, source: SourceConfig, storage: StorageConfig):
        return transform(clean, source, storage)

    refs = [None, None]

    def run(i: int) -> None:
        refs[i] = one_run(clean, source, storage)

    class Lines(logging.Handler):
        def __init__(self) -> None:
            super().__init__(logging.INFO)
            self.lines: list[str] = []

        def emit(self, record: logging.LogRecord) -> None:
            self.lines.append(record.getMessage())

    task_log = Lines()  # Prefect's task run logger does not propagate to the root (caplog)
    logging.getLogger("prefect.task_runs").addHandler(task_log)
    runs = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    try:
        for thread in runs:
            thread.start()
            time.sleep(0.5)
        for thread in runs:
            thread.join(timeout=120)
    finally:
        logging.getLogger("prefect.task_runs").removeHandler(task_log)
    assert len(computed) == 1
    assert refs[0] is not None and refs[0] == refs[1]
    lock = lock_path(ArtifactStore(storage), "transform", refs[0].fingerprint.removeprefix("transform-"))
    assert [line for line in task_log.lines if line.startswith("waiting for")] == [
        f"waiting for transform med: another run is computing it (lock {lock})"]


@pytest.mark.usefixtures("prefect_server")
@pytest.mark.parametrize("damage", ["truncated", "deleted"])
def test_stage_task_recomputes_a_cached_result_whose_manifest_was_damaged(tmp_path, monkeypatch, damage):
    """Prefect's record of a finished stage is only a ref: when its manifest is gone, the stage runs again."""
    from prefect import flow

    import mixtune.prepare.transform as transform_core
    from mixtune.tasks._stage import bind
    from mixtune.tasks.transform import transform

    source = SourceConfig.model_validate({"name": "med", "uri": str(tmp_path / "rows.jsonl"), "columns": {
        "kind": "prompt_response", "prompt": "question", "response": "answer"}})
    storage = StorageConfig(root=str(tmp_path / "store"))
    store = ArtifactStore(storage)
    rows = pl.DataFrame({"question": ["q1", "q2"], "answer": ["a1", "a2"],
                         "_source_file": ["rows.jsonl"] * 2, "_source_row": [0, 1]})
    clean = store.commit(stage="sanitize", name="med", key="ef" * 32, tables={"data": rows}, rows_in=2, rows_kept=2)
    computed = []
    real = transform_core.transform
    monkeypatch.setattr(transform_core, "transform", lambda *a, **k: computed.append(1) or real(*a, **k))

    @flow
    def one_run(clean, source: SourceConfig, storage: StorageConfig):
        [bound] = bind(storage, transform)  # results kept under the root, as the pipeline keeps them
        return bound(clean, source, storage)

    first = one_run(clean, source, storage)
    assert one_run(clean, source, storage) == first and len(computed) == 1  # a Prefect cache hit
    manifest = Path(first.uri) / "manifest.json"
    if damage == "truncated":  # a torn write, as a crash or a full disk leaves it
        manifest.write_bytes(manifest.read_bytes()[:40])
    else:
        manifest.unlink()

    again = one_run(clean, source, storage)
    assert len(computed) == 2
    assert again == first
    assert store.find("transform", "med", first.fingerprint) == first  # whole again
