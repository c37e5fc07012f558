"""Which MLflow run a mixtune process writes to, and what a run left behind by a dead process becomes.

Every run mixtune starts or resumes carries the identity of the process that
holds it: ``mixtune.host`` (``socket.gethostname()``), ``mixtune.pid`` and,
on Linux, ``mixtune.pid_start`` (the process start time in clock ticks since
boot, from ``/proc/<pid>/stat``, so a recycled pid is not taken for the
process that died). A process killed by SIGKILL never ends its runs; before
mixtune starts a run it sets every RUNNING run of the experiment that names
this host and a process that is gone to KILLED (``close_stale_runs``). Runs of
other hosts are left alone: from here nobody can tell whether their process
lives.

Nothing here imports Prefect; the functions take an ``MlflowClient``.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
from pathlib import Path
from typing import Any

HOST_TAG = "mixtune.host"
PID_TAG = "mixtune.pid"
PID_START_TAG = "mixtune.pid_start"
# Bump when what a key covers or how a run's params are written changes (v2: rounded floats, catalog
# cut to names), so a re-run never resumes a run whose params it would log differently: MLflow refuses that.
_RUN_KEY_VERSION = "mixtune-run-key-v2"


def _process_start(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (``/proc/<pid>/stat`` field 22); None off Linux
    or when the process is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may hold spaces: split after its last ')'.
    fields = stat.rsplit(")", 1)[-1].split()
    return fields[19] if len(fields) > 19 else None


def identity_tags() -> dict[str, str]:
    """Tags naming the process that holds a run: host, pid and (on Linux) the pid's start time."""
    tags = {HOST_TAG: socket.gethostname(), PID_TAG: str(os.getpid())}
    if (started := _process_start(os.getpid())) is not None:
        tags[PID_START_TAG] = started
    return tags


def process_alive(pid: int, started: str | None = None) -> bool:
    """Whether process ``pid`` of this host runs, and is the one that started at ``started`` when given."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process: it exists
    except OverflowError:
        return False
    if started is None:
        return True
    now = _process_start(pid)
    return now is None or now == started  # a different start time: the pid was given to a new process


def held_by_live_process(run: Any, host: str | None = None) -> bool:
    """Whether a RUNNING run's identity tags name a process of this host that still runs.

    False for a run without mixtune's tags or with another host's name: those
    are never judged from here.
    """
    tags = run.data.tags
    pid = tags.get(PID_TAG, "")
    if tags.get(HOST_TAG) != (host or socket.gethostname()) or not pid.isdigit():
        return False
    return process_alive(int(pid), tags.get(PID_START_TAG))


def _runs(client: Any, experiment_id: str, filter_string: str, order_by: list[str] | None = None) -> list[Any]:
    """Every matching run, all pages (MLflow returns at most 1000 at a time)."""
    runs, page_token = [], None
    while True:
        page = client.search_runs([experiment_id], filter_string, max_results=1000, order_by=order_by,
                                  page_token=page_token)
        runs += list(page)
        if not page.token:
            return runs
        page_token = page.token


def close_stale_runs(client: Any, experiment_id: str) -> list[str]:
    """Set to KILLED every RUNNING run of the experiment that this host started in a process now gone.

    Returns the closed run ids. A run of a live process, a run of another host
    and a run without mixtune's identity tags stay as they are.
    """
    host, closed = socket.gethostname(), []
    for run in _runs(client, experiment_id, "attributes.status = 'RUNNING'"):
        tags = run.data.tags
        if tags.get(HOST_TAG) != host or not tags.get(PID_TAG, "").isdigit():
            continue
        if not held_by_live_process(run, host):
            client.set_terminated(run.info.run_id, "KILLED")
            closed.append(run.info.run_id)
    return closed


# --- the same run again: keyed by content ---

RUN_KEY_TAG = "mixtune.run_key"


def run_key(*parts: Any) -> str:
    """sha256 hex of JSON-able ``parts`` (keys sorted): the same parts, the same key, in any process.

    The pipeline keys its parent run by (``"pipeline"``, resolved config dump,
    data fingerprints), a sweep by (``"sweep"``, config dump, mix list, data
    fingerprints), a mix's child run by (``"mix"``, parent run id, mix name).
    """
    text = json.dumps([_RUN_KEY_VERSION, *parts], sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def find_run(client: Any, experiment_id: str, key: str) -> str | None:
    """The id of the experiment's oldest run tagged with ``key`` that no live process of this host holds.

    Finished, failed and killed runs count (a re-run after a crash resumes
    them); deleted runs do not. A RUNNING run held by another live process
    (the same config started twice at once) is skipped, so the two never write
    into one run. None when there is no such run.
    """
    if not all(c in "0123456789abcdef" for c in key):  # only run_key's hex goes into a filter string
        raise ValueError(f"not a run key: {key!r}")
    for run in _runs(client, experiment_id, f"tags.`{RUN_KEY_TAG}` = '{key}'", ["attributes.start_time ASC"]):
        held_by_other = (run.info.status == "RUNNING" and held_by_live_process(run)
                         and run.data.tags.get(PID_TAG) != str(os.getpid()))
        if not held_by_other:
            return run.info.run_id
    return None


# --- a cached training's curves, in the run that reused it ---

TRAINING_CURVES = ("train/", "val/", "heldout/")  # what the training loop logs (mixtune/train/loop.py)
_MAX_METRICS_PER_BATCH = 1000  # MLflow's cap on one log_batch


def copy_training_curves(client: Any, from_run_id: str, to_run_id: str) -> int:
    """Copy the training curves of ``from_run_id`` into ``to_run_id``, each value with its step and timestamp.

    For a run whose training was a cache hit: the training loss, per-source
    and per-category losses, ``val/loss`` and the ``heldout/*`` forgetting
    curves (keys starting with ``TRAINING_CURVES``) of the run that trained,
    so the runs table and charts show every mix's curves side by side.
    Idempotent: a value the target already holds (same key, step, timestamp
    and value) is not copied again. Returns the number of values copied.
    Raises ``MlflowException`` when either run does not exist.
    """
    from mlflow.entities import Metric

    keys = sorted(k for k in client.get_run(from_run_id).data.metrics if k.startswith(TRAINING_CURVES))
    held = client.get_run(to_run_id).data.metrics
    copied: list[Metric] = []
    for key in keys:
        have = ({(m.step, m.timestamp, m.value) for m in client.get_metric_history(to_run_id, key)}
                if key in held else set())
        copied += [Metric(key, m.value, m.timestamp, m.step) for m in client.get_metric_history(from_run_id, key)
                   if (m.step, m.timestamp, m.value) not in have]
    for start in range(0, len(copied), _MAX_METRICS_PER_BATCH):
        client.log_batch(to_run_id, metrics=copied[start:start + _MAX_METRICS_PER_BATCH])
    return len(copied)
