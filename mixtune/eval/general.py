"""General axis: lm-eval benchmarks on the base model and on base + adapter.

``simple_evaluate`` with lm-eval's ``hf`` model around the model
``mixtune.eval.under_test.load_eval_model`` loads (base, or base with the
adapter merged in), the same weights the domain axis answers with. Online, the standard task
names run as published; offline, the shipped task set of ``mixtune.eval.benchmarks``
stands in for them with the same prompts and metrics. One model object serves
every benchmark, so model, batch size and context length are the same
everywhere, while ``limit``, ``num_fewshot`` and ``max_gen_toks`` are per
benchmark. Scores come back flat and keyed by the standard benchmark name in
both modes: ``{"mmlu/acc": 0.41, "gsm8k/exact_match.strict-match": 0.1, ...}``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mixtune.errors import ConfigError
from mixtune.eval.config import EvalConfig, GeneralTask
from mixtune.eval.under_test import load_eval_model
from mixtune.eval.benchmarks import (
    GSM8K_FEWSHOT_POOLS,
    MMLU_MEDICAL_SUBJECTS,
    PROJECT_DATA_DIR,
    offline_tasks,
    use_project_nltk_data,
)

_OFFLINE_ENV = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")


def resolve_offline(cfg: EvalConfig) -> bool:
    """``offline: auto`` follows the HF offline switches, so a sealed machine never waits on the hub."""
    if cfg.offline != "auto":
        return bool(cfg.offline)
    return any(os.environ.get(var, "").strip().lower() in {"1", "true", "yes", "on"} for var in _OFFLINE_ENV)


# --- running ---


@dataclass
class GeneralEvalRun:
    """Flat scores plus what produced them: per-benchmark lm-eval results, sample counts, prompts."""

    scores: dict[str, float]
    docs_evaluated: dict[str, int]
    raw_results: list[dict[str, Any]] = field(default_factory=list)  # per simple_evaluate call, JSON-safe
    samples: dict[str, list[dict[str, Any]]] = field(default_factory=dict)


def _effective_fewshot(task: GeneralTask, configs: list[dict[str, Any]]) -> int:
    """lm-eval's rule: a task configured with 0 shots stays 0-shot; otherwise the override wins."""
    configured = configs[0].get("num_fewshot")
    if configured == 0:
        return 0
    return task.num_fewshot if task.num_fewshot is not None else (configured or 0)


def _check_fewshot_source(task: GeneralTask, configs: list[dict[str, Any]]) -> None:
    shots = _effective_fewshot(task, configs)
    cfg = configs[0]
    if shots > 0 and not (cfg.get("fewshot_split") or cfg.get("training_split") or cfg.get("validation_split")):
        raise ConfigError([
            f"eval.general_tasks.{task.name}.num_fewshot: {shots} shots need a few-shot split and "
            f"{cfg['dataset_path']} has none (gsm8k draws its shots from one of "
            f"{list(GSM8K_FEWSHOT_POOLS)}); set num_fewshot: 0 or add the file"])


def build_lm(pretrained: str, cfg: EvalConfig, *, adapter_dir: str | None = None, revision: str | None = None,
             trust_remote_code: bool = False):
    """lm-eval's HF model around ``load_eval_model``'s model: the domain axis's loader, so both axes
    evaluate the same weights (adapter merged, ``eval.dtype``/``eval.device`` resolved alike)."""
    from lm_eval.models.huggingface import HFLM

    model, tokenizer = load_eval_model(pretrained, adapter_dir=adapter_dir, revision=revision,
                                       trust_remote_code=trust_remote_code, dtype=cfg.dtype, device=cfg.device)
    return HFLM(pretrained=model, tokenizer=tokenizer, batch_size=cfg.batch_size, max_length=cfg.max_length)


def run_general(pretrained: str, cfg: EvalConfig, *, adapter_dir: str | None = None, revision: str | None = None,
                trust_remote_code: bool = False, log_samples: bool = False) -> GeneralEvalRun:
    """Evaluate every configured benchmark on one model (base, or base + adapter).

    Benchmarks sharing (limit, num_fewshot, max_gen_toks) go through one
    ``simple_evaluate`` call: each call also collects environment info (~2 s
    of subprocesses), so the default config pays it once.
    """
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    offline = resolve_offline(cfg)
    data_dir = Path(cfg.data_dir) if cfg.data_dir else PROJECT_DATA_DIR
    use_project_nltk_data(data_dir if (data_dir / "nltk_data").exists() else PROJECT_DATA_DIR)
    # Offline, skip indexing lm-eval's ~10k bundled YAMLs (7 s): every task is an inline config.
    manager = TaskManager(include_defaults=not offline)
    calls: dict[tuple, list[tuple[GeneralTask, list[Any]]]] = {}
    for task in cfg.general_tasks:  # build every task before loading the model: config faults fail fast
        specs: list[Any] = offline_tasks(task.name, data_dir) if offline else [task.name]
        if offline:
            _check_fewshot_source(task, specs)
        calls.setdefault((task.limit, task.num_fewshot, task.max_gen_toks), []).append((task, specs))
    run = GeneralEvalRun(scores={}, docs_evaluated={})
    if not calls:  # general axis switched off: no model to load
        return run
    lm = build_lm(pretrained, cfg, adapter_dir=adapter_dir, revision=revision, trust_remote_code=trust_remote_code)
    for (limit, num_fewshot, max_gen_toks), members in calls.items():
        result = simple_evaluate(
            model=lm, tasks=[spec for _, specs in members for spec in specs], task_manager=manager,
            num_fewshot=num_fewshot, limit=limit, gen_kwargs={"max_gen_toks": max_gen_toks} if max_gen_toks else None,
            apply_chat_template=cfg.apply_chat_template, fewshot_as_multiturn=cfg.apply_chat_template,
            bootstrap_iters=0, log_samples=log_samples,
        )
        for task, _ in members:
            scores, docs = flatten_scores(task.name, result["results"], result.get("n-samples", {}))
            run.scores |= scores
            run.docs_evaluated[task.name] = docs
        run.raw_results.append(json.loads(json.dumps(
            {k: result.get(k) for k in ("results", "n-samples", "versions", "n-shot")}, default=str)))
        if log_samples:
            run.samples |= result.get("samples", {})
    return run


def evaluate_general(pretrained: str, cfg: EvalConfig, *, adapter_dir: str | None = None, revision: str | None = None,
                     trust_remote_code: bool = False) -> dict[str, float]:
    """Flat general scores for one model; call with and without ``adapter_dir`` for base vs tuned."""
    return run_general(pretrained, cfg, adapter_dir=adapter_dir, revision=revision,
                       trust_remote_code=trust_remote_code).scores


# --- flattening ---


def _metric_name(key: str) -> str | None:
    """lm-eval's "acc,none" -> "acc"; "exact_match,strict-match" -> "exact_match.strict-match" (MLflow-safe)."""
    if "," not in key or "_stderr" in key:
        return None
    metric, filter_name = key.split(",", 1)
    return metric if filter_name == "none" else f"{metric}.{filter_name}"


def _weighted(results: dict[str, dict[str, Any]], counts: dict[str, int], tasks: list[str]) -> float | None:
    present = [t for t in tasks if t in results and counts.get(t)]
    total = sum(counts[t] for t in present)
    if not total:
        return None
    return sum(float(results[t]["acc,none"]) * counts[t] for t in present) / total


def flatten_scores(benchmark: str, results: dict[str, dict[str, Any]],
                   n_samples: dict[str, dict[str, int]]) -> tuple[dict[str, float], int]:
    """``{"<benchmark>/<metric>": value}`` for one benchmark's lm-eval results, and the docs scored.

    MMLU is the sample-weighted mean over its subjects (what lm-eval's group
    reports with ``weight_by_size``); ``mmlu_medical/acc`` is the same over the
    six medical subjects, shown beside the general score for medical domains.
    """
    counts = {t: int(n.get("effective", 0)) for t, n in n_samples.items()}
    scores: dict[str, float] = {}
    if benchmark == "mmlu":
        # leaf tasks only: groups (mmlu_stem ...) have no sample count
        subject_tasks = [t for t in results if t.startswith("mmlu_") and t in counts]
        subject_task = {t: t.removeprefix("mmlu_offline_").removeprefix("mmlu_") for t in subject_tasks}
        overall = results.get("mmlu", {}).get("acc,none")
        overall = float(overall) if overall is not None else _weighted(results, counts, subject_tasks)
        if overall is not None:
            scores["mmlu/acc"] = overall
        medical = [t for t in subject_tasks if subject_task[t] in MMLU_MEDICAL_SUBJECTS]
        medical_acc = _weighted(results, counts, medical)
        if medical_acc is not None:
            scores["mmlu_medical/acc"] = medical_acc
        return scores, sum(counts[t] for t in subject_tasks)
    name = benchmark if benchmark in results else f"{benchmark}_offline"
    for key, value in results.get(name, {}).items():
        metric = _metric_name(key)
        if metric is not None and isinstance(value, (int, float)):
            scores[f"{benchmark}/{metric}"] = float(value)
    docs = counts.get(name) or sum(c for t, c in counts.items() if t.startswith(f"{benchmark}_"))  # online groups
    return scores, docs
