"""MLflow outages on a real `mlflow server`: down from the start is found in seconds naming the field;
gone mid-training, training goes on and the metrics it could not send are kept and reported."""

from __future__ import annotations

import json
import time
from pathlib import Path

import polars as pl
import pytest

from conftest import DEMO_CORPUS
from mixtune.errors import MixtuneError
from mixtune.sections import StorageConfig, TrackingConfig
from mixtune.tracking import mlflow_run
from mixtune.train.config import TrainConfig
from mixtune.train.job import UNSENT_METRICS, MlflowTarget, TrainJob, run_job
from mlflow_server import free_port, running_mlflow_server, stop_mlflow_server

STEPS, BATCH = 4, 4


def test_a_tracking_server_down_from_the_start_is_reported_in_seconds_naming_the_field(tmp_path):
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    tracking = TrackingConfig(mlflow_tracking_uri=url)
    started = time.monotonic()
    with pytest.raises(MixtuneError, match=r"tracking\.mlflow_tracking_uri: no MLflow server answers at "):
        with mlflow_run(tracking, StorageConfig(root=str(tmp_path)), "run"):
            pass
    assert time.monotonic() - started < 15


def _job(tmp_path: Path, model_dir: Path, target: MlflowTarget) -> TrainJob:
    rows = [json.loads(line) for line in DEMO_CORPUS.read_text(encoding="utf-8").splitlines()[:8]]
    frame = pl.DataFrame({"_row_id": list(range(len(rows))), "num_tokens": [0] * len(rows),
                          "messages": [[{"role": "user", "content": r["question"]},
                                        {"role": "assistant", "content": r["answer"][:200]}] for r in rows]})
    frame.write_parquet(tmp_path / "train-med.parquet")
    pl.DataFrame([(b, p, "med", (b * BATCH + p) % len(rows)) for b in range(STEPS) for p in range(BATCH)],
                 schema=["batch", "position", "source", "row_id"], orient="row").write_parquet(tmp_path / "m.parquet")
    cfg = TrainConfig(global_batch_size=BATCH, per_device_batch_size=BATCH, max_length=256, max_steps=STEPS,
                      logging_steps=1, checkpoint_every_steps=None, lora={"rank": 4, "alpha": 8})
    return TrainJob(model_path=str(model_dir), train_paths={"med": str(tmp_path / "train-med.parquet")},
                    source_categories={"med": "domain"}, manifest_path=str(tmp_path / "m.parquet"), cfg=cfg,
                    output_dir=str(tmp_path / "out" / "adapter"), checkpoint_dir=str(tmp_path / "ck"),
                    mlflow=target)


def test_training_survives_mlflow_stopped_mid_run_and_keeps_what_it_could_not_send(tmp_path, tiny_model_dir,
                                                                                   caplog):
    from mlflow.tracking import MlflowClient

    server_dir = tmp_path / "mlflow"
    server_dir.mkdir()
    with running_mlflow_server(server_dir) as url:
        client = MlflowClient(url)
        run_id = client.create_run(client.create_experiment("outage")).info.run_id
        job = _job(tmp_path, tiny_model_dir, MlflowTarget(tracking_uri=url, run_id=run_id))

        def outage_after_step_2(report):
            if report.step == 2:
                time.sleep(2)  # let steps 1-2 reach the server
                stop_mlflow_server(url)

        with caplog.at_level("WARNING", logger="mixtune.train.job"):
            result = run_job(job, on_step_end=outage_after_step_2)

    assert result.final_step == STEPS  # the outage cost no training
    assert (tmp_path / "out" / "adapter" / "adapter_model.safetensors").exists()
    unsent_file = tmp_path / "out" / UNSENT_METRICS
    unsent = [json.loads(line) for line in unsent_file.read_text().splitlines()]
    unsent_steps = {m["step"] for m in unsent if m["key"] == "train/loss"}
    assert {3, 4} <= unsent_steps and 1 not in unsent_steps
    assert str(unsent_file) in caplog.text and "unreachable" in caplog.text
    # The server back on the same store: what was sent before the outage is there, the rest is in the file.
    with running_mlflow_server(server_dir) as url:
        sent_steps = {m.step for m in MlflowClient(url).get_metric_history(run_id, "train/loss")}
    assert 1 in sent_steps and 4 not in sent_steps
    assert sent_steps | unsent_steps == set(range(1, STEPS + 1))
