"""validate task: schema, roles, content, reserved strings, token length, duplicates."""

from __future__ import annotations

import polars as pl
from prefect import get_run_logger
from prefect.artifacts import create_table_artifact

import mixtune.prepare.sanitize as sanitize_core
import mixtune.prepare.validate as core
from mixtune.storage.artifacts import ArtifactRef, ArtifactStore
from mixtune.errors import RejectShareExceeded
from mixtune.sections import ModelConfig, SanitizeConfig, StorageConfig, ValidateConfig
from mixtune.tasks._names import field, task_run_namer
from mixtune.tasks._stage import artifact_key, current_key, stage_task
from mixtune.models import load_tokenizer


@stage_task("validate", core, run_name=task_run_namer("validate", lambda p: field(p["rows"], "name")))
def validate(rows: ArtifactRef, cfg: ValidateConfig, sanitize: SanitizeConfig, model: ModelConfig,
             storage: StorageConfig) -> ArtifactRef:
    """Fails the run when the reject share is over the limit; the rejects are written first."""
    store = ArtifactStore(storage)
    key = current_key()
    ref = store.find("validate", rows.name, key)
    if ref is None:
        frame = store.read_table(rows)
        tokenizer = load_tokenizer(model, storage)
        result = core.validate(frame, cfg, tokenizer, sanitize_core.reserved_strings(sanitize, tokenizer),
                               role_prefixes=sanitize.role_prefixes)
        # Earlier stages' rejects travel along so one table explains every lost row.
        rejects = pl.concat([store.read_table(rows, "rejects"), result.rejects], how="vertical_relaxed")
        ref = store.commit(
            stage="validate", name=rows.name, key=key,
            tables={"data": result.frame, "rejects": rejects}, parents=[rows],
            parameters={"validate": cfg}, rows_in=rows.rows_in,
            rows_kept=result.frame.height, rows_rejected=rejects.height,
            extra={"reasons": result.reasons, "truncated": result.truncated,
                   "tokens": int(result.frame["num_tokens"].sum() or 0)},
        )
    manifest = store.manifest(ref)
    reasons = manifest["reasons"]
    if manifest.get("truncated"):  # counted in the manifest; each cut answer keeps its end-of-turn token
        get_run_logger().warning("validate %s: %d rows had their final answer cut to validate.max_length %d "
                                 "(on_too_long: truncate)", rows.name, manifest["truncated"], cfg.max_length)
    create_table_artifact(
        key=artifact_key(f"validate-rejects-{rows.name}"),
        table=[{"reason": r, "rows": n} for r, n in sorted(reasons.items())] or [{"reason": "-", "rows": 0}],
        description=f"`{rows.name}`: {ref.rows_kept} kept, {ref.rows_rejected} rejected of {ref.rows_in}",
    )
    if core.reject_share_exceeded(ref.rows_in, ref.rows_rejected, cfg.max_reject_percent):
        raise RejectShareExceeded(rows.name, ref.rows_in, ref.rows_rejected, cfg.max_reject_percent,
                                  reasons, f"{ref.uri}/rejects")
    return ref
