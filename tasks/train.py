"""train task: a manifest and a base model in, an adapter (or full weights) out."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import polars as pl
from prefect import get_run_logger
from prefect.artifacts import create_progress_artifact, update_progress_artifact

import mixtune.train.job as job_core
import mixtune.train.loop as core
from mixtune.children import die_with_parent
from mixtune.storage.artifacts import ArtifactRef, ArtifactStore
from mixtune.train.launch import build_launch
from mixtune.sections import ModelConfig, StorageConfig
from mixtune.train.checkpoints import upload_checkpoints
from mixtune.train.config import TrainConfig
from mixtune.tasks._names import task_run_namer
from mixtune.tasks._stage import current_key, stage_task
from mixtune.mix.sources import heldout_sources, training_sources
from mixtune.train.forgetting import BASE_ANSWERS
from mixtune.models import model_path as local_model_path


def _write_inputs(store: ArtifactStore, split: ArtifactRef, categories: dict[str, list[ArtifactRef]],
                  manifest: ArtifactRef, base_answers: ArtifactRef | None, val_rows: int | None, work: Path) -> dict:
    """Local Parquet files for the job: each source's train rows, the schedule, val and held-out rows."""
    columns = ["_row_id", "messages"]
    paths, source_categories = {}, {}
    for name, category, rows, _ in training_sources(store, split, categories, columns):
        paths[name], source_categories[name] = str(work / f"train-{name}.parquet"), category
        rows.write_parquet(paths[name])
    store.read_table(manifest, "schedule").write_parquet(work / "manifest.parquet")
    val = store.read_table(split, "val").select(columns)
    (val.head(val_rows) if val_rows else val).write_parquet(work / "val.parquet")
    heldout = heldout_sources(store, split, categories, columns)
    if base_answers is not None:
        heldout[BASE_ANSWERS] = store.read_table(base_answers, "answers").select(columns)
    heldout_paths = {}
    for name, rows in heldout.items():
        heldout_paths[name] = str(work / f"heldout-{name}.parquet")
        rows.write_parquet(heldout_paths[name])
    return {"train_paths": paths, "source_categories": source_categories, "heldout_paths": heldout_paths,
            "manifest_path": str(work / "manifest.parquet"), "val_path": str(work / "val.parquet")}


@stage_task("train", core, job_core, not_in_key=("mlflow",), run_name=task_run_namer("train", lambda p: p["name"]))
def train(name: str, model: ModelConfig, manifest: ArtifactRef, split: ArtifactRef,
          categories: dict[str, list[ArtifactRef]], cfg: TrainConfig, storage: StorageConfig,
          mlflow: job_core.MlflowTarget | None = None, base_answers: ArtifactRef | None = None) -> ArtifactRef:
    """Trains in the manifest's order; a re-run after a crash resumes from the last checkpoint."""
    store = ArtifactStore(storage)
    if (ref := store.find("train", name, key := current_key())) is not None:
        return ref
    uri = store.artifact_uri("train", name, key)
    checkpoints_uri = store.uri("checkpoints", f"{name}-{key[:16]}")
    with tempfile.TemporaryDirectory(prefix="mixtune-train-") as tmp:
        work = Path(tmp)
        # A local root trains in place; a remote one trains locally and uploads.
        out_dir = Path(uri) if store.is_local else work / "out"
        ckpt_dir = Path(checkpoints_uri) if store.is_local else work / "checkpoints"
        if not store.is_local and store.exists(checkpoints_uri):
            store.get_dir(checkpoints_uri, str(ckpt_dir))  # resume where a crashed worker stopped
        job = job_core.TrainJob(
            model_path=local_model_path(model, storage), revision=model.revision,
            trust_remote_code=model.trust_remote_code, cfg=cfg,
            output_dir=str(out_dir / ("adapter" if cfg.method == "lora" else "model")),
            checkpoint_dir=str(ckpt_dir), mlflow=mlflow,
            data_fingerprints={r.name: r.fingerprint for refs in categories.values() for r in refs}
            | {"domain-split": split.fingerprint},
            **_write_inputs(store, split, categories, manifest, base_answers, cfg.val_rows, work),
        )
        summary = _run(job, work, store, checkpoints_uri)
        if not store.is_local:
            store.put_dir(str(out_dir), uri)
            upload_checkpoints(store, ckpt_dir, checkpoints_uri, cfg.checkpoints_kept)
    steps = pl.DataFrame({"step": range(1, len(summary["step_losses"]) + 1), "loss": summary["step_losses"]},
                         schema={"step": pl.Int64, "loss": pl.Float64})
    get_run_logger().info("train %s: %d steps, final loss %.4f, val loss %s", name, summary["final_step"],
                          summary["step_losses"][-1] if summary["step_losses"] else float("nan"), summary["val_loss"])
    if summary.get("truncated_examples"):  # counted in the manifest's result too
        get_run_logger().warning("train %s: %d examples cut to train.max_length %s; their cut answers were not "
                                 "supervised", name, summary["truncated_examples"], cfg.max_length)
    return store.commit(
        stage="train", name=name, key=key, tables={"losses": steps}, parents=[manifest, split],
        parameters={"train": cfg, "model": model}, rows_in=steps.height, rows_kept=steps.height,
        extra={"method": cfg.method, "result": summary, "checkpoints": checkpoints_uri,
               # A cached re-run logs no curve; its MLflow run links here instead.
               "mlflow_run_id": mlflow.run_id if mlflow else None},
    )


def _run(job: job_core.TrainJob, work: Path, store: ArtifactStore, checkpoints_uri: str) -> dict:
    """In this process on one device; one process per GPU through accelerate otherwise."""
    plan = build_launch("mixtune.train.job", [str(work / "job.json")])
    if plan.in_process:
        callbacks = [c for c in (_progress(job), _sync_checkpoints(job, store, checkpoints_uri)) if c]
        result = job_core.run_job(job, on_step_end=lambda report: [c(report) for c in callbacks])
        return job_core.result_summary(result)
    (work / "job.json").write_text(job.model_dump_json())
    get_run_logger().info("launching %d processes: %s", plan.world_size, " ".join(plan.argv))
    # This thread waits for the launcher, so PDEATHSIG (sent when this thread ends) fires only if we die.
    subprocess.run(plan.argv, check=True, stdout=sys.stdout, stderr=sys.stderr, preexec_fn=die_with_parent())
    return json.loads(Path(job.output_dir, "train_result.json").read_text())


def _progress(job: job_core.TrainJob):
    """Step, loss and ETA in the log every ``logging_steps``, and a progress bar in the Prefect UI."""
    total = len(pl.read_parquet(job.manifest_path, columns=["batch"])["batch"].unique())
    total = min(total, job.cfg.max_steps) if job.cfg.max_steps else total
    progress_id = create_progress_artifact(0.0, description=f"training {Path(job.output_dir).parent.name}")
    started, first_step = time.monotonic(), None
    logger = get_run_logger()

    def report(step: core.StepReport) -> None:
        nonlocal first_step
        first_step = step.step - 1 if first_step is None else first_step  # resumed runs start late
        if step.step % job.cfg.logging_steps and step.step != total:
            return
        per_step_s = (time.monotonic() - started) / max(step.step - first_step, 1)
        eta = timedelta(seconds=round(per_step_s * (total - step.step)))
        logger.info("train step %d/%d, loss %.4f, ETA %s", step.step, total, step.loss, eta)
        update_progress_artifact(progress_id, 100.0 * step.step / total)

    return report


def _sync_checkpoints(job: job_core.TrainJob, store: ArtifactStore, checkpoints_uri: str):
    """Copies each new checkpoint to a remote root (marker last, pruned to ``checkpoints_kept``),
    so another worker can resume it."""
    every = job.cfg.checkpoint_every_steps
    if store.is_local or not every:
        return None

    def sync(report: core.StepReport) -> None:
        if report.step % every == 0:
            upload_checkpoints(store, Path(job.checkpoint_dir), checkpoints_uri, job.cfg.checkpoints_kept)

    return sync
