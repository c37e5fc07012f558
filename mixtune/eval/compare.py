"""Compare every tuned run with the base model on both axes, say which mix to ship and what to change.

Inputs per run: the domain score (``eval_domain.primary_domain_score``), the
flat general scores (``eval_general``) and, for both, the per-item results
(``Items``: lm-eval's per-document samples, the domain predictions' per-row
scores). Base and tuned answer the same items, so every change is a paired
comparison with a 95% percentile-bootstrap interval (``mixtune.eval.stats``).

**Metrics.** The general axis uses one headline metric per benchmark
(``headline_metrics``): mmlu/acc, ifeval/prompt_level_strict_acc,
gsm8k/exact_match.strict-match, arc_challenge/acc_norm, and for any other
benchmark its acc_norm, acc or exact_match. ``general change`` is the
equal-weight mean of their changes (stratified bootstrap interval). The
domain axis uses the primary domain metric.

**Checks** (``tolerance``: absolute, on 0-1 scores, default 0.02; ``target``:
the domain gain asked for, ``domain_target`` − base domain score, default the
tolerance). Each run is held to every check, and every check that does not
pass is reported with its metric, numbers and advice for that run's mix:

- *domain*: met when the gain reaches the target and its interval lies above
  zero (above the target when the target is a loss); *below target* when the
  whole interval is under the target; otherwise *inconclusive*.
- *general*, per headline metric: *degraded* when the interval lies below zero
  and the change is below −tolerance (an instruction-following metric, by
  ``instruction_following_prefixes``, is reported as *instruction following
  degraded*); *retained* when the interval's lower end is at or above
  −tolerance (any loss is within tolerance); *improved* when the interval lies
  above zero and the change exceeds +tolerance; otherwise *inconclusive*: the
  interval reaches beyond −tolerance without excluding zero, or the change is
  real but too small to call.

A check without per-item results has no interval and is inconclusive. For an
inconclusive check the advice names ``n_needed``: the items at which the
interval would be ±tolerance wide (``stats.n_for_half_width``).

**Recommendation** (``RULE``, printed in the report): a run passes when every
check passes. Ship the passing blend with the highest domain gain (then the
better general change); the domain-only control (100% domain) is named only
when no blend passes, with that reason, because it holds no general data to
protect the model in longer training. If no run passes and some run's only
failures are inconclusive, the answer is "Inconclusive" with the n to raise
each limit to. Otherwise no mix meets both targets; the closest run is the one
with the fewest failed checks, then the smallest shortfall (how far the
domain gain falls below the target plus how far each general metric falls
below −tolerance), then a blend over the control.

The Pareto front is over (domain gain, general change) among the tuned runs,
on the point estimates: a run is on the front when no other run is at least
as good on both and better on one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import polars as pl

from mixtune.eval import stats
from mixtune.eval.stats import PairedChange

HEADLINE = {
    "mmlu": "acc", "ifeval": "prompt_level_strict_acc", "gsm8k": "exact_match.strict-match",
    "arc_challenge": "acc_norm",
}
_FALLBACK_ORDER = ("acc_norm", "acc", "exact_match")
INFO_ONLY = ("mmlu_medical/",)  # shown in the table, never in the verdict: it moves with the domain
_EPS = 1e-9  # so 0.50 + 0.02 vs 0.52 is not decided by float rounding

# Check outcomes.
MET, RETAINED, IMPROVED = "met", "retained", "improved"
BELOW_TARGET, DEGRADED, INCONCLUSIVE = "below target", "degraded", "inconclusive"
PASSED = (MET, RETAINED, IMPROVED)

# Verdict headings: a passing run's verdict, or the kinds of failed checks it lists.
BOTH_IMPROVED = "both improved"
GENERAL_RETAINED = "domain improved, general retained"
GENERAL_DEGRADED = "general degraded"
IF_DEGRADED = "instruction following degraded"
DOMAIN_BELOW_TARGET = "domain below target"
INCONCLUSIVE_VERDICT = "inconclusive"

SHIP, NO_MIX, UNDECIDED = "ship", "none", "inconclusive"  # Recommendation.kind

RULE = (
    "A mix passes when its domain gain reaches the target with a 95% interval above zero and every verdict "
    "general metric is retained (the interval's lower end at or above -tolerance) or improved. The passing blend "
    "with the highest domain gain is recommended; the domain-only control (100% domain) only when no blend "
    "passes, because it carries no general data to protect the model in longer training. With no passing mix: "
    "'Inconclusive' when some mix fails only checks whose intervals are too wide to decide (with the n that "
    "would decide them), else the closest mix: fewest failed checks, then the smallest shortfall."
)

# Words users know, for column headers and sentences.
BENCHMARK_LABELS = {
    "mmlu": "MMLU", "mmlu_medical": "MMLU medical", "ifeval": "IFEval", "gsm8k": "GSM8K",
    "arc_challenge": "ARC-Challenge", "arc_easy": "ARC-Easy", "piqa": "PIQA", "hellaswag": "HellaSwag",
}
METRIC_LABELS = {
    "acc": "acc", "acc_norm": "acc_norm", "prompt_level_strict_acc": "prompt-level strict acc",
    "inst_level_strict_acc": "instruction-level strict acc", "exact_match.strict-match": "exact match (strict)",
    "exact_match.flexible-extract": "exact match (flexible)", "rouge_l": "ROUGE-L", "token_f1": "token F1",
    "exact_match": "exact match", "accuracy": "accuracy", "macro_f1": "macro-F1", "judge_score": "judge score",
}
# The catalog category that trains what a benchmark measures: advice names it.
BENCHMARK_CATEGORY = {
    "gsm8k": "math", "ifeval": "instruction-following", "arc_challenge": "reasoning", "arc_easy": "reasoning",
    "piqa": "reasoning", "hellaswag": "reasoning", "mmlu": "stem",
}


def metric_label(key: str) -> str:
    """``"mmlu/acc"`` -> ``"MMLU acc"``, ``"domain/rouge_l"`` -> ``"domain ROUGE-L"``; unknown parts as given."""
    benchmark, _, metric = key.partition("/")
    return f"{BENCHMARK_LABELS.get(benchmark, benchmark)} {METRIC_LABELS.get(metric, metric)}".strip()


@dataclass(frozen=True)
class Items:
    """One metric's per-item results for one run, keyed by item id (a benchmark document, a test row).

    ``scores`` for a mean metric (item -> 0-1 score); ``labels`` for macro-F1
    (item -> (reference label, predicted label), both normalised).
    """

    scores: dict[str, float] = field(default_factory=dict)
    labels: dict[str, tuple[str, str]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.labels) if self.labels else len(self.scores)


@dataclass
class RunScores:
    name: str
    domain_score: float
    general: dict[str, float]
    items: dict[str, Items] = field(default_factory=dict)  # metric key ("mmlu/acc", "domain/rouge_l") -> items
    domain_metric: str = "domain/score"  # the key of ``domain_score`` in ``items``
    domain_percent: float | None = None  # the mix, for advice; None = unknown
    weights: dict[str, float] = field(default_factory=dict)

    @property
    def is_control(self) -> bool:
        """The domain-only run every sweep includes."""
        return self.domain_percent is not None and self.domain_percent >= 100


@dataclass
class Check:
    """One test a tuned run must pass, with what it found and what to do about it."""

    metric: str  # "domain/rouge_l", "mmlu/acc"
    axis: str  # "domain", "general" or "instruction following"
    outcome: str  # MET, RETAINED, IMPROVED, BELOW_TARGET, DEGRADED or INCONCLUSIVE
    change: PairedChange
    finding: str  # numbers and the reason, in words
    advice: str = ""  # empty when passed
    n_needed: int | None = None  # inconclusive: items for an interval of ±tolerance
    shortfall: float = 0.0  # how far from passing, in score units

    @property
    def passed(self) -> bool:
        return self.outcome in PASSED

    @property
    def heading(self) -> str:
        """The verdict heading this check files under when it does not pass."""
        if self.outcome == INCONCLUSIVE:
            return INCONCLUSIVE_VERDICT
        if self.axis == "domain":
            return DOMAIN_BELOW_TARGET
        return IF_DEGRADED if self.axis == "instruction following" else GENERAL_DEGRADED


@dataclass(frozen=True)
class Recommendation:
    kind: str  # SHIP, NO_MIX or UNDECIDED
    run: str | None  # the mix shipped, or the closest one
    sentence: str


@dataclass
class Comparison:
    table: pl.DataFrame  # one row per run, base first: scores, SE, n, deltas with intervals, verdict
    verdicts: dict[str, str]  # tuned run -> one-line verdict
    checks: dict[str, list[Check]]  # tuned run -> every check, passed or not
    changes: dict[str, dict[str, PairedChange]]  # tuned run -> metric (and "general") -> paired change
    recommendation: Recommendation
    pareto_front: list[str]  # tuned runs on the front, highest domain gain first
    points: dict[str, tuple[float, float]]  # run -> (domain gain, general change); base is (0, 0)
    general_metrics: list[str]  # the headline metrics the verdict used
    info_metrics: list[str]  # shown, not judged
    tolerance: float
    domain_target: float
    base_name: str
    domain_metric: str = "domain/score"
    notes: list[str] = field(default_factory=list)  # e.g. runs scored on different items

    def n(self, metric: str) -> int | None:
        """Paired items behind a metric's changes (the largest over runs), None when unknown."""
        counts = [c[metric].n for c in self.changes.values() if metric in c and c[metric].n]
        return max(counts) if counts else None


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


def pareto_front(points: dict[str, tuple[float, float]]) -> list[str]:
    """Names not dominated on (domain gain, general change), highest domain gain first."""
    def dominated(a: tuple[float, float]) -> bool:
        return any(b[0] >= a[0] and b[1] >= a[1] and b != a for b in points.values())

    front = [name for name, point in points.items() if not dominated(point)]
    return sorted(front, key=lambda n: (-points[n][0], -points[n][1], n))


# --- formatting numbers the same way everywhere ---


def fmt_interval(change: PairedChange) -> str:
    """``"95% CI [-0.031, +0.012], n=171"``, or why there is none."""
    if change.n == 0:
        return "no per-item results"
    if not change.has_interval:
        return f"no interval, n={change.n}"
    return f"{change.confidence:.0%} CI [{change.ci_low:+.3f}, {change.ci_high:+.3f}], n={change.n}"


def fmt_change(label: str, change: PairedChange) -> str:
    """``"MMLU acc -0.029 (95% CI [-0.061, +0.003], n=171)"``."""
    return f"{label} {change.delta:+.3f} ({fmt_interval(change)})"


# --- paired changes ---


def _no_items_change(base_value: float, value: float) -> PairedChange:
    nan = math.nan
    return PairedChange(base_value, value, nan, nan, value - base_value, nan, nan, 0)


def metric_change(metric: str, base: RunScores, run: RunScores, base_value: float, value: float,
                  notes: list[str] | None = None) -> PairedChange:
    """The paired change of one metric on the items both runs scored; no interval without items."""
    b, t = base.items.get(metric), run.items.get(metric)
    if not b or not t:
        return _no_items_change(base_value, value)
    if b.labels or t.labels:
        common = sorted(b.labels.keys() & t.labels.keys())
        change = stats.paired_macro_f1_change([b.labels[i][0] for i in common], [b.labels[i][1] for i in common],
                                              [t.labels[i][1] for i in common])
    else:
        common = sorted(b.scores.keys() & t.scores.keys())
        change = stats.paired_change([b.scores[i] for i in common], [t.scores[i] for i in common])
    if notes is not None and (len(common) < len(b) or len(common) < len(t)):
        notes.append(f"{run.name} {metric_label(metric)}: compared on the {len(common)} items both runs scored "
                     f"(base {len(b)}, {run.name} {len(t)}).")
    return change


def general_change(metrics: list[str], base: RunScores, run: RunScores,
                   changes: dict[str, PairedChange]) -> PairedChange:
    """Equal-weight mean of the metrics' changes, with a stratified interval when every metric has items."""
    if not metrics:
        return PairedChange(0.0, 0.0, math.nan, math.nan, 0.0, math.nan, math.nan, 0)
    pairs = []
    for m in metrics:
        b, t = base.items.get(m), run.items.get(m)
        if not b or not t or b.labels or t.labels:
            pairs = []
            break
        common = sorted(b.scores.keys() & t.scores.keys())
        pairs.append(([b.scores[i] for i in common], [t.scores[i] for i in common]))
    if pairs and all(len(p[0]) for p in pairs):
        return stats.mean_of_changes(pairs)
    mean = lambda values: sum(values) / len(values)  # noqa: E731
    return _no_items_change(mean([changes[m].base for m in metrics]), mean([changes[m].tuned for m in metrics]))


# --- checks, with advice the run can act on ---


def _limit_advice(metric: str, n_needed: int | None) -> str:
    target = f"n={n_needed}" if n_needed else "more items"
    if metric.startswith("domain/"):
        return f"raise eval.domain.max_rows (or add test rows) to {target}"
    benchmark = metric.split("/", 1)[0]
    per_subject = " (its limit counts per subject: 57 subjects)" if benchmark == "mmlu" else ""
    return f"raise the {benchmark} limit in eval.general_tasks to {target}{per_subject}"


def _domain_advice(run: RunScores) -> str:
    if run.is_control:
        return "add domain training data or train more steps (this run is already all domain data)"
    share = f" above {run.domain_percent:g}" if run.domain_percent is not None else ""
    return f"raise domain_percent{share}, add domain training data or train more steps"


def _general_advice(run: RunScores, metric: str, instruction_following: bool) -> str:
    benchmark = metric.split("/", 1)[0]
    category = "instruction-following" if instruction_following else BENCHMARK_CATEGORY.get(benchmark)
    if run.is_control:
        with_category = f" with the {category} category" if category else ""
        return f"blend in general data: run a mix below 100% domain{with_category}"
    share = f" below {run.domain_percent:g}" if run.domain_percent is not None else ""
    lower = f"lower domain_percent{share}"
    if category is None:
        return f"{lower} or raise the weights of the categories that train {BENCHMARK_LABELS.get(benchmark, benchmark)}"
    if run.weights and run.weights.get(category, 0) <= 0:
        return f"{lower} or add the {category} category to the mix"
    return f"{lower} or raise the {category} weight"


def domain_check(metric: str, change: PairedChange, target_gain: float, tolerance: float,
                 run: RunScores) -> Check:
    label = metric_label(metric)
    target = f"target {target_gain:+.3f}"
    floor = min(0.0, target_gain)
    if change.has_interval and change.delta >= target_gain - _EPS and change.ci_low > floor + _EPS:
        return Check(metric, "domain", MET, change, f"{fmt_change(label, change)} reaches the {target}")
    shortfall = max(0.0, target_gain - change.delta)
    if change.has_interval and change.ci_high < target_gain - _EPS:
        return Check(metric, "domain", BELOW_TARGET, change,
                     f"{fmt_change(label, change)}: the whole interval is below the {target}",
                     _domain_advice(run), shortfall=shortfall)
    n_needed = stats.n_for_half_width(change, tolerance)
    why = ("no per-item results to test the gain" if change.n == 0 else "the interval includes "
           + ("zero" if change.delta >= target_gain > 0 else "the target"))
    return Check(metric, "domain", INCONCLUSIVE, change, f"{fmt_change(label, change)} vs the {target}: {why}",
                 _limit_advice(metric, n_needed), n_needed, shortfall)


def general_check(metric: str, change: PairedChange, tolerance: float, run: RunScores,
                  instruction_following: bool) -> Check:
    label = metric_label(metric)
    axis = "instruction following" if instruction_following else "general"
    text = fmt_change(label, change)
    if change.has_interval:
        if change.ci_high < 0 and change.delta < -tolerance - _EPS:
            return Check(metric, axis, DEGRADED, change, f"{text}: fell by more than the tolerance {tolerance:g}",
                         _general_advice(run, metric, instruction_following),
                         shortfall=-tolerance - change.delta)
        if change.ci_low > 0 and change.delta > tolerance + _EPS:
            return Check(metric, axis, IMPROVED, change, f"{text}: improved beyond the tolerance")
        if change.ci_low >= -tolerance - _EPS:
            return Check(metric, axis, RETAINED, change, f"{text}: any loss is within the tolerance {tolerance:g}")
    n_needed = stats.n_for_half_width(change, tolerance)
    why = ("no per-item results to test the change" if change.n == 0 else
           f"a loss beyond the tolerance {tolerance:g} is neither shown nor ruled out")
    return Check(metric, axis, INCONCLUSIVE, change, f"{text}: {why}", _limit_advice(metric, n_needed), n_needed,
                 max(0.0, -tolerance - change.delta))


def verdict_line(checks: list[Check], general: PairedChange, tolerance: float) -> str:
    """One line: the passing verdict, or every failed check's heading with the metrics that failed it."""
    failed = [c for c in checks if not c.passed]
    if not failed:
        improved = general.has_interval and general.ci_low > 0 and general.delta > tolerance + _EPS
        return BOTH_IMPROVED if improved else GENERAL_RETAINED
    parts: dict[str, list[str]] = {}
    for check in failed:
        name = metric_label(check.metric)
        parts.setdefault(check.heading, []).append(
            f"{name} (n={check.change.n})" if check.outcome == INCONCLUSIVE else name)
    order = [GENERAL_DEGRADED, IF_DEGRADED, DOMAIN_BELOW_TARGET, INCONCLUSIVE_VERDICT]
    return "; ".join(f"{h}: {', '.join(parts[h])}" for h in order if h in parts)


# --- the recommendation ---


def _failures(checks: list[Check]) -> tuple[int, int, float]:
    conclusive = sum(1 for c in checks if not c.passed and c.outcome != INCONCLUSIVE)
    inconclusive = sum(1 for c in checks if c.outcome == INCONCLUSIVE)
    return conclusive, inconclusive, sum(c.shortfall for c in checks if not c.passed)


def recommend(runs: list[RunScores], checks: dict[str, list[Check]], changes: dict[str, dict[str, PairedChange]],
              domain_metric: str, tolerance: float) -> Recommendation:
    """The module docstring's rule over the tuned runs."""
    if not runs:
        return Recommendation(NO_MIX, None, "No tuned mix to compare.")
    by_name = {r.name: r for r in runs}

    def gains(name: str) -> tuple[float, float]:
        return changes[name][domain_metric].delta, changes[name]["general"].delta

    def summary(name: str) -> str:
        return (f"{fmt_change(metric_label(domain_metric), changes[name][domain_metric])}, "
                f"{fmt_change('general', changes[name]['general'])}")

    passing = [r.name for r in runs if all(c.passed for c in checks[r.name])]
    if passing:
        blends = [n for n in passing if not by_name[n].is_control]
        best = max(blends or passing, key=lambda n: (*gains(n), n))
        sentence = f"Ship {best}: {summary(best)}; every check within tolerance ±{tolerance:g}."
        if by_name[best].is_control:
            sentence += (" It is the domain-only control: no blend passed, and at this training budget it kept "
                         "general scores within tolerance; longer training usually forgets more, so re-check "
                         "general scores when you scale up.")
        elif controls := [n for n in passing if by_name[n].is_control]:
            sentence += (f" The domain-only control {controls[0]} passed too "
                         f"({fmt_change(metric_label(domain_metric), changes[controls[0]][domain_metric])}): "
                         "at this budget mixing was not needed to keep general scores.")
        return Recommendation(SHIP, best, sentence)

    def closeness(name: str) -> tuple:
        conclusive, inconclusive, shortfall = _failures(checks[name])
        return conclusive, inconclusive, round(shortfall, 9), by_name[name].is_control, -gains(name)[0], name

    undecided = [r.name for r in runs if _failures(checks[r.name])[0] == 0]
    if undecided:
        best = min(undecided, key=closeness)
        open_checks = [c for c in checks[best] if c.outcome == INCONCLUSIVE]
        # Items per metric that would decide every undecided mix, not only the closest.
        needed: dict[str, int | None] = {}
        for name in undecided:
            for c in checks[name]:
                if c.outcome == INCONCLUSIVE:
                    known = [n for n in (needed.get(c.metric), c.n_needed) if n]
                    needed[c.metric] = max(known) if known else None
        limits = " and ".join(f"n={n} ({metric_label(m)})" if n else f"more items ({metric_label(m)})"
                              for m, n in needed.items())
        who = (f"{best} fails no check conclusively" if len(undecided) == 1 else
               f"{', '.join(undecided)} fail no check conclusively and {best} comes closest")
        sentence = (f"Inconclusive: no mix passes at these sample sizes; {who} "
                    f"({'; '.join(fmt_change(metric_label(c.metric), c.change) for c in open_checks)}). "
                    f"Raise eval limits to {limits}" + (" to decide every mix." if len(undecided) > 1 else "."))
        return Recommendation(UNDECIDED, best, sentence)

    best = min((r.name for r in runs), key=closeness)
    failed = [c for c in checks[best] if not c.passed]
    reasons = "; ".join(f"{c.finding}" for c in failed)
    only = "only " if len(failed) == 1 else ""
    control = (" It is the domain-only control; no blend came closer." if by_name[best].is_control else "")
    sentence = (f"No mix meets both targets; closest: {best}, because it fails {only}{len(failed)} "
                f"check{'s' if len(failed) > 1 else ''} ({reasons}). Next: {failed[0].advice}.{control}")
    return Recommendation(NO_MIX, best, sentence)


# --- putting it together ---


def _table(base: RunScores, runs: list[RunScores], metrics: list[str], info: list[str], domain_metric: str,
           changes: dict[str, dict[str, PairedChange]], verdicts: dict[str, str], front: list[str],
           recommended: str | None) -> pl.DataFrame:
    def se(run: RunScores, metric: str) -> float | None:
        items = run.items.get(metric)
        return stats.standard_error(list(items.scores.values())) if items and items.scores else None

    rows = []
    for run in [base, *runs]:
        is_base = run is base
        row: dict = {"run": run.name, "is_base": is_base, "verdict": verdicts.get(run.name, "base"),
                     "domain": run.domain_score, "domain_se": se(run, domain_metric),
                     "domain_n": len(run.items[domain_metric]) if domain_metric in run.items else None}
        change = None if is_base else changes[run.name][domain_metric]
        row |= {"domain_delta": 0.0 if is_base else change.delta,
                "domain_ci_low": None if is_base else change.ci_low,
                "domain_ci_high": None if is_base else change.ci_high}
        for m in [*metrics, *info]:
            change = None if is_base else changes[run.name].get(m)
            row |= {m: run.general.get(m), f"{m} se": se(run, m),
                    f"{m} n": len(run.items[m]) if m in run.items else None,
                    f"{m} delta": 0.0 if is_base else (change.delta if change else None),
                    f"{m} ci_low": change.ci_low if change else None,
                    f"{m} ci_high": change.ci_high if change else None}
        general = None if is_base else changes[run.name]["general"]
        row |= {"general_change": 0.0 if is_base else general.delta,
                "general_change_ci_low": general.ci_low if general else None,
                "general_change_ci_high": general.ci_high if general else None,
                "on_pareto_front": run.name in front, "recommended": run.name == recommended}
        rows.append({k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()})
    return pl.DataFrame(rows, infer_schema_length=None)


def compare_runs(base: RunScores, runs: list[RunScores], *, tolerance: float = 0.02,
                 domain_target: float | None = None,
                 instruction_following_prefixes: list[str] | tuple[str, ...] = ("ifeval/",),
                 general_metrics: list[str] | None = None) -> Comparison:
    """Paired changes, every check, a verdict per run, the recommendation and the Pareto front.

    Raises ValueError when run names repeat or clash with the base's, or when a
    run lacks one of the base's verdict metrics (every run must be evaluated
    with the same eval config).
    """
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
    target_gain = target - base.domain_score
    prefixes = tuple(instruction_following_prefixes)
    domain_metric = base.domain_metric

    notes: list[str] = []
    changes: dict[str, dict[str, PairedChange]] = {}
    checks: dict[str, list[Check]] = {}
    verdicts: dict[str, str] = {}
    points = {base.name: (0.0, 0.0)}
    for run in runs:
        per_metric = {m: metric_change(m, base, run, base.general[m], run.general[m], notes) for m in metrics}
        per_metric |= {m: metric_change(m, base, run, base.general[m], run.general[m])
                       for m in info if m in run.general}
        per_metric[domain_metric] = metric_change(domain_metric, base, run, base.domain_score, run.domain_score,
                                                  notes)
        per_metric["general"] = general_change(metrics, base, run, per_metric)
        changes[run.name] = per_metric
        checks[run.name] = [domain_check(domain_metric, per_metric[domain_metric], target_gain, tolerance, run)]
        checks[run.name] += [general_check(m, per_metric[m], tolerance, run, m.startswith(prefixes)) for m in metrics]
        verdicts[run.name] = verdict_line(checks[run.name], per_metric["general"], tolerance)
        points[run.name] = (per_metric[domain_metric].delta, per_metric["general"].delta)
    front = pareto_front({n: p for n, p in points.items() if n != base.name})
    recommendation = recommend(runs, checks, changes, domain_metric, tolerance)
    table = _table(base, runs, metrics, info, domain_metric, changes, verdicts, front,
                   recommendation.run if recommendation.kind == SHIP else None)
    return Comparison(table=table, verdicts=verdicts, checks=checks, changes=changes, recommendation=recommendation,
                      pareto_front=front, points=points, general_metrics=metrics, info_metrics=info,
                      tolerance=tolerance, domain_target=target, base_name=base.name, domain_metric=domain_metric,
                      notes=notes)
