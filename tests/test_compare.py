"""Checks, verdicts, the recommendation and the Pareto front on hand-built per-item results."""

from __future__ import annotations

import pytest

from mixtune.eval.compare import (
    BELOW_TARGET,
    BOTH_IMPROVED,
    DEGRADED,
    DOMAIN_BELOW_TARGET,
    GENERAL_DEGRADED,
    GENERAL_RETAINED,
    IF_DEGRADED,
    IMPROVED,
    INCONCLUSIVE,
    MET,
    NO_MIX,
    RETAINED,
    SHIP,
    UNDECIDED,
    Items,
    RunScores,
    compare_runs,
    headline_metrics,
    metric_label,
    pareto_front,
)

DOMAIN = "domain/rouge_l"
HEADLINE = ["arc_challenge/acc_norm", "gsm8k/exact_match.strict-match", "ifeval/prompt_level_strict_acc", "mmlu/acc"]
# Share of items the base answers right, per metric.
BASE_RIGHT = {"arc_challenge/acc_norm": 0.45, "gsm8k/exact_match.strict-match": 0.30,
              "ifeval/prompt_level_strict_acc": 0.40, "mmlu/acc": 0.50, "mmlu_medical/acc": 0.50}


def base_run(n: int = 400) -> RunScores:
    """n items per metric: the first share right; domain ROUGE-L varying between 0.20 and 0.29 by item."""
    items = {m: Items(scores={f"q{i}": float(i < round(share * n)) for i in range(n)})
             for m, share in BASE_RIGHT.items()}
    items[DOMAIN] = Items(scores={f"r{i}": 0.20 + 0.01 * (i % 10) for i in range(n)})
    return _scored("base", items)


def _scored(name: str, items: dict[str, Items], **mix) -> RunScores:
    mean = {m: sum(it.scores.values()) / len(it.scores) for m, it in items.items()}
    return RunScores(name, mean[DOMAIN], {m: v for m, v in mean.items() if m != DOMAIN}, items, DOMAIN, **mix)


def tuned(base: RunScores, name: str, domain_gain: float = 0.0, domain_noise: float = 0.0,
          flips: dict[str, int] | None = None, **mix) -> RunScores:
    """The base's items with ``flips[m]`` answers turned right (positive) or wrong (negative), and the domain
    score moved by ``domain_gain`` plus alternating ±``domain_noise`` per item."""
    items = {}
    for metric, it in base.items.items():
        scores = dict(it.scores)
        if metric == DOMAIN:
            scores = {k: v + domain_gain + (domain_noise if i % 2 else -domain_noise)
                      for i, (k, v) in enumerate(scores.items())}
        else:
            change = (flips or {}).get(metric, 0)
            wanted = 0.0 if change > 0 else 1.0
            for key in [k for k, v in scores.items() if v == wanted][:abs(change)]:
                scores[key] = 1.0 - wanted
        items[metric] = Items(scores=scores)
    return _scored(name, items, **mix)


BASE = base_run()


def outcomes(comparison, run: str) -> dict[str, str]:
    return {c.metric: c.outcome for c in comparison.checks[run]}


def test_headline_metrics_pick_one_standard_metric_per_benchmark_and_skip_info_keys():
    keys = {**BASE_RIGHT, "ifeval/inst_level_strict_acc": 0.5, "gsm8k/exact_match.flexible-extract": 0.3,
            "arc_challenge/acc": 0.4}
    assert headline_metrics(keys) == HEADLINE
    assert headline_metrics({"hellaswag/acc": 0.3, "hellaswag/acc_norm": 0.4, "squad/f1": 0.2}) == [
        "hellaswag/acc_norm", "squad/f1"]


def test_labels_say_what_a_number_is():
    assert metric_label("mmlu/acc") == "MMLU acc"
    assert metric_label("domain/rouge_l") == "domain ROUGE-L"
    assert metric_label("gsm8k/exact_match.strict-match") == "GSM8K exact match (strict)"
    assert metric_label("squad/f1") == "squad f1"


def test_the_base_evaluated_again_is_retained_and_below_the_domain_target_at_400_items():
    comparison = compare_runs(BASE, [tuned(BASE, "same")])
    change = comparison.changes["same"]["mmlu/acc"]
    assert (change.delta, change.ci_low, change.ci_high, change.n) == (0.0, -0.0075, 0.0075, 400)  # ±3/n
    assert outcomes(comparison, "same") == {DOMAIN: BELOW_TARGET, **{m: RETAINED for m in HEADLINE}}
    assert comparison.verdicts["same"] == f"{DOMAIN_BELOW_TARGET}: domain ROUGE-L"


def test_a_large_consistent_gain_is_improved_and_the_mix_ships():
    comparison = compare_runs(BASE, [tuned(BASE, "d75-math1", domain_gain=0.05,
                                           flips={m: 40 for m in HEADLINE}, domain_percent=75, weights={"math": 1})])
    assert outcomes(comparison, "d75-math1") == {DOMAIN: MET, **{m: IMPROVED for m in HEADLINE}}
    assert comparison.verdicts["d75-math1"] == BOTH_IMPROVED
    rec = comparison.recommendation
    assert (rec.kind, rec.run) == (SHIP, "d75-math1")
    assert rec.sentence.startswith("Ship d75-math1: domain ROUGE-L +0.050 (95% CI [+0.04")
    assert "n=400), general +0.100 (95% CI [" in rec.sentence
    assert rec.sentence.endswith("every check within tolerance ±0.02.")


def test_every_failed_check_is_listed_with_its_metric_and_advice_the_control_can_act_on():
    # The reported case: the domain-only control lost MMLU and gained nothing on the domain.
    comparison = compare_runs(BASE, [tuned(BASE, "d100", flips={"mmlu/acc": -40}, domain_percent=100)])
    checks = {c.metric: c for c in comparison.checks["d100"]}
    assert checks["mmlu/acc"].outcome == DEGRADED and checks[DOMAIN].outcome == BELOW_TARGET
    assert comparison.verdicts["d100"] == f"{GENERAL_DEGRADED}: MMLU acc; {DOMAIN_BELOW_TARGET}: domain ROUGE-L"
    assert "MMLU acc -0.100 (95% CI [" in checks["mmlu/acc"].finding
    assert checks["mmlu/acc"].advice == "blend in general data: run a mix below 100% domain with the stem category"
    assert "already all domain data" in checks[DOMAIN].advice
    assert "target +0.020" in checks[DOMAIN].finding
    for advice in (checks["mmlu/acc"].advice, checks[DOMAIN].advice):
        assert "weight" not in advice and "lower domain_percent" not in advice


def test_blend_advice_names_the_share_and_the_category_that_trains_the_metric():
    runs = [tuned(BASE, "d75-math1", domain_gain=0.05, flips={"gsm8k/exact_match.strict-match": -40},
                  domain_percent=75, weights={"math": 1}),
            tuned(BASE, "d50-code1", domain_gain=0.05, flips={"gsm8k/exact_match.strict-match": -40},
                  domain_percent=50, weights={"code": 1}),
            tuned(BASE, "d60-math1", domain_gain=0.05, flips={"ifeval/prompt_level_strict_acc": -40},
                  domain_percent=60, weights={"math": 1})]
    comparison = compare_runs(BASE, runs)
    advice = {name: [c.advice for c in checks if not c.passed] for name, checks in comparison.checks.items()}
    assert advice["d75-math1"] == ["lower domain_percent below 75 or raise the math weight"]
    assert advice["d50-code1"] == ["lower domain_percent below 50 or add the math category to the mix"]
    assert advice["d60-math1"] == ["lower domain_percent below 60 or add the instruction-following category to the mix"]
    assert comparison.verdicts["d60-math1"] == f"{IF_DEGRADED}: IFEval prompt-level strict acc"


def test_a_small_noisy_change_is_inconclusive_with_the_n_that_would_decide_it():
    small = base_run(n=20)
    comparison = compare_runs(small, [tuned(small, "d75-math1", domain_gain=0.05, domain_noise=0.3,
                                            flips={"mmlu/acc": -2}, domain_percent=75, weights={"math": 1})])
    checks = {c.metric: c for c in comparison.checks["d75-math1"]}
    assert checks["mmlu/acc"].outcome == INCONCLUSIVE and checks[DOMAIN].outcome == INCONCLUSIVE
    assert checks["mmlu/acc"].n_needed > 20 and checks[DOMAIN].n_needed > 20
    assert f"n={checks['mmlu/acc'].n_needed}" in checks["mmlu/acc"].advice
    assert "per subject" in checks["mmlu/acc"].advice
    assert checks[DOMAIN].advice.startswith("raise eval.domain.max_rows")
    # 20 unchanged answers cannot rule out a change beyond the tolerance either (±3/20).
    assert comparison.verdicts["d75-math1"] == (
        "inconclusive: domain ROUGE-L (n=20), ARC-Challenge acc_norm (n=20), GSM8K exact match (strict) (n=20), "
        "IFEval prompt-level strict acc (n=20), MMLU acc (n=20)")


def test_recommendation_one_mix_passes():
    runs = [tuned(BASE, "d100", domain_gain=0.08, flips={"mmlu/acc": -40}, domain_percent=100),
            tuned(BASE, "d75-math1", domain_gain=0.05, domain_percent=75, weights={"math": 1}),
            tuned(BASE, "d50-math1", domain_gain=0.01, domain_percent=50, weights={"math": 1})]
    comparison = compare_runs(BASE, runs)
    assert [c for c in comparison.checks["d75-math1"] if not c.passed] == []
    assert comparison.verdicts["d75-math1"] == GENERAL_RETAINED
    assert (comparison.recommendation.kind, comparison.recommendation.run) == (SHIP, "d75-math1")
    assert comparison.table.filter(comparison.table["recommended"])["run"].to_list() == ["d75-math1"]


def test_recommendation_prefers_a_passing_blend_and_names_the_control_only_with_its_reason():
    control = tuned(BASE, "d100", domain_gain=0.10, domain_percent=100)
    blend = tuned(BASE, "d75-math1", domain_gain=0.05, domain_percent=75, weights={"math": 1})
    both = compare_runs(BASE, [control, blend]).recommendation
    assert both.run == "d75-math1"
    assert "The domain-only control d100 passed too" in both.sentence
    failing_blend = tuned(BASE, "d75-math1", domain_gain=0.0, domain_percent=75, weights={"math": 1})
    only_control = compare_runs(BASE, [control, failing_blend]).recommendation
    assert (only_control.kind, only_control.run) == (SHIP, "d100")
    assert "It is the domain-only control: no blend passed" in only_control.sentence


def test_recommendation_none_passes_names_the_closest_and_why():
    runs = [tuned(BASE, "d100", domain_gain=0.08, flips={"mmlu/acc": -40, "arc_challenge/acc_norm": -40},
                  domain_percent=100),
            tuned(BASE, "d75-math1", domain_gain=0.005, domain_percent=75, weights={"math": 1})]
    rec = compare_runs(BASE, runs).recommendation
    assert (rec.kind, rec.run) == (NO_MIX, "d75-math1")
    assert rec.sentence.startswith("No mix meets both targets; closest: d75-math1, because it fails only 1 check "
                                   "(domain ROUGE-L +0.005 (95% CI [-0.002, +0.013], n=400): the whole interval "
                                   "is below the target +0.020).")
    assert rec.sentence.endswith("Next: raise domain_percent above 75, add domain training data or train more steps.")


def test_recommendation_all_inconclusive_asks_for_more_items():
    small = base_run(n=20)
    runs = [tuned(small, "d100", domain_gain=0.05, domain_noise=0.3, domain_percent=100),
            tuned(small, "d75-math1", domain_gain=0.04, domain_noise=0.3, flips={"mmlu/acc": -2},
                  domain_percent=75, weights={"math": 1})]
    comparison = compare_runs(small, runs)
    assert all(c.outcome == INCONCLUSIVE for checks in comparison.checks.values() for c in checks)
    rec = comparison.recommendation
    assert rec.kind == UNDECIDED and rec.run == "d100"  # as many open checks; the smaller shortfall
    assert rec.sentence.startswith("Inconclusive: no mix passes at these sample sizes; d100, d75-math1 fail no "
                                   "check conclusively and d100 comes closest (domain ROUGE-L +0.050 (95% CI [")
    # The limits decide every undecided mix: the largest n per metric over both runs.
    needed = {m: max(c.n_needed for checks in comparison.checks.values() for c in checks if c.metric == m)
              for m in (DOMAIN, "mmlu/acc")}
    assert f"Raise eval limits to n={needed[DOMAIN]} (domain ROUGE-L) and n=" in rec.sentence
    assert rec.sentence.endswith(f"and n={needed['mmlu/acc']} (MMLU acc) to decide every mix.")


def test_without_per_item_results_every_check_is_inconclusive():
    base = RunScores("base", 0.30, {"mmlu/acc": 0.50}, domain_metric=DOMAIN)
    run = RunScores("mix", 0.50, {"mmlu/acc": 0.40}, domain_metric=DOMAIN)
    comparison = compare_runs(base, [run])
    assert outcomes(comparison, "mix") == {DOMAIN: INCONCLUSIVE, "mmlu/acc": INCONCLUSIVE}
    assert "no per-item results" in comparison.checks["mix"][0].finding
    assert comparison.changes["mix"]["mmlu/acc"].delta == pytest.approx(-0.1)
    assert comparison.recommendation.kind == UNDECIDED


def test_explicit_domain_target_and_tolerance_move_the_verdict():
    run = tuned(BASE, "mix", domain_gain=0.05, flips={"mmlu/acc": -12})  # MMLU -0.03
    assert outcomes(compare_runs(BASE, [run], domain_target=BASE.domain_score + 0.1), "mix")[DOMAIN] == BELOW_TARGET
    assert outcomes(compare_runs(BASE, [run], domain_target=BASE.domain_score + 0.04), "mix")[DOMAIN] == MET
    strict = outcomes(compare_runs(BASE, [run], tolerance=0.02), "mix")["mmlu/acc"]
    assert strict in (DEGRADED, INCONCLUSIVE)
    assert outcomes(compare_runs(BASE, [run], tolerance=0.08), "mix")["mmlu/acc"] == RETAINED


def test_only_headline_metrics_decide_the_verdict():
    run = tuned(BASE, "mix", domain_gain=0.05, flips={"mmlu_medical/acc": -100})
    comparison = compare_runs(BASE, [run])
    assert comparison.verdicts["mix"] == GENERAL_RETAINED
    assert comparison.general_metrics == HEADLINE
    assert comparison.info_metrics == ["mmlu_medical/acc"]
    assert comparison.changes["mix"]["mmlu_medical/acc"].delta == pytest.approx(-0.25)


def test_table_holds_base_first_with_standard_errors_n_deltas_intervals_and_flags():
    comparison = compare_runs(BASE, [tuned(BASE, "a", domain_gain=0.05, flips={"mmlu/acc": 40}),
                                     tuned(BASE, "b", domain_gain=0.02, flips={"mmlu/acc": -40})])
    table = comparison.table
    assert table["run"].to_list() == ["base", "a", "b"]
    assert table["mmlu/acc delta"].to_list() == pytest.approx([0.0, 0.1, -0.1])
    assert table["mmlu/acc n"].to_list() == [400, 400, 400]
    assert table["mmlu/acc se"][0] == pytest.approx(0.5 / 20, rel=0.01)
    assert table["mmlu/acc ci_low"][0] is None and table["mmlu/acc ci_low"][1] > 0
    assert table["domain_delta"].to_list() == pytest.approx([0.0, 0.05, 0.02])
    assert table["general_change"].to_list() == pytest.approx([0.0, 0.025, -0.025])
    assert table["on_pareto_front"].to_list() == [False, True, False]
    assert comparison.points["base"] == (0.0, 0.0)
    assert comparison.n("mmlu/acc") == 400


def test_pareto_front_names_the_undominated_mixes_highest_domain_gain_first():
    points = {"d70": (0.10, 0.00), "d30": (0.05, 0.01), "d50": (0.04, -0.01), "twin": (0.05, 0.01)}
    assert pareto_front(points) == ["d70", "d30", "twin"]


def test_runs_scored_on_different_items_are_compared_on_the_shared_ones_and_say_so():
    run = tuned(BASE, "mix", domain_gain=0.05)
    run.items["mmlu/acc"] = Items(scores=dict(list(run.items["mmlu/acc"].scores.items())[:300]))
    comparison = compare_runs(BASE, [run])
    assert comparison.changes["mix"]["mmlu/acc"].n == 300
    assert any("compared on the 300 items both runs scored" in note for note in comparison.notes)


def test_run_missing_a_base_metric_is_refused_with_its_name():
    incomplete = RunScores("short", 0.4, {k: v for k, v in BASE.general.items() if not k.startswith("gsm8k")})
    with pytest.raises(ValueError, match=r"'short' has no score for \['gsm8k/exact_match.strict-match'\]"):
        compare_runs(BASE, [incomplete])


def test_duplicate_run_names_are_refused():
    with pytest.raises(ValueError, match="unique"):
        compare_runs(BASE, [tuned(BASE, "mix"), tuned(BASE, "mix")])


def test_tolerance_description_states_the_rule_the_checks_apply():
    """The config's words for tolerance: interval excludes zero AND the change exceeds it; never "noise" alone."""
    import math

    from mixtune.eval.compare import general_check
    from mixtune.eval.config import EvalConfig
    from mixtune.eval.stats import PairedChange

    text = EvalConfig.model_fields["tolerance"].description
    assert "95% interval excludes zero" in text and "below -tolerance" in text and "noise" not in text
    run = base_run(10)

    def check(delta: float, ci_low: float, ci_high: float) -> str:
        change = PairedChange(0.5, 0.5 + delta, math.nan, math.nan, delta, ci_low, ci_high, 400)
        return general_check("arc_challenge/acc_norm", change, 0.02, run, False).outcome

    assert check(-0.05, -0.08, -0.02) == DEGRADED  # interval below zero and the change beyond tolerance
    assert check(-0.05, -0.11, 0.01) != DEGRADED  # beyond tolerance, but the interval reaches zero
    assert check(-0.01, -0.015, -0.005) == RETAINED  # a real loss, within tolerance
    assert check(0.05, 0.02, 0.08) == IMPROVED and check(0.01, 0.005, 0.015) != IMPROVED
