"""sanitize task: strip role strings, reserved literals and special tokens from text."""

from __future__ import annotations

from prefect.artifacts import create_table_artifact

import mixtune.prepare.sanitize as core
from mixtune.storage.artifacts import ArtifactRef, ArtifactStore
from mixtune.sections import ModelConfig, SanitizeConfig, SourceConfig, StorageConfig
from mixtune.tasks._names import field, task_run_namer
from mixtune.tasks._stage import artifact_key, current_key, stage_task
from mixtune.models import load_tokenizer


@stage_task("sanitize", core, run_name=task_run_namer("sanitize", lambda p: field(p["source"], "name")))
def sanitize(raw: ArtifactRef, source: SourceConfig, cfg: SanitizeConfig, model: ModelConfig,
             storage: StorageConfig) -> ArtifactRef:
    """Vectorized rules over the mapped text columns; never drops a row, counts every hit."""
    store = ArtifactStore(storage)
    if (ref := store.find("sanitize", source.name, key := current_key())) is not None:
        return ref
    frame = store.read_table(raw)
    special = core.special_tokens_of(load_tokenizer(model, storage)) if cfg.strip_model_special_tokens else []
    result = core.sanitize(frame, cfg, core.text_columns_of(source), special)
    ref = store.commit(
        stage="sanitize", name=source.name, key=key, tables={"data": result.frame}, parents=[raw],
        parameters={"sanitize": cfg, "special_tokens": special},
        rows_in=frame.height, rows_kept=result.frame.height, extra={"hits": result.hits},
    )
    rows = [{"rule": rule, "column": col, "hits": n} for rule, cols in result.hits.items() for col, n in cols.items()]
    create_table_artifact(key=artifact_key(f"sanitize-hits-{source.name}"), table=rows or [{"rule": "-", "column": "-", "hits": 0}],
                          description=f"Sanitize hits per rule and column for source `{source.name}`")
    return ref
