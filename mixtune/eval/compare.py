"""Compare every tuned run with the base model on both axes, and say what to change.

Each run brings one domain score (``eval_domain.primary_domain_score``) and
its flat general scores (``eval_general``). The verdict uses one headline
metric per benchmark (``headline_metrics``): mmlu/acc, ifeval/prompt_level_strict_acc,
gsm8k/exact_match.strict-match, arc_challenge/acc_norm, and for any other
benchmark its acc_norm, acc or exact_match. A change counts only beyond
``tolerance`` (absolute, on 0-1 scores; default 0.02).

Verdict, first rule that matches wins:

1. "general degraded: lower domain_percent or raise the category weights" -
   a headline general metric other than instruction following fell by more
   than the tolerance. Checked first: it is the broadest failure, and a
   smaller domain share also helps instruction following.
2. "instruction following degraded: raise the instruction-following weight" -
   only instruction-following metrics (keys starting with an
   ``instruction_following_prefixes`` entry) fell beyond the tolerance.
3. "domain below target: raise domain_percent, add data or steps" - general
   is intact but the domain score is under ``domain_target`` (default: the
   base domain score + tolerance, i.e. fine-tuning must visibly help).
4. "both improved" - domain at target and the mean general change is above
   +tolerance.
5. "general retained" - domain at target, general within the tolerance.

The Pareto front is over (domain gain, general retention) among the tuned
runs, where general retention is the mean change of the headline general
metrics against the base (0 = fully retained); a run is on the front when no
other run is at least as good on both and better on one.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

GENERAL_DEGRADED = "general degraded: lower domain_percent or raise the category weights"
IF_DEGRADED = "instruction following degraded: raise the instruction-following weight"
DOMAIN_BELOW_TARGET = "domain below target: raise domain_percent, add data or steps"
BOTH_IMPROVED = "both improved"
GENERAL_RETAINED = "general retained"

HEADLINE = {
    "mmlu": "acc", "ifeval": "prompt_level_strict_acc", "gsm8k": "exact_match.strict-match",
    "arc_challenge": "acc_norm",
}
_FALLBACK_ORDER = ("acc_norm", "acc", "exact_match")
INFO_ONLY = ("mmlu_medical/",)  # shown in the table, never in the verdict: it moves with the domain
_EPS = 1e-9  # so 0.50 + 0.02 vs 0.52 is not decided by float rounding


@dataclass
class RunScores:
    name: str
    domain_score: float
    general: dict[str, float]


@dataclass
class Comparison:
    table: pl.DataFrame                  # one row per run, base first: scores, deltas, verdict, on_front
    verdicts: dict[str, str]             # tuned run -> verdict
    pareto_front: list[str]              # tuned runs on the front, highest domain gain first
    points: dict[str, tuple[float, float]]  # run -> (domain gain, general retention); base is (0, 0)
    general_metrics: list[str]           # the headline metrics the verdict used
    info_metrics: list[str]              # shown, not judged
    tolerance: float
    domain_target: float
    base_name: str


def headline_metrics(keys: list[str] | set[str]) -> list[str]:
    """One metric per benchmark from flat ``"<benchmark>/<metric>"`` keys, sorted by benchmark."""
    by_benchmark: dict[str, list[str]] = {}
    for key in keys:
        if "/" in key and not key.startswith(INFO_ONLY):
            benchmark, metric = key.split("/", 1)
            by_benchmark.setdefault(benchmark, []).append(metric)
    chosen = []
    for benchmark, metrics in sorted(by_benchmark.items()):
        preferred = [HEADLINE.get(benchmark), *_FALLBACK_ORDER]
        metric = next((m for m in preferred if m in metrics), sorted(metrics)[0])
        chosen.append(f"{benchmark}/{metric}")
    return chosen


def verdict(general_deltas: dict[str, float], domain_score: float, *, domain_target: float, tolerance: float,
            instruction_following_prefixes: tuple[str, ...] = ("ifeval/",)) -> str:
    """The first matching rule of the module docstring."""
    fell = [m for m, d in general_deltas.items() if d < -tolerance - _EPS]
    if any(not m.startswith(instruction_following_prefixes) for m in fell):
        return GENERAL_DEGRADED
    if fell:
        return IF_DEGRADED
    if domain_score < domain_target - _EPS:
        return DOMAIN_BELOW_TARGET
    mean_delta = sum(general_deltas.values()) / len(general_deltas) if general_deltas else 0.0
    return BOTH_IMPROVED if mean_delta > tolerance + _EPS else GENERAL_RETAINED


def pareto_front(points: dict[str, tuple[float, float]]) -> list[str]:
    """Names not dominated on (domain gain, general retention), highest domain gain first."""
    def dominated(a: tuple[float, float]) -> bool:
        return any(b[0] >= a[0] and b[1] >= a[1] and b != a for b in points.values())

    front = [name for name, point in points.items() if not dominated(point)]
    return sorted(front, key=lambda n: (-points[n][0], -points[n][1], n))


def compare_runs(base: RunScores, runs: list[RunScores], *, tolerance: float = 0.02,
                 domain_target: float | None = None,
                 instruction_following_prefixes: list[str] | tuple[str, ...] = ("ifeval/",),
                 general_metrics: list[str] | None = None) -> Comparison:
    """Deltas to the base, a verdict per run and the Pareto front; every run must have the base's metrics."""
    names = [r.name for r in runs]
    if len(set(names)) != len(names) or base.name in names:
        raise ValueError(f"run names must be unique and differ from the base's {base.name!r}: {names}")
    metrics = general_metrics or headline_metrics(base.general)
    info = sorted(k for k in base.general if k.startswith(INFO_ONLY) and k not in metrics)
    for run in [base, *runs]:
        missing = [m for m in metrics if m not in run.general]
        if missing:
            raise ValueError(f"run {run.name!r} has no score for {missing}; evaluate every run with the same "
                             f"eval config")
    target = base.domain_score + tolerance if domain_target is None else domain_target
    prefixes = tuple(instruction_following_prefixes)

    rows, verdicts, points = [], {}, {base.name: (0.0, 0.0)}
    for run in [base, *runs]:
        deltas = {m: run.general[m] - base.general[m] for m in metrics}
        retention = sum(deltas.values()) / len(deltas) if deltas else 0.0
        domain_gain = run.domain_score - base.domain_score
        row = {"run": run.name, "is_base": run is base, "domain": run.domain_score, "domain_delta": domain_gain}
        for m in [*metrics, *info]:
            row[m] = run.general.get(m)
            row[f"{m} delta"] = None if run.general.get(m) is None else run.general[m] - base.general[m]
        row["general_retention"] = retention
        if run is not base:
            verdicts[run.name] = verdict(deltas, run.domain_score, domain_target=target, tolerance=tolerance,
                                         instruction_following_prefixes=prefixes)
            points[run.name] = (domain_gain, retention)
        row["verdict"] = verdicts.get(run.name, "base")
        rows.append(row)
    front = pareto_front({n: p for n, p in points.items() if n != base.name})
    table = pl.DataFrame(rows, infer_schema_length=None).with_columns(
        pl.col("run").is_in(front).alias("on_pareto_front"))
    return Comparison(table=table, verdicts=verdicts, pareto_front=front, points=points, general_metrics=metrics,
                      info_metrics=info, tolerance=tolerance, domain_target=target, base_name=base.name)
