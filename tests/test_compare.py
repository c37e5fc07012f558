"""Verdicts, deltas and the Pareto front on synthetic score tables."""

from __future__ import annotations

import pytest

from mixtune.eval.compare import (
    BOTH_IMPROVED,
    DOMAIN_BELOW_TARGET,
    GENERAL_DEGRADED,
    GENERAL_RETAINED,
    IF_DEGRADED,
    RunScores,
    compare_runs,
    headline_metrics,
    pareto_front,
)

BASE_GENERAL = {
    "mmlu/acc": 0.50, "mmlu_medical/acc": 0.50,
    "ifeval/prompt_level_strict_acc": 0.40, "ifeval/inst_level_strict_acc": 0.50,
    "gsm8k/exact_match.strict-match": 0.30, "gsm8k/exact_match.flexible-extract": 0.35,
    "arc_challenge/acc": 0.40, "arc_challenge/acc_norm": 0.45,
}
BASE = RunScores("base", domain_score=0.30, general=BASE_GENERAL)
HEADLINE = ["arc_challenge/acc_norm", "gsm8k/exact_match.strict-match", "ifeval/prompt_level_strict_acc", "mmlu/acc"]


def run(name: str, domain: float, **changes: float) -> RunScores:
    """A run whose general scores are the base's plus ``changes`` (keys use __ for / and _dot_ for .)."""
    general = dict(BASE_GENERAL)
    for key, delta in changes.items():
        real = key.replace("__", "/").replace("_dot_", ".")
        general[real] = BASE_GENERAL[real] + delta
    return RunScores(name, domain_score=domain, general=general)


def test_headline_metrics_pick_one_standard_metric_per_benchmark_and_skip_info_keys():
    assert headline_metrics(BASE_GENERAL) == HEADLINE
    assert headline_metrics({"hellaswag/acc": 0.3, "hellaswag/acc_norm": 0.4, "squad/f1": 0.2}) == [
        "hellaswag/acc_norm", "squad/f1"]


@pytest.mark.parametrize("changes, domain, expected", [
    ({"mmlu__acc": -0.01, "arc_challenge__acc_norm": 0.01}, 0.40, GENERAL_RETAINED),
    ({"mmlu__acc": -0.05}, 0.40, GENERAL_DEGRADED),
    ({"gsm8k__exact_match_dot_strict-match": -0.03}, 0.40, GENERAL_DEGRADED),
    ({"ifeval__prompt_level_strict_acc": -0.05}, 0.40, IF_DEGRADED),
    ({}, 0.31, DOMAIN_BELOW_TARGET),
    ({"mmlu__acc": 0.03, "ifeval__prompt_level_strict_acc": 0.03, "gsm8k__exact_match_dot_strict-match": 0.03,
      "arc_challenge__acc_norm": 0.03}, 0.45, BOTH_IMPROVED),
])
def test_verdict_names_the_action_for_each_case(changes, domain, expected):
    comparison = compare_runs(BASE, [run("mix", domain, **changes)], tolerance=0.02)
    assert comparison.verdicts == {"mix": expected}


def test_drop_of_exactly_the_tolerance_and_gain_of_exactly_the_tolerance_pass():
    comparison = compare_runs(BASE, [run("edge", 0.32, mmlu__acc=-0.02)], tolerance=0.02)
    assert comparison.verdicts["edge"] == GENERAL_RETAINED


def test_general_degradation_outranks_instruction_following_and_domain():
    runs = [run("all_fell", 0.31, mmlu__acc=-0.1, ifeval__prompt_level_strict_acc=-0.1),
            run("if_and_domain", 0.31, ifeval__prompt_level_strict_acc=-0.1)]
    verdicts = compare_runs(BASE, runs).verdicts
    assert verdicts == {"all_fell": GENERAL_DEGRADED, "if_and_domain": IF_DEGRADED}


def test_only_headline_metrics_decide_the_verdict():
    # mmlu_medical moves with a medical domain; a non-headline ifeval metric is reported, not judged.
    comparison = compare_runs(BASE, [run("mix", 0.40, mmlu_medical__acc=-0.2, ifeval__inst_level_strict_acc=-0.2)])
    assert comparison.verdicts["mix"] == GENERAL_RETAINED
    assert comparison.general_metrics == HEADLINE
    assert comparison.info_metrics == ["mmlu_medical/acc"]


def test_explicit_domain_target_replaces_base_plus_tolerance():
    runs = [run("mix", 0.40)]
    assert compare_runs(BASE, runs, domain_target=0.5).verdicts["mix"] == DOMAIN_BELOW_TARGET
    assert compare_runs(BASE, runs, domain_target=0.4).verdicts["mix"] == GENERAL_RETAINED


def test_larger_tolerance_turns_a_degradation_into_retained():
    runs = [run("mix", 0.40, mmlu__acc=-0.04)]
    assert compare_runs(BASE, runs, tolerance=0.02).verdicts["mix"] == GENERAL_DEGRADED
    assert compare_runs(BASE, runs, tolerance=0.05).verdicts["mix"] == GENERAL_RETAINED


def test_table_holds_base_first_with_deltas_retention_and_front_flag():
    comparison = compare_runs(BASE, [run("a", 0.40, mmlu__acc=0.04), run("b", 0.35, mmlu__acc=-0.08)])
    table = comparison.table
    assert table["run"].to_list() == ["base", "a", "b"]
    assert table["verdict"].to_list() == ["base", GENERAL_RETAINED, GENERAL_DEGRADED]
    assert table["mmlu/acc delta"].to_list() == pytest.approx([0.0, 0.04, -0.08])
    assert table["domain_delta"].to_list() == pytest.approx([0.0, 0.10, 0.05])
    assert table["general_retention"].to_list() == pytest.approx([0.0, 0.01, -0.02])
    assert table["on_pareto_front"].to_list() == [False, True, False]
    assert comparison.points["base"] == (0.0, 0.0)


def test_pareto_front_names_the_undominated_mixes_highest_domain_gain_first():
    points = {"d70": (0.10, 0.00), "d30": (0.05, 0.01), "d50": (0.04, -0.01), "twin": (0.05, 0.01)}
    assert pareto_front(points) == ["d70", "d30", "twin"]
    comparison = compare_runs(BASE, [run("d70", 0.40), run("d30", 0.35, mmlu__acc=0.04),
                                     run("d50", 0.34, mmlu__acc=-0.04)])
    assert comparison.pareto_front == ["d70", "d30"]


def test_run_missing_a_base_metric_is_refused_with_its_name():
    incomplete = RunScores("short", 0.4, {k: v for k, v in BASE_GENERAL.items() if not k.startswith("gsm8k")})
    with pytest.raises(ValueError, match=r"'short' has no score for \['gsm8k/exact_match.strict-match'\]"):
        compare_runs(BASE, [incomplete])


def test_duplicate_run_names_are_refused():
    with pytest.raises(ValueError, match="unique"):
        compare_runs(BASE, [run("mix", 0.4), run("mix", 0.5)])
