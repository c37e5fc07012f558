"""Which MLflow run a process holds, on a real sqlite store: runs of a SIGKILLed process are closed on restart."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from mixtune.sections import StorageConfig, TrackingConfig
from mixtune.tracking import mlflow_run
from mixtune.tracking_runs import HOST_TAG, PID_TAG

# A mixtune process that opens a parent and a child run, says their ids, then waits to be killed.
_HOLDER = textwrap.dedent("""
    import sys, time
    from mixtune.sections import StorageConfig, TrackingConfig
    from mixtune.tracking import mlflow_run

    tracking = TrackingConfig(mlflow_tracking_uri=sys.argv[1], experiment="t-stale")
    storage = StorageConfig(root=sys.argv[2])
    with mlflow_run(tracking, storage, "held") as parent:
        with mlflow_run(tracking, storage, "held-child", parent_run_id=parent.info.run_id) as child:
            print(parent.info.run_id, child.info.run_id, flush=True)
            time.sleep(600)
""")


def _start_holder(uri: str, root: Path) -> tuple[subprocess.Popen, list[str]]:
    proc = subprocess.Popen([sys.executable, "-c", _HOLDER, uri, str(root)], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"})
    line = proc.stdout.readline()
    if not line:
        proc.kill()
        raise RuntimeError(f"the run-holding process exited with {proc.wait()}")
    return proc, line.split()


@pytest.fixture
def store(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    return uri, TrackingConfig(mlflow_tracking_uri=uri, experiment="t-stale"), StorageConfig(root=str(tmp_path / "s"))


def test_runs_of_a_sigkilled_process_are_closed_as_killed_when_mixtune_starts_a_run(store):
    import mlflow

    uri, tracking, storage = store
    killed, killed_runs = _start_holder(uri, Path(storage.root))
    live, live_runs = _start_holder(uri, Path(storage.root))
    try:
        killed.send_signal(signal.SIGKILL)
        killed.wait(timeout=30)
        client = mlflow.MlflowClient(uri)
        held = client.get_run(killed_runs[0])
        assert held.info.status == "RUNNING"  # SIGKILL ends nothing
        assert held.data.tags[HOST_TAG] == socket.gethostname() and held.data.tags[PID_TAG] == str(killed.pid)

        with mlflow_run(tracking, storage, "restart") as run:
            assert run.data.tags[PID_TAG] == str(os.getpid())

        assert [client.get_run(r).info.status for r in killed_runs] == ["KILLED", "KILLED"]
        assert [client.get_run(r).info.status for r in live_runs] == ["RUNNING", "RUNNING"]  # its process lives
        assert client.get_run(run.info.run_id).info.status == "FINISHED"
    finally:
        live.kill()
        live.wait(timeout=30)
        killed.kill()


def test_a_running_run_of_another_host_is_left_alone(store):
    import mlflow
    from mlflow.entities import RunStatus

    uri, tracking, storage = store
    client = mlflow.MlflowClient(uri)
    experiment_id = client.create_experiment("t-stale")
    other = client.create_run(experiment_id, tags={HOST_TAG: "another-host", PID_TAG: "999999999"})
    untagged = client.create_run(experiment_id)  # not started by mixtune
    with mlflow_run(tracking, storage, "restart"):
        pass
    assert client.get_run(other.info.run_id).info.status == RunStatus.to_string(RunStatus.RUNNING)
    assert client.get_run(untagged.info.run_id).info.status == "RUNNING"


def test_a_recycled_pid_is_not_taken_for_the_process_that_died():
    from mixtune.tracking_runs import _process_start, process_alive

    started = _process_start(os.getpid())
    if started is None:
        pytest.skip("no /proc: only the pid is compared here")
    assert process_alive(os.getpid(), started)
    assert not process_alive(os.getpid(), str(int(started) + 1))  # same pid, another start: a new process
