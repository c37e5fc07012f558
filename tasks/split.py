"""split task: seeded train/val/test over all domain sources."""

from __future__ import annotations

import polars as pl
from prefect.artifacts import create_table_artifact

import mixtune.prepare.split as core
from mixtune.storage.artifacts import ArtifactRef, ArtifactStore
from mixtune.sections import SplitConfig, StorageConfig
from mixtune.tasks._names import field, task_run_namer
from mixtune.tasks._stage import current_key, stage_task


@stage_task("split", core, run_name=task_run_namer(
    "split", lambda p: ", ".join(field(ref, "name") for ref in p["validated"])))
def split(validated: list[ArtifactRef], cfg: SplitConfig, storage: StorageConfig) -> ArtifactRef:
    """Groups and identical prompts never cross splits; the assignment is recorded per row."""
    store = ArtifactStore(storage)
    if (ref := store.find("split", "domain", key := current_key())) is not None:
        return ref
    # _row_id restarts per source; `_source` keeps rows of several domain sources apart.
    frame = pl.concat([store.read_table(v).with_columns(_source=pl.lit(v.name)) for v in validated],
                      how="diagonal_relaxed")
    result = core.split(frame, cfg)
    ref = store.commit(
        stage="split", name="domain", key=key,
        tables={"train": result.train, "val": result.val, "test": result.test,
                "assignments": result.assignments},
        parents=validated, parameters={"split": cfg},
        rows_in=frame.height, rows_kept=frame.height,
    )
    create_table_artifact(
        key="split-counts",
        table=[{"split": s, "rows": ref.tables[s]} for s in ("train", "val", "test")],
        description="Rows per split of the domain data",
    )
    return ref
