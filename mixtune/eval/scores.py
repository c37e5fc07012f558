"""Score tables from evaluation artifacts: flat scores, lm-eval's per-document samples, per-item results.

The per-item readers give compare its paired items: ``general_item_scores``
picks one flat key's per-document values out of the samples table (the same
documents and filter lm-eval averaged), ``domain_item_scores`` and
``domain_item_labels`` read the predictions table. Items are keyed so that the
base and a tuned run name the same item the same way: ``"<task>/<doc_id>"``
for benchmarks, the test row's ``_row_id`` for the domain.
"""

from __future__ import annotations

import json
from typing import Any, Iterable

import polars as pl

from mixtune.eval.benchmarks import MMLU_MEDICAL_SUBJECTS
from mixtune.eval.domain import NO_LABEL, normalize_label
from mixtune.sections import StorageConfig
from mixtune.storage.artifacts import ArtifactRef, ArtifactStore


def read_scores(refs: list[ArtifactRef], storage: StorageConfig) -> dict[str, float]:
    """One flat ``{"mmlu/acc": ..., "domain/rouge_l": ...}`` from evaluation artifacts' manifests."""
    store = ArtifactStore(storage)
    scores: dict[str, float] = {}
    for ref in refs:
        scores |= {k: float(v) for k, v in store.manifest(ref)["scores"].items()}
    return scores


def scores_table(scores: dict[str, float]) -> pl.DataFrame:
    return pl.DataFrame({"metric": list(scores), "value": list(scores.values())},
                        schema={"metric": pl.Utf8, "value": pl.Float64})


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


# --- per-item results, for paired comparisons ---


def _benchmark_tasks(benchmark: str, tasks: Iterable[str]) -> list[str]:
    """The logged tasks that make up a flat key's benchmark, online or offline names."""
    if benchmark == "mmlu_medical":
        return [t for t in tasks if t.startswith("mmlu_")
                and t.removeprefix("mmlu_offline_").removeprefix("mmlu_") in MMLU_MEDICAL_SUBJECTS]
    return [t for t in tasks if t in (benchmark, f"{benchmark}_offline") or t.startswith(f"{benchmark}_")]


def general_item_scores(samples: pl.DataFrame, keys: Iterable[str]) -> dict[str, dict[str, float]]:
    """``{"mmlu/acc": {"mmlu_offline_anatomy/3": 1.0, ...}}`` for each flat key that has numeric per-document values.

    ``"<benchmark>/<metric>[.<filter>]"`` selects the benchmark's tasks, the
    filter (``none`` when not given) and the metric out of each row's
    ``metrics``; booleans count as 0/1, list-valued metrics (IFEval's
    instruction level) have no per-document value and are left out.
    """
    out: dict[str, dict[str, float]] = {}
    if samples.is_empty():
        return out
    tasks = samples["task"].unique().to_list()
    for key in keys:
        benchmark, _, metric_filter = key.partition("/")
        metric, _, filter_name = metric_filter.partition(".")
        chosen = samples.filter(pl.col("task").is_in(_benchmark_tasks(benchmark, tasks))
                                & (pl.col("filter") == (filter_name or "none")))
        values: dict[str, float] = {}
        for task, doc_id, metrics in chosen.select("task", "doc_id", "metrics").iter_rows():
            value = json.loads(metrics).get(metric)
            if isinstance(value, (bool, int, float)):
                values[f"{task}/{doc_id}"] = float(value)
        if values:
            out[key] = values
    return out


def _item_ids(predictions: pl.DataFrame) -> list[str]:
    if "_row_id" in predictions.columns:
        return [str(v) for v in predictions["_row_id"].to_list()]
    return [str(i) for i in range(predictions.height)]


def domain_item_scores(predictions: pl.DataFrame, metric: str) -> dict[str, float]:
    """Per-row scores of one domain metric (``rouge_l``, ``judge_score``, ``accuracy`` ...) by test row.

    Rows without a score (a failed judge request) are left out; ``accuracy``
    reads ``label_correct``. Empty when the predictions hold no such column.
    """
    column = "label_correct" if metric == "accuracy" else metric
    if column not in predictions.columns:
        return {}
    values = predictions[column].cast(pl.Float64).to_list()
    return {item: value for item, value in zip(_item_ids(predictions), values) if value is not None}


def domain_item_labels(predictions: pl.DataFrame) -> dict[str, tuple[str, str]]:
    """Per row ``(reference label, predicted label)``, normalised as the label metrics compare them.

    A prediction naming no label stays ``NO_LABEL`` (a miss, never a class). Empty for a free-text task.
    """
    if "predicted_label" not in predictions.columns:
        return {}
    pairs = zip(predictions["reference"].to_list(), predictions["predicted_label"].to_list())
    return {item: (normalize_label(ref), predicted if predicted == NO_LABEL else normalize_label(predicted))
            for item, (ref, predicted) in zip(_item_ids(predictions), pairs)}
