"""mix-manifest task: the exact training order for one mix, and the realized mix."""

from __future__ import annotations

import polars as pl
from prefect import get_run_logger
from prefect.artifacts import create_table_artifact

import mixtune.mix.manifest as core
import mixtune.mix.plan as plan_core
import mixtune.mix.spec as spec_core
import mixtune.mix.sources as sources_core
from mixtune.mix.sources import mix_sources
from mixtune.storage.artifacts import ArtifactRef, ArtifactStore
from mixtune.mix.spec import MixSpec
from mixtune.sections import StorageConfig
from mixtune.tasks._names import task_run_namer
from mixtune.tasks._stage import artifact_key, current_key, stage_task


@stage_task("mix-manifest", core, plan_core, spec_core, sources_core,
            run_name=task_run_namer("mix-manifest", lambda p: p["name"]))
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
