"""mix-manifest task: the exact training order for one mix, and the realized mix."""

from __future__ import annotations

from typing import Iterator

import polars as pl
from prefect import get_run_logger
from prefect.artifacts import create_table_artifact

import mixtune.manifest as core
import mixtune.mix_plan as plan_core
import mixtune.mix_spec as spec_core
from mixtune.artifacts import ArtifactRef, ArtifactStore, fingerprint
from mixtune.mix_spec import DOMAIN, MixSpec
from mixtune.sections import StorageConfig
from mixtune.train_config import TrainConfig
from tasks._stage import artifact_key, current_key, stage_task


def training_sources(store: ArtifactStore, split: ArtifactRef, categories: dict[str, list[ArtifactRef]],
                     columns: list[str]) -> Iterator[tuple[str, str, pl.DataFrame, str]]:
    """(name, category, rows, fingerprint) of every source training draws from.

    Each domain source's train split, and each category source whole. The
    manifest and the train job both read this, so a row id the manifest plans
    is always a row the job has.
    """
    train = store.read_table(split, "train").select("_source", *columns)
    for (name,), rows in sorted(train.partition_by("_source", as_dict=True).items()):
        yield name, DOMAIN, rows.drop("_source"), fingerprint(split.fingerprint, name)
    for category, refs in sorted(categories.items()):
        for ref in refs:
            yield ref.name, category, store.read_table(ref).select(columns), ref.fingerprint


def mix_sources(store: ArtifactStore, split: ArtifactRef,
                categories: dict[str, list[ArtifactRef]]) -> list[core.MixSource]:
    """Every training source's row ids and token counts, as the manifest builder takes them."""
    return [core.MixSource(name=name, category=category, frame=rows, fingerprint=fp)
            for name, category, rows, fp in training_sources(store, split, categories, ["_row_id", "num_tokens"])]


def run_size(train: TrainConfig) -> dict[str, float | int | None]:
    """max_steps x global batch, else epochs over the domain train rows (default one)."""
    if train.max_steps is not None:
        return {"global_batch_size": train.global_batch_size, "max_steps": train.max_steps, "epochs": None}
    return {"global_batch_size": train.global_batch_size, "max_steps": None, "epochs": train.epochs or 1.0}


@stage_task("mix-manifest", core, plan_core, spec_core)
def mix_manifest(name: str, split: ArtifactRef, categories: dict[str, list[ArtifactRef]], mix: MixSpec,
                 size: dict[str, float | int | None], storage: StorageConfig) -> ArtifactRef:
    """Stratified batches: after any prefix each source is within one row of its exact share."""
    store = ArtifactStore(storage)
    if (ref := store.find("mix-manifest", name, key := current_key())) is None:
        sources = mix_sources(store, split, categories)
        manifest = core.build_manifest(mix, sources, **size)
        planned = manifest.schedule.height
        ref = store.commit(
            stage="mix-manifest", name=name, key=key,
            tables={"schedule": manifest.schedule, "summary": manifest.summary},
            parents=[split, *(r for refs in categories.values() for r in refs)],
            parameters={"mix": mix, "size": size}, rows_in=planned, rows_kept=planned,
            extra={"warnings": manifest.warnings, "totals": manifest.totals},
        )
    summary = store.read_table(ref, "summary")
    for warning in store.manifest(ref)["warnings"]:
        get_run_logger().warning("mix %s: %s", name, warning)
    create_table_artifact(key=artifact_key(f"mix-realized-{name}"), table=_rows(summary),
                          description=f"Realized mix `{name}`: planned vs realized samples and tokens")
    return ref


def _rows(frame: pl.DataFrame) -> list[dict]:
    return [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()} for row in frame.to_dicts()]


def log_realized_mix(mlflow, manifest: ArtifactRef, storage: StorageConfig) -> None:
    """The realized mix on the active MLflow run: a param per source and category, and the table."""
    summary = ArtifactStore(storage).read_table(manifest, "summary")
    params = {}
    for row in summary.to_dicts():
        label = {"source": f"source.{row['source']}", "category": f"category.{row['category']}"}.get(row["level"], "total")
        for field in ("realized_samples", "realized_tokens", "realized_share"):
            params[f"realized_mix.{label}.{field.removeprefix('realized_')}"] = row[field]
    mlflow.log_params(params)
    mlflow.log_table(summary.to_pandas(), artifact_file="mix/realized_mix.json")
