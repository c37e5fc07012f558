"""base-answers task: the base model's greedy answers to held-out general prompts, once per base.

Every mix of a sweep asks for the same key (model weights, held-out rows,
generation length), so the base model answers once; training then logs the
tuned model's loss on these answers (``mixtune.train.forgetting``).
"""

from __future__ import annotations

from typing import Any

from prefect import get_run_logger

import mixtune.mix.sources as sources_core
import mixtune.train.forgetting as core
from mixtune.models import model_identity, model_path
from mixtune.sections import ModelConfig, StorageConfig
from mixtune.storage.artifacts import ArtifactRef, ArtifactStore
from mixtune.tasks._stage import current_key, stage_task

PROMPTS = 8  # held-out general prompts the base model answers
MAX_NEW_TOKENS = 64


def _model_inputs(parameters: dict[str, Any]) -> dict[str, Any]:
    return {"model": model_identity(parameters["model"])}


@stage_task("base-answers", core, sources_core, key_extra=_model_inputs)
def base_answers(model: ModelConfig, split: ArtifactRef, categories: dict[str, list[ArtifactRef]],
                 storage: StorageConfig) -> ArtifactRef:
    """Chat rows (prompt + the base model's answer) for the ``base_answers`` forgetting curve."""
    store = ArtifactStore(storage)
    if (ref := store.find("base-answers", "base", key := current_key())) is None:
        heldout = sources_core.heldout_sources(store, split, categories, ["messages"])
        prompts = core.general_prompts(heldout, PROMPTS)
        rows = core.base_answer_rows(model_path(model, storage), prompts, max_new_tokens=MAX_NEW_TOKENS,
                                     revision=model.revision, trust_remote_code=model.trust_remote_code)
        ref = store.commit(stage="base-answers", name="base", key=key, tables={"answers": rows},
                           parents=[split, *(r for refs in categories.values() for r in refs)],
                           parameters={"model": model, "prompts": PROMPTS, "max_new_tokens": MAX_NEW_TOKENS},
                           rows_in=len(prompts), rows_kept=rows.height)
    get_run_logger().info("base answers: %d held-out general prompts answered by the base model", ref.rows_kept)
    return ref
