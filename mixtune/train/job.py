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
import logging
import os
import sys
from pathlib import Path
from typing import Any

import polars as pl
from pydantic import BaseModel, Field

from mixtune.tracking import BufferedMetrics
from mixtune.train.config import TrainConfig
from mixtune.train.loop import TrainResult, train

log = logging.getLogger(__name__)


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
    heldout_paths: dict[str, str] = Field(default_factory=dict,
                                          description="held-out set name -> Parquet of rows no run trains on")
    cfg: TrainConfig
    output_dir: str
    checkpoint_dir: str
    data_fingerprints: dict[str, str] = Field(default_factory=dict)
    mlflow: MlflowTarget | None = None


UNSENT_METRICS = "mlflow_unsent_metrics.jsonl"  # beside the weights, when MLflow was down at the end


def mlflow_logger(target: MlflowTarget | None, unsent_path: str | Path) -> BufferedMetrics | None:
    """A ``log_metrics`` callback for one MLflow run that never blocks or fails training (``BufferedMetrics``);
    None when not tracking or not rank 0."""
    if target is None or int(os.environ.get("RANK", "0")) != 0:
        return None
    return BufferedMetrics(target.tracking_uri, target.run_id, unsent_path)


def run_job(job: TrainJob, on_step_end: Any = None) -> TrainResult:
    frames = {name: pl.read_parquet(path) for name, path in job.train_paths.items()}
    metrics = mlflow_logger(job.mlflow, Path(job.output_dir).parent / UNSENT_METRICS)
    try:
        return _train(job, frames, metrics, on_step_end)
    finally:
        if metrics is not None:
            unsent, error = metrics.close()
            if unsent:
                log.warning("MLflow at %s was unreachable (%s): %d metric values of run %s were not logged; "
                            "training went on and they are kept in %s", metrics.tracking_uri,
                            f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}",
                            unsent, metrics.run_id, metrics.unsent_path)


def _train(job: TrainJob, frames: dict[str, pl.DataFrame], log_metrics: Any, on_step_end: Any) -> TrainResult:
    return train(
        job.model_path, frames, pl.read_parquet(job.manifest_path), job.cfg, job.output_dir,
        val_frame=pl.read_parquet(job.val_path) if job.val_path else None,
        heldout_frames={name: pl.read_parquet(path) for name, path in job.heldout_paths.items()},
        source_categories=job.source_categories, checkpoint_dir=job.checkpoint_dir,
        log_metrics=log_metrics, on_step_end=on_step_end, revision=job.revision,
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
        "heldout_losses": {name: {str(step): loss for step, loss in curve.items()}
                           for name, curve in result.heldout_losses.items()},
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
