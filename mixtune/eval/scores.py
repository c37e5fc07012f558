"""Score tables from evaluation artifacts: flat scores and lm-eval's per-document samples."""

from __future__ import annotations

import json
from typing import Any

import polars as pl

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
