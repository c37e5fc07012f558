"""Paired bootstrap intervals on constructed per-item data whose answer is known."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mixtune.eval.domain import label_scores
from mixtune.eval.stats import (
    NO_LABEL,
    PairedChange,
    expanded_level,
    mean_of_changes,
    n_for_half_width,
    paired_change,
    paired_macro_f1_change,
    standard_error,
)


def test_identical_results_give_a_zero_change_bounded_by_the_rule_of_three():
    scores = [1.0, 0.0, 1.0, 1.0, 0.0, 0.5]
    change = paired_change(scores, scores)
    assert (change.delta, change.ci_low, change.ci_high, change.n) == (0.0, -0.5, 0.5, 6)  # ±3/n
    assert change.base == change.tuned == pytest.approx(3.5 / 6)
    many = paired_change([0.0, 1.0] * 200, [0.0, 1.0] * 200)
    assert (many.ci_low, many.ci_high) == (-0.0075, 0.0075)


def test_small_samples_get_the_expanded_percentile_level():
    assert expanded_level(0.95, 1000) == pytest.approx(0.95, abs=0.001)
    assert expanded_level(0.95, 20) == pytest.approx(0.968, abs=0.001)
    from scipy.stats import bootstrap

    base, tuned = np.array([0.2, 0.5, 0.1, 0.9, 0.4]), np.array([0.3, 0.9, 0.1, 0.6, 0.8])
    plain = bootstrap((tuned - base,), np.mean, n_resamples=2000, method="percentile",
                      rng=np.random.default_rng(0)).confidence_interval
    change = paired_change(base, tuned)
    assert change.ci_low < plain.low and change.ci_high > plain.high  # wider than the plain percentile
    tiny = paired_change([0.0, 1.0, 0.5], [0.5, 1.0, 1.0])  # n = 3: the level is ~1, the whole resample range
    assert (tiny.ci_low, tiny.ci_high) == (pytest.approx(0.0), pytest.approx(0.5))


def test_a_large_consistent_gain_has_an_interval_above_zero():
    base = [0.0] * 300 + [1.0] * 100
    tuned = [1.0] * 120 + [0.0] * 180 + [1.0] * 100  # 120 of 400 items newly right, none lost
    change = paired_change(base, tuned)
    assert change.delta == pytest.approx(0.3)
    assert 0.25 < change.ci_low < 0.3 < change.ci_high < 0.35


def test_interval_matches_the_normal_theory_width_for_a_known_mean_difference():
    rng = np.random.default_rng(7)
    base = rng.normal(0.5, 0.2, 900)
    tuned = base + 0.05 + rng.normal(0.0, 0.3, 900)  # paired noise sd 0.3: half-width 1.96 * 0.3 / 30
    change = paired_change(base, tuned)
    assert change.ci_low < 0.05 < change.ci_high
    assert change.half_width == pytest.approx(1.96 * 0.3 / 30, rel=0.15)


def test_the_pairing_removes_what_both_runs_share():
    # Item difficulty varies a lot, the tuned model is 0.01 ± 0.002 better on every item: an unpaired
    # comparison could not tell, the paired one can.
    base = np.linspace(0.0, 0.9, 50)
    change = paired_change(base, base + 0.01 + np.tile([0.002, -0.002], 25))
    assert 0.009 < change.ci_low < 0.01 < change.ci_high < 0.011
    assert change.base_se > 0.03  # each score on its own is far noisier than the change
    constant = paired_change(base, base + 0.01)  # no variation seen at all: the rule of three, 0.01 ± 3/50
    assert (constant.ci_low, constant.ci_high) == (pytest.approx(-0.05), pytest.approx(0.07))


def test_same_data_same_interval_and_a_different_seed_moves_it_only_slightly():
    rng = np.random.default_rng(1)
    base, tuned = rng.integers(0, 2, 80).astype(float), rng.integers(0, 2, 80).astype(float)
    first, again, other = paired_change(base, tuned), paired_change(base, tuned), paired_change(base, tuned, seed=3)
    assert (first.ci_low, first.ci_high) == (again.ci_low, again.ci_high)
    assert other.ci_low == pytest.approx(first.ci_low, abs=0.03)


def test_one_item_has_no_interval_and_mismatched_lengths_are_refused():
    single = paired_change([0.0], [1.0])
    assert single.delta == 1.0 and single.n == 1 and not single.has_interval
    assert math.isnan(paired_change([], []).delta)
    with pytest.raises(ValueError, match="one length"):
        paired_change([1.0, 0.0], [1.0])


def test_standard_error_is_the_sample_sd_over_root_n():
    assert standard_error([0.0, 1.0, 0.0, 1.0]) == pytest.approx(np.std([0, 1, 0, 1], ddof=1) / 2)
    assert math.isnan(standard_error([1.0]))


def test_mean_of_changes_weights_each_metric_equally_not_each_item():
    small = ([0.0] * 50, [0.0] * 30 + [1.0] * 20)  # +0.4 on 50 items
    large = ([1.0] * 1000, [1.0] * 1000)  # unchanged on 1000 items
    change = mean_of_changes([small, large])
    assert change.delta == pytest.approx(0.2)  # item-weighted it would be 20 / 1050
    assert change.n == 1050
    assert change.base == pytest.approx(0.5) and change.tuned == pytest.approx(0.7)
    # Only the small metric varies: half that metric's own interval, plus half the unchanged
    # metric's rule-of-three share (3/1000) on each side.
    alone = paired_change(*small)
    assert change.half_width == pytest.approx(alone.half_width / 2 + 0.0015, rel=0.15)
    with pytest.raises(ValueError):
        mean_of_changes([])


def test_macro_f1_change_matches_the_domain_metric_and_resamples_labels():
    refs = ["yes", "no", "maybe"] * 20
    base_pred = ["yes"] * 60
    tuned_pred = refs[:50] + [NO_LABEL] * 10
    change = paired_macro_f1_change(refs, base_pred, tuned_pred)
    labels = ["yes", "no", "maybe"]
    expected_base = label_scores(refs, base_pred, labels)["macro_f1"]
    expected_tuned = label_scores(refs, tuned_pred, labels)["macro_f1"]
    assert (change.base, change.tuned) == (pytest.approx(expected_base), pytest.approx(expected_tuned))
    assert change.delta == pytest.approx(expected_tuned - expected_base)
    assert 0 < change.ci_low < change.delta < change.ci_high
    same = paired_macro_f1_change(refs, tuned_pred, tuned_pred)
    assert (same.delta, same.ci_low, same.ci_high) == (0.0, -0.05, 0.05)  # ±3/n


def test_items_needed_follow_one_over_root_n():
    change = PairedChange(0.5, 0.45, 0.05, 0.05, -0.05, -0.15, 0.05, 100)  # half-width 0.1 at n = 100
    assert n_for_half_width(change, 0.02) == 2500
    assert n_for_half_width(change, 0.2) == 100  # already narrow enough: no fewer than measured
    no_interval = PairedChange(0.5, 0.45, math.nan, math.nan, -0.05, math.nan, math.nan, 1)
    assert n_for_half_width(no_interval, 0.02) is None
