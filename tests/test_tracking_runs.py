"""Which MLflow run a process holds, on a real sqlite store: runs of a SIGKILLed process are closed on restart."""

from __future__ import annotations

import json
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


# --- the pipeline flow run again: its MLflow runs are reused ---

REPO = Path(__file__).resolve().parents[1]


def _pipeline_config(tmp_path: Path, **eval_overrides):
    import yaml

    from mixtune.config import load_config
    from test_prepare_flow import demo_like_config, write_domain_rows

    data = write_domain_rows(tmp_path / "med.jsonl", rows=40)
    raw = demo_like_config(tmp_path, data, mix={"domain_percent": 100},
                           split={"group_column": "focus", "train": 0.6, "val": 0.1, "test": 0.3},
                           train={"global_batch_size": 4, "per_device_batch_size": 4, "max_steps": 2,
                                  "logging_steps": 1, "eval_every_steps": 1},
                           eval={"offline": True, "device": "cpu", "dtype": "float32",
                                 "general_tasks": [{"name": "arc_challenge", "limit": 2, "max_gen_toks": 4}],
                                 "domain": {"max_rows": 2, "max_new_tokens": 4}, **eval_overrides})
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(raw))
    return load_config(tmp_path / "run.yaml")


def _runs_of(cfg) -> list:
    import mlflow

    from mixtune.tracking import tracking_uri

    client = mlflow.MlflowClient(tracking_uri(cfg.tracking, cfg.storage))
    experiment = client.get_experiment_by_name(cfg.tracking.experiment)
    return client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"])


@pytest.fixture(scope="module")
def pipeline_reruns(tmp_path_factory, prefect_server):
    """The tiny-model pipeline run twice with the same config on one root, then once renamed (training cached)."""
    from mixtune.flows.pipeline import pipeline

    tmp = tmp_path_factory.mktemp("rerun")
    cfg = _pipeline_config(tmp)
    first = pipeline(cfg)
    runs_after_first = _runs_of(cfg)
    second = pipeline(cfg)
    runs_after_second = _runs_of(cfg)
    renamed = pipeline(cfg.model_copy(update={"name": "t-renamed"}))  # a new parent; the same training
    return cfg, first, second, runs_after_first, runs_after_second, renamed


def test_an_identical_pipeline_rerun_reuses_its_parent_and_child_runs(pipeline_reruns):
    import mlflow

    from mixtune.tracking import tracking_uri

    cfg, first, second, runs_after_first, runs, _ = pipeline_reruns
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert [r.info.run_id for r in runs] == [r.info.run_id for r in runs_after_first]
    assert len(parents) == 1 and second.mlflow_run_id == first.mlflow_run_id == parents[0].info.run_id
    assert [(r.info.run_name, r.data.tags["mlflow.parentRunId"]) for r in children] == [("d100", first.mlflow_run_id)]
    assert all(r.info.status == "FINISHED" for r in runs)
    # Params were logged twice with equal values (MLflow allows it); the table was not appended to itself.
    child = children[0]
    assert child.data.params["mix.domain_percent"] == "100.0" and "realized_mix.total.samples" in child.data.params
    client = mlflow.MlflowClient(tracking_uri(cfg.tracking, cfg.storage))
    table = json.loads(Path(client.download_artifacts(child.info.run_id, "mix/realized_mix.json",
                                                      str(Path(cfg.storage.root).parent))).read_text())
    assert table["data"] and len(table["data"]) == len({json.dumps(row) for row in table["data"]})
    # The training curve was logged once: the second run's train was a cache hit into the same run.
    losses = client.get_metric_history(child.info.run_id, "train/loss")
    assert sorted(m.step for m in losses) == [1, 2]


def test_the_saved_runs_view_shows_the_mixes_side_by_side_in_columns_they_have(pipeline_reruns):
    """The experiment keeps a runs-table view per sweep (MLflow's shared view state): every column it
    selects is a metric, tag or param the mix's child run really carries, and it filters to them."""
    import mlflow

    from mixtune.tracking import SHARED_VIEW_TAG_PREFIX, comparison_view_key, comparison_view_url, tracking_uri

    cfg, first, _, _, runs, _ = pipeline_reruns
    client = mlflow.MlflowClient(tracking_uri(cfg.tracking, cfg.storage))
    experiment = client.get_experiment_by_name(cfg.tracking.experiment)
    view = json.loads(experiment.tags[SHARED_VIEW_TAG_PREFIX + comparison_view_key(first.mlflow_run_id)])
    children = client.search_runs([experiment.experiment_id], view["searchFilter"])  # the UI's own filter
    assert [r.info.run_name for r in children] == ["d100"]
    data = children[0].data
    have = ({f"metrics.`{k}`" for k in data.metrics} | {f"tags.`{k}`" for k in data.tags}
            | {f"params.`{k}`" for k in data.params})
    assert view["selectedColumns"][:3] == ["tags.`verdict`", "tags.`recommended`", "tags.`checks_not_passed`"]
    assert any(c.startswith("metrics.`vs_base/") for c in view["selectedColumns"])
    assert set(view["selectedColumns"]) <= have
    # Sorted by the domain gain, not by start time: that would nest the mixes, collapsed, under the parent.
    assert view["orderByKey"].startswith("metrics.`vs_base/domain/") and view["orderByKey"] in have
    server = comparison_view_url("http://127.0.0.1:5000", experiment.experiment_id, first.mlflow_run_id)
    assert server.endswith(f"/runs?viewStateShareKey={comparison_view_key(first.mlflow_run_id)}")
    assert comparison_view_url(tracking_uri(cfg.tracking, cfg.storage), "1", "r") is None  # a file store


def test_a_cached_training_brings_its_curves_into_the_run_that_reused_it(pipeline_reruns):
    import mlflow

    from mixtune.tracking import tracking_uri

    cfg, first, _, _, _, renamed = pipeline_reruns
    client = mlflow.MlflowClient(tracking_uri(cfg.tracking, cfg.storage))
    assert renamed.mlflow_run_id != first.mlflow_run_id
    (trained,) = client.search_runs([client.get_run(first.mlflow_run_id).info.experiment_id],
                                    f"tags.mlflow.parentRunId = '{first.mlflow_run_id}'")
    (reused,) = client.search_runs([trained.info.experiment_id],
                                   f"tags.mlflow.parentRunId = '{renamed.mlflow_run_id}'")
    assert reused.data.tags["mixtune.trained_in_run"] == trained.info.run_id
    curves = sorted(k for k in trained.data.metrics if k.startswith(("train/", "heldout/")))
    assert "train/loss" in curves and any(k.startswith("heldout/") for k in curves)
    for key in curves:
        assert ([(m.step, m.value) for m in client.get_metric_history(reused.info.run_id, key)]
                == [(m.step, m.value) for m in client.get_metric_history(trained.info.run_id, key)]), key
    # The realized mix is the reusing run's own, as in the run that trained.
    shares = {k: v for k, v in trained.data.params.items() if k.startswith("realized_mix.")}
    assert shares and {k: reused.data.params[k] for k in shares} == shares


def test_copy_training_curves_copies_steps_once_and_leaves_evaluation_metrics(tmp_path):
    import mlflow
    from mlflow.entities import Metric

    from mixtune.tracking_runs import copy_training_curves

    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment_id = client.create_experiment("t-curves")
    trained, reused = (client.create_run(experiment_id).info.run_id for _ in range(2))
    logged = [Metric("train/loss", 2.0 - step / 10, 1000 + step, step) for step in range(1, 1201)]
    logged += [Metric("heldout/math/loss", 3.0, 5000, 0), Metric("heldout/math/loss", 2.5, 5001, 600),
               Metric("domain/rougeL", 0.4, 5002, 0)]
    for start in range(0, len(logged), 1000):
        client.log_batch(trained, metrics=logged[start:start + 1000])

    assert copy_training_curves(client, trained, reused) == 1202
    assert copy_training_curves(client, trained, reused) == 0  # a re-run adds nothing
    history = client.get_metric_history(reused, "train/loss")
    assert sorted((m.step, m.value) for m in history) == [(m.step, m.value) for m in logged[:1200]]
    assert [(m.step, m.value) for m in client.get_metric_history(reused, "heldout/math/loss")] == [(0, 3.0), (600, 2.5)]
    assert "domain/rougeL" not in client.get_run(reused).data.metrics  # evaluation is the run's own


# --- a run SIGKILLed mid-training, run again: the training resumes into the child run it started ---


def test_a_training_killed_mid_run_resumes_into_the_mlflow_run_it_started(tmp_path):
    import time

    import mlflow
    import yaml

    from mixtune.tracking import tracking_uri

    cfg = _pipeline_config(tmp_path)
    raw = yaml.safe_load((tmp_path / "run.yaml").read_text())
    raw["train"] |= {"max_steps": 400, "checkpoint_every_steps": 20, "logging_steps": 10, "eval_every_steps": None}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(raw))
    command = [sys.executable, "-m", "mixtune.cli", "run", str(tmp_path / "run.yaml")]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    env |= {"PREFECT_HOME": str(tmp_path / "prefect"), "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120"}

    first = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
    checkpoints = Path(cfg.storage.root) / "checkpoints"
    deadline = time.monotonic() + 240
    while not list(checkpoints.glob("*/step-*/complete.json")):  # killed once a checkpoint is whole
        assert first.poll() is None, "the first run ended before its first checkpoint"
        assert time.monotonic() < deadline, "no checkpoint within 240 s"
        time.sleep(0.1)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()

    client = mlflow.MlflowClient(tracking_uri(cfg.tracking, cfg.storage))
    experiment = client.get_experiment_by_name(cfg.tracking.experiment)
    (child,) = [r for r in client.search_runs([experiment.experiment_id]) if "mlflow.parentRunId" in r.data.tags]
    killed_at = max(m.step for m in client.get_metric_history(child.info.run_id, "train/loss"))
    assert killed_at < 400

    again = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    runs = client.search_runs([experiment.experiment_id])
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert [r.info.run_id for r in children] == [child.info.run_id]  # one child: the one training started in
    assert len(runs) == 2 and all(r.info.status == "FINISHED" for r in runs)
    steps = sorted({m.step for m in client.get_metric_history(child.info.run_id, "train/loss")})
    assert steps[-1] == 400 and killed_at in steps  # before the kill and after the resume, in one history
    assert set(range(10, 401, 10)) <= set(steps)
