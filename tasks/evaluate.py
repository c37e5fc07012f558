"""evaluate tasks: the general axis (lm-eval) and the domain axis (held-out split), base or tuned.

``trained=None`` evaluates the base model. The cache key is the model config
(revision included, and the tiny model's corpus bytes), the eval config, the
offline benchmark files' bytes and, for a tuned model, the training
artifact's fingerprint; nothing about the mix or the run. So every mix of a
sweep asks for the same base key and the base model is evaluated once.

A trained model is a ``train`` artifact: ``{uri}/adapter/`` (PEFT adapter,
applied unmerged on the configured base) when its manifest says
``"method": "lora"``, ``{uri}/model/`` (full weights) when ``"full"``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import polars as pl
from prefect import get_run_logger
from prefect.artifacts import create_table_artifact

import mixtune.eval_domain as domain_core
import mixtune.eval_general as general_core
from mixtune import eval_tasks, judge
from mixtune.artifacts import ArtifactRef, ArtifactStore
from mixtune.eval_config import EvalConfig
from mixtune.sections import TINY_MODEL, ModelConfig, StorageConfig
from mixtune.tiny_model import local_model_cache, tiny_model_key
from tasks._stage import artifact_key, current_key, stage_task
from tasks.model import local_model_path

BASE_RUN = "base"  # the run name of the untuned model in artifacts, tables and reports
_WEIGHTS_FOLDER = {"lora": "adapter", "full": "model"}

# --- which model is under test ---


def local_model_files(ref: ArtifactRef, store: ArtifactStore) -> Path:
    """Local folder of a trained model's weights: the adapter (LoRA) or the full model.

    On a remote root the folder is fetched once into the local model cache
    (HF loaders need local files); a half-finished copy is never used.
    """
    method = store.manifest(ref).get("method")
    if method not in _WEIGHTS_FOLDER:
        raise ValueError(f"{ref.uri}/manifest.json: method is {method!r}; a train artifact says 'lora' or 'full'")
    folder = _WEIGHTS_FOLDER[method]
    if store._is_local:
        local = Path(store._path(ref.uri)) / folder
        if not local.is_dir():
            raise FileNotFoundError(f"{ref.uri}: no {folder}/ folder for a {method} model")
        return local
    local = local_model_cache(store) / "trained" / f"{ref.name}-{ref.fingerprint[:16]}" / folder
    return store.fetch_dir(f"{ref.uri}/{folder}", local)


def model_under_test(model: ModelConfig, trained: ArtifactRef | None,
                     storage: StorageConfig) -> tuple[str, str | None, str | None]:
    """(pretrained, adapter_dir, revision) for the loaders: the base, base + adapter, or full weights."""
    base = local_model_path(model, storage)
    if trained is None:
        return base, None, model.revision
    store = ArtifactStore(storage)
    files = local_model_files(trained, store)
    if store.manifest(trained)["method"] == "lora":
        return base, str(files), model.revision
    return str(files), None, None  # full weights: a local folder, no hub revision


def run_name(trained: ArtifactRef | None) -> str:
    return BASE_RUN if trained is None else trained.name

# --- cache key parts the parameters do not carry ---


def _model_identity(model: ModelConfig) -> str | None:
    """The tiny model's weights follow from its corpus bytes, which the config names only by path."""
    return tiny_model_key(model.tiny) if model.name_or_path == TINY_MODEL else None


def _files_fingerprint(files: list[Path], root: Path) -> str:
    digest = hashlib.sha256()
    for file in files:
        digest.update(str(file.relative_to(root) if file.is_relative_to(root) else file).encode())
        digest.update(file.read_bytes())
    return digest.hexdigest()


# Settings only compare reads: changing them re-judges, it does not re-evaluate.
_COMPARE_ONLY = {"tolerance", "domain_target", "instruction_following_prefixes"}


def _measured_settings(cfg: EvalConfig) -> dict[str, Any]:
    return cfg.model_dump(mode="json", exclude=_COMPARE_ONLY)


def _general_inputs(parameters: dict[str, Any]) -> dict[str, Any]:
    """Offline: the bytes of every benchmark file, so edited data re-runs; online: the mode only."""
    cfg: EvalConfig = parameters["eval_cfg"]
    offline = general_core.resolve_offline(cfg)
    data = None
    if offline and cfg.general_tasks:
        data_dir = Path(cfg.data_dir) if cfg.data_dir else eval_tasks.PROJECT_DATA_DIR
        data = _files_fingerprint(eval_tasks.offline_data_files(data_dir), data_dir)
    return {"model": _model_identity(parameters["model"]), "offline": offline, "data": data,
            "eval": _measured_settings(cfg)}


def _domain_inputs(parameters: dict[str, Any]) -> dict[str, Any]:
    return {"model": _model_identity(parameters["model"]), "eval": _measured_settings(parameters["eval_cfg"])}

# --- scores ---


def read_scores(refs: list[ArtifactRef], storage: StorageConfig) -> dict[str, float]:
    """One flat ``{"mmlu/acc": ..., "domain/rouge_l": ...}`` from evaluation artifacts' manifests."""
    store = ArtifactStore(storage)
    scores: dict[str, float] = {}
    for ref in refs:
        scores |= {k: float(v) for k, v in store.manifest(ref)["scores"].items()}
    return scores


def _scores_table(scores: dict[str, float]) -> pl.DataFrame:
    return pl.DataFrame({"metric": list(scores), "value": list(scores.values())},
                        schema={"metric": pl.Utf8, "value": pl.Float64})


def _publish_scores(ref: ArtifactRef, scores: dict[str, float], axis: str, name: str) -> None:
    create_table_artifact(
        key=artifact_key(f"eval-{axis}-{name}"),
        table=[{"metric": k, "value": round(v, 4)} for k, v in sorted(scores.items())] or [{"metric": "-", "value": 0}],
        description=f"{axis} scores of `{name}`; details in {ref.uri}",
    )


def _first_number(sample: dict[str, Any]) -> float | None:
    """The sample's first metric as a number (bools count); None for list-valued ones."""
    for metric in sample.get("metrics", []):
        value = sample.get(metric)
        if isinstance(value, (bool, int, float)):
            return float(value)
    return None


def samples_table(samples: dict[str, list[dict[str, Any]]]) -> pl.DataFrame:
    """lm-eval's per-document log as one table: prompt, target, response and per-row scores."""
    rows = []
    for task, logged in sorted(samples.items()):
        for s in logged:
            arguments = s.get("arguments") or [[""]]
            rows.append({
                "task": task, "doc_id": int(s.get("doc_id", -1)), "filter": str(s.get("filter", "")),
                "prompt": str(arguments[0][0]), "target": str(s.get("target", "")),
                "response": json.dumps(s.get("filtered_resps"), default=str),
                "score": _first_number(s),
                "metrics": json.dumps({m: s.get(m) for m in s.get("metrics", [])}, default=str),
            })
    schema = {"task": pl.Utf8, "doc_id": pl.Int64, "filter": pl.Utf8, "prompt": pl.Utf8, "target": pl.Utf8,
              "response": pl.Utf8, "score": pl.Float64, "metrics": pl.Utf8}
    return pl.DataFrame(rows, schema=schema)

# --- the two axes ---


@stage_task("eval_general", general_core, eval_tasks, key_extra=_general_inputs, not_in_key=("eval_cfg",))
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
            tables={"scores": _scores_table(run.scores), "samples": samples},
            parents=[trained] if trained else [], parameters={"eval": eval_cfg, "model": model},
            rows_in=samples.height, rows_kept=samples.height,
            extra={"scores": run.scores, "docs_evaluated": run.docs_evaluated,
                   "offline": general_core.resolve_offline(eval_cfg), "lm_eval": run.raw_results},
        )
    scores = store.manifest(ref)["scores"]
    get_run_logger().info("general %s: %s", name, json.dumps(scores, sort_keys=True))
    _publish_scores(ref, scores, "general", name)
    return ref


@stage_task("eval_domain", domain_core, judge, key_extra=_domain_inputs, not_in_key=("eval_cfg",))
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
            extra={"scores": result.scores, "primary_metric": primary},
        )
    scores = store.manifest(ref)["scores"]
    get_run_logger().info("domain %s: %s", name, json.dumps(scores, sort_keys=True))
    _publish_scores(ref, scores, "domain", name)
    return ref
