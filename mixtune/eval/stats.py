"""Paired comparisons with 95% intervals: is a change between base and tuned more than noise?

Every score here is a statistic over items (benchmark questions, held-out
test rows), and the base and the tuned model answer the *same* items, so a
change is measured on pairs. With ``b_i`` and ``t_i`` the base's and the
tuned model's score on item ``i`` of ``n``:

    score            x̄ = Σ x_i / n
    standard error   se(x̄) = s / √n, s the sample standard deviation (ddof=1);
                     lm-eval's ``mean_stderr`` for acc, exact_match and the like
    change           d̄ = Σ (t_i − b_i) / n, on the items both runs scored
    95% interval     percentile bootstrap of d̄ (Efron & Tibshirani 1993, *An
                     Introduction to the Bootstrap*, ch. 13): draw n item indices
                     with replacement, B = 2,000 times; the SAME indices for base
                     and tuned (paired, as in Koehn 2004 and Berg-Kirkpatrick et
                     al. 2012 for comparing NLP systems); the interval is the
                     α'/2 and 1 − α'/2 percentiles of the B resampled changes,
                     with α' the *expanded* level of Hesterberg (2015, "What
                     Teachers Should Know About the Bootstrap", sec. 4.2):
                     Φ⁻¹(1 − α'/2) = √(n/(n−1)) · t(1 − α/2, n−1). The plain
                     percentile interval is too narrow for small n (by the t/z
                     ratio and √((n−1)/n): about 2.5x at n = 3, 20% at n = 10);
                     the expanded one matches a t interval's width, and tends to
                     the plain one as n grows (α' = 0.048 at n = 171)
    no variation     when every pair changed by the same amount c (typically: all
    seen             identical, c = 0) the bootstrap sees no variance and would
                     say [c, c]; the interval is c ± 3/n instead: no item that
                     differs from the rest among n bounds the share of such items
                     at 3/n with 95% confidence (the rule of three, Hanley &
                     Lippman-Hand 1983), and a score in [0, 1] moves by at most
                     about that share. So identical results on 20 items are
                     inconclusive (±0.15), on 400 items retained (±0.0075)
    several metrics  an axis such as "general" is the mean of its metrics'
    (one axis)       changes, each metric weighted equally (a 57-subject MMLU does
                     not outvote ARC); its interval comes from a stratified
                     bootstrap: each metric's items are resampled within that
                     metric, independently, and the B resampled means of the
                     per-metric changes give the percentiles
    macro-F1         not a mean over items: each resample recomputes macro-F1 from
                     the resampled (reference, predicted label) pairs, for both
                     runs on the same indices

The bootstrap is ``scipy.stats.bootstrap`` (``method="percentile"`` at the
expanded level: BCa divides by zero when every pair is identical), seeded, so
the same results give the same interval. Fewer than two paired items give no
interval (NaN bounds): one item cannot say how much a score varies. For the
mean over metrics, the expanded level uses the smallest metric's n, and each
metric with no variation widens the interval by its ±3/n share of the mean.
For macro-F1 (not a mean over items) ±3/n for identical predictions is an
approximation: one changed item can move macro-F1 by more than 1/n.

``n_for_half_width`` answers "how many items would settle it": the interval's
half-width shrinks as 1/√n, so reaching half-width ``h`` from ``h₀`` at ``n₀``
items takes about ``n₀ (h₀ / h)²`` items.

Four intervals on one run are four chances of a false alarm; no multiple
comparison correction is applied (report readers see every interval).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

RESAMPLES = 2000
CONFIDENCE = 0.95
SEED = 0
_SAME = 1e-9  # differences this close are one value: float rounding, not variation
NO_LABEL = "<no label>"  # a prediction naming no label (mixtune.eval.domain.NO_LABEL): a miss, never a class


@dataclass(frozen=True)
class PairedChange:
    """Base vs tuned on ``n`` paired items: both scores with standard errors, the change and its interval."""

    base: float
    tuned: float
    base_se: float   # NaN when n < 2 or the statistic has no closed-form error (macro-F1)
    tuned_se: float
    delta: float     # tuned − base on the paired items
    ci_low: float    # NaN when there is no interval (n < 2)
    ci_high: float
    n: int           # paired items
    confidence: float = CONFIDENCE

    @property
    def has_interval(self) -> bool:
        return not (math.isnan(self.ci_low) or math.isnan(self.ci_high))

    @property
    def half_width(self) -> float:
        return (self.ci_high - self.ci_low) / 2


def standard_error(values: Sequence[float] | np.ndarray) -> float:
    """s / √n with the sample standard deviation (ddof=1); NaN for fewer than two values."""
    x = np.asarray(values, dtype=float)
    return float(x.std(ddof=1) / math.sqrt(x.size)) if x.size >= 2 else math.nan


def expanded_level(confidence: float, n: int) -> float:
    """Hesterberg's expanded level 1 − α': Φ⁻¹(1 − α'/2) = √(n/(n−1)) · t(1 − α/2, n−1); n ≥ 2."""
    from scipy.stats import norm, t

    alpha = 1.0 - confidence
    z = math.sqrt(n / (n - 1)) * t.ppf(1.0 - alpha / 2, n - 1)
    return float(1.0 - 2.0 * norm.sf(z))


def rule_of_three(n: int) -> float:
    """95% bound on the mean change of [0, 1] scores when no item of ``n`` varied: 3/n, at most 1."""
    return min(1.0, 3.0 / n)


def _interval(data: tuple[np.ndarray, ...], statistic, *, paired: bool, resamples: int, confidence: float,
              seed: int) -> tuple[float, float]:
    from scipy.stats import bootstrap

    n = min(d.shape[-1] for d in data)
    if n < 2:
        return math.nan, math.nan
    result = bootstrap(data, statistic, n_resamples=resamples, confidence_level=expanded_level(confidence, n),
                       method="percentile", paired=paired, vectorized=True, axis=-1, rng=np.random.default_rng(seed))
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def _pairs(base: Sequence[float], tuned: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    b, t = np.asarray(base, dtype=float), np.asarray(tuned, dtype=float)
    if b.shape != t.shape or b.ndim != 1:
        raise ValueError(f"paired scores need two 1-d arrays of one length; got {b.shape} and {t.shape}")
    return b, t


def paired_change(base: Sequence[float], tuned: Sequence[float], *, resamples: int = RESAMPLES,
                  confidence: float = CONFIDENCE, seed: int = SEED) -> PairedChange:
    """Mean score change on paired items (``base[i]`` and ``tuned[i]`` score the same item), with its interval.

    Raises ValueError for arrays of different length; empty input gives NaN scores and n = 0.
    """
    b, t = _pairs(base, tuned)
    if b.size == 0:
        return PairedChange(math.nan, math.nan, math.nan, math.nan, math.nan, math.nan, math.nan, 0, confidence)
    differences = t - b
    if b.size >= 2 and np.ptp(differences) <= _SAME:  # no variation seen: the rule of three
        shift = float(differences.mean())
        low, high = shift - rule_of_three(b.size), shift + rule_of_three(b.size)
    else:
        low, high = _interval((differences,), np.mean, paired=False, resamples=resamples, confidence=confidence,
                              seed=seed)
    return PairedChange(base=float(b.mean()), tuned=float(t.mean()), base_se=standard_error(b),
                        tuned_se=standard_error(t), delta=float(differences.mean()), ci_low=low, ci_high=high,
                        n=int(b.size), confidence=confidence)


def mean_of_changes(pairs: Sequence[tuple[Sequence[float], Sequence[float]]], *, resamples: int = RESAMPLES,
                    confidence: float = CONFIDENCE, seed: int = SEED) -> PairedChange:
    """Equal-weight mean over metrics of each metric's paired mean change; stratified bootstrap interval.

    ``pairs`` holds one (base, tuned) pair of item arrays per metric. The scores
    are the means of the metrics' means; ``n`` is the total of paired items;
    the standard errors are those of a mean of independent means,
    √(Σ se_k²) / K. Raises ValueError for an empty list.
    """
    if not pairs:
        raise ValueError("mean_of_changes needs at least one metric")
    arrays = [_pairs(b, t) for b, t in pairs]
    if any(b.size == 0 for b, _ in arrays):
        return PairedChange(math.nan, math.nan, math.nan, math.nan, math.nan, math.nan, math.nan, 0, confidence)
    differences = tuple(t - b for b, t in arrays)

    def mean_of_means(*samples: np.ndarray, axis: int = -1) -> np.ndarray:
        return np.mean([s.mean(axis=axis) for s in samples], axis=0)

    k = len(arrays)
    low, high = _interval(differences, mean_of_means, paired=False, resamples=resamples, confidence=confidence,
                          seed=seed)
    if min(d.size for d in differences) >= 2:  # a metric with no variation adds its rule-of-three share
        unseen = sum(rule_of_three(d.size) for d in differences if np.ptp(d) <= _SAME) / k
        low, high = low - unseen, high + unseen
    return PairedChange(
        base=float(np.mean([b.mean() for b, _ in arrays])), tuned=float(np.mean([t.mean() for _, t in arrays])),
        base_se=math.sqrt(sum(standard_error(b) ** 2 for b, _ in arrays)) / k,
        tuned_se=math.sqrt(sum(standard_error(t) ** 2 for _, t in arrays)) / k,
        delta=float(np.mean([d.mean() for d in differences])), ci_low=low, ci_high=high,
        n=int(sum(b.size for b, _ in arrays)), confidence=confidence)


def _macro_f1(references: np.ndarray, predicted: np.ndarray, classes: int) -> np.ndarray:
    """Macro-F1 along the last axis of integer-coded labels; -1 predicted = no label (a miss, not a class).

    A class neither referenced nor predicted in a (re)sample has no F1 and is left out of its mean,
    as ``mixtune.eval.domain.label_scores`` does.
    """
    f1_sum = np.zeros(references.shape[:-1])
    counted = np.zeros(references.shape[:-1])
    for c in range(classes):
        actual = (references == c).sum(axis=-1)
        guessed = (predicted == c).sum(axis=-1)
        hits = ((references == c) & (predicted == c)).sum(axis=-1)
        present = (actual + guessed) > 0
        f1_sum += np.where(present, 2 * hits / np.maximum(actual + guessed, 1), 0.0)
        counted += present
    return np.where(counted > 0, f1_sum / np.maximum(counted, 1), 0.0)


def paired_macro_f1_change(references: Sequence[str], base_predicted: Sequence[str], tuned_predicted: Sequence[str],
                           *, resamples: int = RESAMPLES, confidence: float = CONFIDENCE,
                           seed: int = SEED) -> PairedChange:
    """Macro-F1 change on paired items (same references); each resample recomputes both runs' macro-F1.

    Labels are compared as given (normalise them first); ``NO_LABEL`` predictions are misses.
    Raises ValueError for sequences of different length.
    """
    if not len(references) == len(base_predicted) == len(tuned_predicted):
        raise ValueError("references and both predictions must have one length")
    classes = sorted({*references, *base_predicted, *tuned_predicted} - {NO_LABEL})
    code = {label: i for i, label in enumerate(classes)}

    def encode(labels: Sequence[str]) -> np.ndarray:
        return np.array([code.get(label, -1) for label in labels], dtype=int)

    refs, base, tuned = encode(references), encode(base_predicted), encode(tuned_predicted)
    if refs.size == 0:
        return PairedChange(math.nan, math.nan, math.nan, math.nan, math.nan, math.nan, math.nan, 0, confidence)

    def change(r: np.ndarray, b: np.ndarray, t: np.ndarray, axis: int = -1) -> np.ndarray:
        return _macro_f1(r, t, len(classes)) - _macro_f1(r, b, len(classes))

    base_f1, tuned_f1 = float(_macro_f1(refs, base, len(classes))), float(_macro_f1(refs, tuned, len(classes)))
    if refs.size >= 2 and np.array_equal(base, tuned):
        low, high = -rule_of_three(refs.size), rule_of_three(refs.size)
    else:
        low, high = _interval((refs, base, tuned), change, paired=True, resamples=resamples, confidence=confidence,
                              seed=seed)
    return PairedChange(base=base_f1, tuned=tuned_f1, base_se=math.nan, tuned_se=math.nan, delta=tuned_f1 - base_f1,
                        ci_low=low, ci_high=high, n=int(refs.size), confidence=confidence)


def n_for_half_width(change: PairedChange, half_width: float) -> int | None:
    """Items at which the interval's half-width would shrink to ``half_width`` (width ∝ 1/√n).

    None when there is no interval to extrapolate from; at least ``change.n``.
    When every pair is identical (zero width) the answer is ``change.n``.
    """
    if not change.has_interval or half_width <= 0:
        return None
    if change.half_width <= half_width:
        return change.n
    return math.ceil(change.n * (change.half_width / half_width) ** 2)
