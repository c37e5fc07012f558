"""transform task: map a source's columns to Hugging Face chat ``messages``."""

from __future__ import annotations

import mixtune.prepare.transform as core
from mixtune.storage.artifacts import ArtifactRef, ArtifactStore
from mixtune.sections import SourceConfig, StorageConfig
from mixtune.tasks._names import field, task_run_namer
from mixtune.tasks._stage import current_key, stage_task


@stage_task("transform", core, run_name=task_run_namer("transform", lambda p: field(p["source"], "name")))
def transform(clean: ArtifactRef, source: SourceConfig, storage: StorageConfig) -> ArtifactRef:
    """Rows that cannot become a conversation go to ``rejects`` with a reason."""
    store = ArtifactStore(storage)
    if (ref := store.find("transform", source.name, key := current_key())) is not None:
        return ref
    frame = store.read_table(clean)
    result = core.transform(frame, source)
    return store.commit(
        stage="transform", name=source.name, key=key,
        tables={"data": result.frame, "rejects": result.rejects}, parents=[clean],
        parameters={"columns": source.columns, "system_prompt": source.system_prompt,
                    "system_column": source.system_column},
        rows_in=frame.height, rows_kept=result.frame.height, rows_rejected=result.rejects.height,
    )
