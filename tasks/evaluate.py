"""evaluate tasks: the general axis (lm-eval) and the domain axis (held-out split), base or tuned.

``trained=None`` evaluates the base model. The cache key is the model config
(revision included, and the tiny model's corpus bytes), the eval config, the
offline benchmark files' bytes and, for a tuned model, the training
artifact's fingerprint; nothing about the mix or the run. So every mix of a
sweep asks for the same base key and the base model is evaluated once.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from prefect import get_run_logger
from prefect.artifacts import create_table_artifact

import mixtune.eval.domain as domain_core
import mixtune.eval.general as general_core
from mixtune.eval import benchmarks, judge
from mixtune.eval.config import EvalConfig
from mixtune.eval.scores import samples_table, scores_table
from mixtune.eval.under_test import BASE_RUN, eval_device, eval_dtype, model_under_test, run_name
from mixtune.models import model_identity
from mixtune.sections import ModelConfig, StorageConfig
from mixtune.storage.artifacts import ArtifactRef, ArtifactStore
from mixtune.tasks._names import field, task_run_namer
from mixtune.tasks._stage import artifact_key, current_key, stage_task

# --- cache key parts the parameters do not carry ---


def _model_identity(model: ModelConfig) -> str | None:
    """The weights' content where the config names them only by path (tiny corpus, GGUF file, folder)."""
    return model_identity(model)


def _files_fingerprint(files: list[Path], root: Path) -> str:
    digest = hashlib.sha256()
    for file in files:
        digest.update(str(file.relative_to(root) if file.is_relative_to(root) else file).encode())
        digest.update(file.read_bytes())
    return digest.hexdigest()


# Settings only compare reads: changing them re-judges, it does not re-evaluate.
_COMPARE_ONLY = {"tolerance", "domain_target", "instruction_following_prefixes"}


def _measured_settings(cfg: EvalConfig) -> dict[str, Any]:
    """The settings that shape scores, with the precision ``auto`` resolves to on this machine."""
    return cfg.model_dump(mode="json", exclude=_COMPARE_ONLY) | {"precision": precision(cfg)}


def precision(cfg: EvalConfig) -> dict[str, str]:
    """Device type and dtype an evaluation runs in here (``eval.device``/``eval.dtype`` resolved)."""
    device = eval_device(cfg.device)
    return {"device": device.split(":")[0], "dtype": eval_dtype(cfg.dtype, device)}


def _general_inputs(parameters: dict[str, Any]) -> dict[str, Any]:
    """Offline: the bytes of every benchmark file, so edited data re-runs; online: the mode only."""
    cfg: EvalConfig = parameters["eval_cfg"]
    offline = general_core.resolve_offline(cfg)
    data = None
    if offline and cfg.general_tasks:
        data_dir = Path(cfg.data_dir) if cfg.data_dir else benchmarks.PROJECT_DATA_DIR
        data = _files_fingerprint(benchmarks.offline_data_files(data_dir), data_dir)
    return {"model": _model_identity(parameters["model"]), "offline": offline, "data": data,
            "eval": _measured_settings(cfg)}


def _domain_inputs(parameters: dict[str, Any]) -> dict[str, Any]:
    return {"model": _model_identity(parameters["model"]), "eval": _measured_settings(parameters["eval_cfg"])}

# --- scores ---


def _publish_scores(ref: ArtifactRef, scores: dict[str, float], axis: str, name: str) -> None:
    create_table_artifact(
        key=artifact_key(f"eval-{axis}-{name}"),
        table=[{"metric": k, "value": round(v, 4)} for k, v in sorted(scores.items())] or [{"metric": "-", "value": 0}],
        description=f"{axis} scores of `{name}`; details in {ref.uri}",
    )


# --- the two axes ---


def _evaluated(trained: ArtifactRef | dict | None) -> str:
    """The run name an evaluation is for: ``base`` or the trained mix (a dict before validation)."""
    return BASE_RUN if trained is None else field(trained, "name")


@stage_task("eval_general", general_core, benchmarks, key_extra=_general_inputs, not_in_key=("eval_cfg",),
            run_name=task_run_namer("eval_general", lambda p: _evaluated(p["trained"])))
def evaluate_general(model: ModelConfig, trained: ArtifactRef | None, eval_cfg: EvalConfig,
                     storage: StorageConfig) -> ArtifactRef:
    """lm-eval benchmarks on the base (``trained=None``) or a trained model; scores and per-document samples."""
    store = ArtifactStore(storage)
    name = run_name(trained)
    if (ref := store.find("eval_general", name, key := current_key())) is None:
        pretrained, adapter_dir, revision = model_under_test(model, trained, storage)
        run = general_core.run_general(pretrained, eval_cfg, adapter_dir=adapter_dir, revision=revision,
                                       trust_remote_code=model.trust_remote_code, log_samples=True)
        samples = samples_table(run.samples)
        ref = store.commit(
            stage="eval_general", name=name, key=key,
            tables={"scores": scores_table(run.scores), "samples": samples},
            parents=[trained] if trained else [], parameters={"eval": eval_cfg, "model": model},
            rows_in=samples.height, rows_kept=samples.height,
            extra={"scores": run.scores, "docs_evaluated": run.docs_evaluated,
                   "offline": general_core.resolve_offline(eval_cfg), "lm_eval": run.raw_results,
                   "precision": precision(eval_cfg)},
        )
    scores = store.manifest(ref)["scores"]
    get_run_logger().info("general %s: %s", name, json.dumps(scores, sort_keys=True))
    _publish_scores(ref, scores, "general", name)
    return ref


@stage_task("eval_domain", domain_core, judge, key_extra=_domain_inputs, not_in_key=("eval_cfg",),
            run_name=task_run_namer("eval_domain", lambda p: _evaluated(p["trained"])))
def evaluate_domain(model: ModelConfig, trained: ArtifactRef | None, split: ArtifactRef, source_is_label: bool,
                    eval_cfg: EvalConfig, storage: StorageConfig) -> ArtifactRef:
    """Answers on the held-out test split; predictions with per-row scores, means in the manifest."""
    store = ArtifactStore(storage)
    name = run_name(trained)
    if (ref := store.find("eval_domain", name, key := current_key())) is None:
        test = store.read_table(split, "test")
        pretrained, adapter_dir, revision = model_under_test(model, trained, storage)
        result = domain_core.evaluate_domain(
            test, pretrained, eval_cfg.domain, adapter_dir=adapter_dir, revision=revision,
            trust_remote_code=model.trust_remote_code, source_is_label=source_is_label,
            dtype=eval_cfg.dtype, device=eval_cfg.device)
        predictions = result.predictions
        if "_source" in test.columns:  # several domain sources: say which one each row came from
            evaluated = test.head(predictions.height)  # the core evaluates the first max_rows rows, in order
            predictions = predictions.insert_column(0, evaluated["_source"])
        primary, _ = domain_core.primary_domain_score(result.scores, eval_cfg.domain)
        ref = store.commit(
            stage="eval_domain", name=name, key=key, tables={"predictions": predictions},
            parents=[split, *([trained] if trained else [])],
            parameters={"domain": eval_cfg.domain, "model": model, "source_is_label": source_is_label},
            rows_in=predictions.height, rows_kept=predictions.height,
            extra={"scores": result.scores, "primary_metric": primary, "precision": precision(eval_cfg)},
        )
    scores = store.manifest(ref)["scores"]
    get_run_logger().info("domain %s: %s", name, json.dumps(scores, sort_keys=True))
    _publish_scores(ref, scores, "domain", name)
    return ref
