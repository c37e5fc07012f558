"""One training job as a file, so it runs the same in this process or under a launcher.

The train task writes a ``TrainJob`` (local Parquet paths, the config, where to
write) to JSON. On one device it calls ``run_job`` directly; with several GPUs
it starts ``python -m mixtune.train.job JOB.json`` once per GPU through
``accelerate launch`` (see ``mixtune.train.launch``), and every rank reads the same
job. Only rank 0 logs metrics to MLflow.

    python -m mixtune.train.job job.json
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import polars as pl
from pydantic import BaseModel, Field

from mixtune.train.config import TrainConfig
from mixtune.train.loop import TrainResult, train


class MlflowTarget(BaseModel):
    tracking_uri: str
    run_id: str


class TrainJob(BaseModel):
    model_path: str
    revision: str | None = None
    trust_remote_code: bool = False
    train_paths: dict[str, str] = Field(description="source name -> Parquet of its train rows")
    source_categories: dict[str, str]
    manifest_path: str
    val_path: str | None = None
    cfg: TrainConfig
    output_dir: str
    checkpoint_dir: str
    data_fingerprints: dict[str, str] = Field(default_factory=dict)
    mlflow: MlflowTarget | None = None


def mlflow_logger(target: MlflowTarget | None):
    """A ``log_metrics`` callback writing to one MLflow run; None when not tracking or not rank 0."""
    if target is None or int(os.environ.get("RANK", "0")) != 0:
        return None
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    client = MlflowClient(target.tracking_uri)

    def log(step: int, metrics: dict[str, float]) -> None:
        now = int(time.time() * 1000)
        batch = [Metric(key, float(value), now, step) for key, value in metrics.items()]
        for start in range(0, len(batch), 1000):  # MLflow's per-request cap
            client.log_batch(target.run_id, metrics=batch[start:start + 1000])

    return log


def run_job(job: TrainJob, on_step_end: Any = None) -> TrainResult:
    frames = {name: pl.read_parquet(path) for name, path in job.train_paths.items()}
    return train(
        job.model_path, frames, pl.read_parquet(job.manifest_path), job.cfg, job.output_dir,
        val_frame=pl.read_parquet(job.val_path) if job.val_path else None,
        source_categories=job.source_categories, checkpoint_dir=job.checkpoint_dir,
        log_metrics=mlflow_logger(job.mlflow), on_step_end=on_step_end, revision=job.revision,
        trust_remote_code=job.trust_remote_code, data_fingerprints=job.data_fingerprints,
    )


def result_summary(result: TrainResult) -> dict[str, Any]:
    """The JSON-able part of a result; what a launched job hands back to the task."""
    return {
        "final_step": result.final_step, "val_loss": result.val_loss,
        "step_losses": result.step_losses, "resumed_from_step": result.resumed_from_step,
        "samples_per_source": result.samples_per_source, "tokens_per_source": result.tokens_per_source,
        "trainable_parameters": result.trainable_parameters, "total_parameters": result.total_parameters,
        "tokens_per_s": result.tokens_per_s, "real_token_share": result.real_token_share,
        "truncated_examples": result.truncated_examples,
    }


def main(argv: list[str] | None = None) -> int:
    (job_path,) = argv if argv is not None else sys.argv[1:]
    job = TrainJob.model_validate_json(Path(job_path).read_text())
    result = run_job(job)
    if int(os.environ.get("RANK", "0")) == 0:
        Path(job.output_dir, "train_result.json").write_text(json.dumps(result_summary(result), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
