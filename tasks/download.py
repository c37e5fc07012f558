"""download task: read one source and persist it with lineage columns."""

from __future__ import annotations

from typing import Any

from prefect import get_run_logger

import mixtune.prepare.download as core
import mixtune.prepare.formats as formats
from mixtune.storage.artifacts import ArtifactRef, ArtifactStore, fingerprint
from mixtune.sections import SourceConfig, StorageConfig
from mixtune.tasks._names import field, task_run_namer
from mixtune.tasks._stage import stage_task


def _input_identity(parameters: dict[str, Any]) -> str:
    """Size and mtime/ETag of what the URI points at now: new data re-runs download."""
    return core.stat_fingerprint(parameters["source"], parameters["storage"])


@stage_task("download", core, formats, key_extra=_input_identity, retries=2, retry_delay_seconds=[5, 30],
            run_name=task_run_namer("download", lambda p: field(p["source"], "name")))
def download(source: SourceConfig, storage: StorageConfig) -> ArtifactRef:
    """Read a file, folder, s3:// or https:// URI, or HF dataset; retried: it is network work."""
    store = ArtifactStore(storage)
    if (why := core.unpinned_revision(source)) is not None:
        get_run_logger().warning(why)
    result = core.download(source, storage)
    # Named by content, so a touched-but-identical file reuses everything downstream.
    key = fingerprint("download", source, result.content_fingerprint)
    if (ref := store.find("download", source.name, key)) is not None:
        return ref
    ref = store.commit(
        stage="download", name=source.name, key=key, tables={"data": result.frame},
        parameters={"source": source}, rows_in=result.frame.height, rows_kept=result.frame.height,
        extra={"content_fingerprint": result.content_fingerprint, "files": result.files},
    )
    get_run_logger().info("download %s: %d rows from %d file(s)", source.name, ref.rows_kept, len(result.files))
    return ref
