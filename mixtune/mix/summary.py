"""The realized mix of a schedule: one table users read before training and MLflow logs after.

``summarize`` turns a built schedule's counts into a polars frame with a row
per source, per category (domain counts as one) and the total: rows
available, planned share, planned and realized samples and tokens, realized
share and repeat factor.

In sample units the planned tokens of a source are its planned samples times
its mean row length; in token units the planned samples are its planned
tokens over its mean row length. Realized figures are exact counts.
"""

from __future__ import annotations

from typing import Any, Sequence

import polars as pl

from mixtune.mix.spec import DOMAIN, MixSpec

SUMMARY_SCHEMA = {
    "level": pl.Utf8,  # "source", "category" or "total"
    "category": pl.Utf8,
    "source": pl.Utf8,  # null on category and total rows
    "rows": pl.Int64,  # train rows available
    "share": pl.Float64,  # planned fraction of the mix, in the mix's unit
    "realized_share": pl.Float64,
    "planned_samples": pl.Float64,
    "realized_samples": pl.Int64,
    "planned_tokens": pl.Float64,
    "realized_tokens": pl.Int64,
    "repeat_factor": pl.Float64,  # realized samples / rows: above 1 means repeated epochs
}


def summarize(
    *,
    spec: MixSpec,
    names: list[str],
    categories: list[str],
    fractions: Sequence[float],
    rows: list[int],
    realized_samples: list[int],
    realized_tokens: list[int],
    available_tokens: list[int],
    global_batch_size: int,
) -> tuple[pl.DataFrame, list[str], dict[str, Any]]:
    """The realized-mix frame, the repeat warnings, and the run's totals."""
    total_samples, total_tokens = sum(realized_samples), sum(realized_tokens)
    records = []
    for i, name in enumerate(names):
        mean_tokens = available_tokens[i] / rows[i] if rows[i] else 0.0
        if spec.unit == "samples":
            planned_samples = fractions[i] * total_samples
            planned_tokens = planned_samples * mean_tokens
            realized_share = realized_samples[i] / total_samples if total_samples else 0.0
        else:
            planned_tokens = fractions[i] * total_tokens
            planned_samples = planned_tokens / mean_tokens if mean_tokens else 0.0
            realized_share = realized_tokens[i] / total_tokens if total_tokens else 0.0
        records.append({
            "level": "source", "category": categories[i], "source": name, "rows": rows[i],
            "share": float(fractions[i]), "realized_share": realized_share,
            "planned_samples": planned_samples, "realized_samples": realized_samples[i],
            "planned_tokens": planned_tokens, "realized_tokens": realized_tokens[i],
            "repeat_factor": realized_samples[i] / rows[i],
        })
    sources = pl.DataFrame(records, schema=SUMMARY_SCHEMA)
    summed = [pl.col(c).sum() for c in ("rows", "share", "realized_share", "planned_samples",
                                         "realized_samples", "planned_tokens", "realized_tokens")]
    repeat = (pl.col("realized_samples") / pl.col("rows")).alias("repeat_factor")
    per_category = (
        sources.group_by("category").agg(summed)
        .with_columns(pl.lit("category").alias("level"), pl.lit(None, pl.Utf8).alias("source"), repeat)
    )
    total = sources.select(summed).with_columns(
        pl.lit("total").alias("level"), pl.lit(None, pl.Utf8).alias("category"),
        pl.lit(None, pl.Utf8).alias("source"), repeat,
    )
    # Domain first, then categories by name; each category row above its sources.
    order = (pl.when(pl.col("category") == DOMAIN).then(0)
             .when(pl.col("category").is_null()).then(2).otherwise(1))
    frame = (
        pl.concat([sources, per_category.select(list(SUMMARY_SCHEMA)), total.select(list(SUMMARY_SCHEMA))])
        .with_columns(order.alias("_group"), (pl.col("level") == "source").alias("_member"))
        .sort(["_group", "category", "_member", "source"], nulls_last=True)
        .drop("_group", "_member")
    )
    warnings = [
        f"source {r['source']!r} (category {r['category']!r}) is repeated {r['repeat_factor']:.1f} "
        f"times: {r['realized_samples']} samples from {r['rows']} rows, over the "
        f"{spec.warn_repeat_factor:g}x limit (mix.warn_repeat_factor); add rows, lower its "
        "weight, or accept the repetition"
        for r in sources.iter_rows(named=True) if r["repeat_factor"] > spec.warn_repeat_factor
    ]
    totals = {
        "unit": spec.unit,
        "seed": spec.seed,
        "domain_percent": spec.domain_percent,
        "category_weights": spec.category_weights(),
        "global_batch_size": global_batch_size,
        "batches": total_samples // global_batch_size,
        "samples": total_samples,
        "tokens": total_tokens,
        "sources": len(names),
    }
    if spec.domain_percent >= 100 and spec.weights:
        totals["note"] = "domain_percent is 100 (control run): category weights are ignored"
    return frame, warnings, totals
