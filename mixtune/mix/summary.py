"""The realized mix of a schedule: one table users read before training and MLflow logs after.

``summarize`` turns a built schedule's counts into a polars frame with a row
per source, per category (domain counts as one) and the total: rows
available, planned share, planned and realized samples and tokens, realized
share and repeat factor.

In sample units the planned tokens of a source are its planned samples times
its mean row length; in token units the planned samples are its planned
tokens over its mean row length. Realized figures are exact counts.

Warnings, shown by ``mixtune mix plan`` and logged by the mix-manifest task:
a source repeated more than ``mix.warn_repeat_factor`` times
(``MixRepeatWarning``), and a part of the mix that was asked for but gets no
sample in the whole run (``MixUnsampledWarning``): a category with a weight
above 0 (or the domain) whose share of the planned samples rounds to
nothing, e.g. a weight of 0.001 in a short run, or one source of a category
that does get samples.
"""

from __future__ import annotations

from typing import Any, Sequence

import polars as pl

from mixtune.mix.spec import DOMAIN, MixSpec

class MixRepeatWarning(UserWarning):
    """A source is repeated more often than ``mix.warn_repeat_factor``."""


class MixUnsampledWarning(UserWarning):
    """A category with a weight above 0 (or the domain, or one of their sources) gets no sample."""


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
) -> tuple[pl.DataFrame, list[tuple[type[UserWarning], str]], dict[str, Any]]:
    """The realized-mix frame, the warnings (class, message), and the run's totals."""
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
    warnings = _unsampled(spec, sources, total_samples, global_batch_size) + [
        (MixRepeatWarning,
         f"source {r['source']!r} (category {r['category']!r}) is repeated {r['repeat_factor']:.1f} "
         f"times: {r['realized_samples']} samples from {r['rows']} rows, over the "
         f"{spec.warn_repeat_factor:g}x limit (mix.warn_repeat_factor); add rows, lower its "
         "weight, or accept the repetition")
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


def _unsampled(spec: MixSpec, sources: pl.DataFrame, total_samples: int,
               global_batch_size: int) -> list[tuple[type[UserWarning], str]]:
    """One warning per category (domain included) asked for but given no sample in the run,
    and one per source with no sample in a category that does get samples."""
    run = (f"{total_samples // global_batch_size} batches x {global_batch_size} = {total_samples} "
           "samples" if global_batch_size else f"{total_samples} samples")
    asked = {DOMAIN: None, **{c: spec.weights[c] for c in spec.category_weights()}}
    found: list[tuple[type[UserWarning], str]] = []
    for category, weight in asked.items():
        members = sources.filter(pl.col("category") == category)
        if members.height == 0:
            continue
        planned = float(members["planned_samples"].sum())
        if members["realized_samples"].sum() == 0:
            what = (f"the domain data (domain_percent {spec.domain_percent:g})" if weight is None
                    else f"category {category!r} (weight {weight:g})")
            fix = ("raise domain_percent" if weight is None else "raise its weight")
            found.append((MixUnsampledWarning,
                          f"{what} gets no sample in this run of {run}: its planned share is "
                          f"{planned:.2f} samples; {fix}, train longer, or leave it out of the mix"))
            continue
        for r in members.filter(pl.col("realized_samples") == 0).iter_rows(named=True):
            found.append((MixUnsampledWarning,
                          f"source {r['source']!r} (category {category!r}) gets no sample in this run "
                          f"of {run}: its planned share is {r['planned_samples']:.2f} samples next to "
                          "larger sources of its category; train longer or give it its own category"))
    return found
