"""The mix spec: native form, edge cases, the cloud SDK's form, and the config's catalog wiring."""

from __future__ import annotations

import math

import pytest
import yaml

from mixtune.config import load_config, parse_config
from mixtune.errors import ConfigError
from mixtune.mix.spec import NOVA_CATEGORY_MAP, MixSpec, source_fractions, translate_nova_form

DATA = {"data": {"sources": [{"name": "domain-qa", "uri": "d.jsonl"}]}}

# The Nova customization docs' data-mixing example ("default category distribution"), verbatim:
# 50% customer data and all 23 category keys, values as strings (they are job hyperparameters).
PUBLISHED_NOVA_EXAMPLE = {
    "customer_data_percent": "50",
    "nova_agents_percent": "1",
    "nova_baseline_percent": "10",
    "nova_chat_percent": "0.5",
    "nova_code_percent": "10",
    "nova_factuality_percent": "0.1",
    "nova_identity_percent": "1",
    "nova_long-context_percent": "1",
    "nova_math_percent": "2",
    "nova_rai_percent": "1",
    "nova_instruction-following_percent": "13",
    "nova_stem_percent": "0.5",
    "nova_planning_percent": "10",
    "nova_reasoning-chat_percent": "0.5",
    "nova_reasoning-code_percent": "0.5",
    "nova_reasoning-factuality_percent": "0.5",
    "nova_reasoning-instruction-following_percent": "45",
    "nova_reasoning-math_percent": "0.5",
    "nova_reasoning-planning_percent": "0.5",
    "nova_reasoning-rag_percent": "0.4",
    "nova_reasoning-rai_percent": "0.5",
    "nova_reasoning-stem_percent": "0.4",
    "nova_rag_percent": "1",
    "nova_translation_percent": "0.1",
}


def mix_problems(mix: dict) -> list[str]:
    with pytest.raises(ConfigError) as err:
        parse_config({**DATA, "mix": mix})
    return err.value.problems


# --- native form ---


def test_mix_default_is_the_domain_only_control_run():
    spec = parse_config(DATA).mix
    assert spec.domain_percent == 100 and spec.category_weights() == {}
    assert spec.unit == "samples" and spec.batching == "stratified"


def test_mix_weights_normalize_and_a_zero_weight_leaves_the_category_out():
    spec = MixSpec(domain_percent=75, weights={"math": 2, "code": 1, "instruction-following": 1, "chat": 0})
    assert spec.category_weights() == {"code": 0.25, "instruction-following": 0.25, "math": 0.5}


def test_mix_at_100_percent_ignores_weights():
    spec = MixSpec(domain_percent=100, weights={"math": 3})
    assert spec.category_weights() == {}
    fractions = source_fractions(spec, {"d": ("domain", 10), "m": ("math", 10)})
    assert fractions == {"d": 1.0}


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -5, 0, 100.5])
def test_mix_domain_percent_out_of_range_is_an_error_naming_the_field(bad):
    problems = mix_problems({"domain_percent": bad, "weights": {"math": 1}})
    assert len(problems) == 1 and problems[0].startswith("mix.domain_percent:")
    assert "(0, 100]" in problems[0]


@pytest.mark.parametrize("bad", [float("nan"), -1.0, float("inf")])
def test_mix_bad_weight_is_an_error_naming_the_category(bad):
    problems = mix_problems({"domain_percent": 80, "weights": {"math": bad, "code": 1}})
    assert len(problems) == 1 and problems[0].startswith("mix.weights.math:")
    assert "finite number >= 0" in problems[0]


def test_mix_below_100_percent_needs_a_positive_weight():
    for weights in ({}, {"math": 0, "code": 0}):
        problems = mix_problems({"domain_percent": 60, "weights": weights})
        assert "no category has a positive weight" in problems[0]


def test_mix_domain_is_not_a_category_name():
    assert "set domain_percent instead" in mix_problems({"domain_percent": 60, "weights": {"domain": 1}})[0]


def test_mix_unknown_key_is_reported_with_its_path():
    assert mix_problems({"domain_percent": 60, "weights": {"math": 1}, "wieghts": {}}) == [
        "mix.wieghts: unknown key"
    ]


def test_source_fractions_split_domain_by_rows_categories_by_weight_sources_by_rows():
    spec = MixSpec(domain_percent=60, weights={"math": 3, "code": 1})
    sizes = {"d1": ("domain", 300), "d2": ("domain", 100), "m": ("math", 7),
             "c1": ("code", 10), "c2": ("code", 30), "chat": ("chat", 50)}
    fractions = source_fractions(spec, sizes)
    expected = {"d1": 0.45, "d2": 0.15, "m": 0.3, "c1": 0.025, "c2": 0.075}
    assert fractions.keys() == expected.keys()  # chat has no weight: left out
    assert all(math.isclose(fractions[k], v) for k, v in expected.items())


def test_source_fractions_category_with_weight_but_no_source_is_an_error():
    with pytest.raises(ValueError, match="category 'math' has weight but no sources"):
        source_fractions(MixSpec(domain_percent=60, weights={"math": 1}), {"d": ("domain", 5)})


# --- the cloud SDK's form ---


def test_nova_published_example_translates_category_by_category():
    spec = parse_config({**DATA, "mix": PUBLISHED_NOVA_EXAMPLE}).mix
    assert spec.domain_percent == 50
    # Hand-summed from the published values through NOVA_CATEGORY_MAP:
    assert spec.weights == pytest.approx({
        "chat": 1.5,               # chat 0.5 + identity 1
        "code": 10, "factuality": 0.1, "general": 10, "instruction-following": 13,
        "long-context": 1, "math": 2, "planning-agents": 11,  # agents 1 + planning 10
        "rag": 1, "reasoning": 48.8,  # the nine reasoning-* keys
        "safety": 1, "stem": 0.5, "translation": 0.1,
    })
    assert math.isclose(sum(spec.category_weights().values()), 1.0)


def test_nova_form_keeps_mixtune_keys_and_maps_every_published_category():
    translated = translate_nova_form({**PUBLISHED_NOVA_EXAMPLE, "unit": "tokens", "seed": 7})
    assert translated["unit"] == "tokens" and translated["seed"] == 7
    published = {k[len("nova_"):-len("_percent")] for k in PUBLISHED_NOVA_EXAMPLE if k.startswith("nova_")}
    assert len(published) == 23 and published == set(NOVA_CATEGORY_MAP)


def test_nova_missing_customer_percent_is_an_error_not_zero():
    mix = {k: v for k, v in PUBLISHED_NOVA_EXAMPLE.items() if k != "customer_data_percent"}
    assert "customer_data_percent: missing" in mix_problems(mix)[0]


def test_nova_unknown_category_is_an_error_listing_the_known_ones():
    problem = mix_problems({**PUBLISHED_NOVA_EXAMPLE, "nova_poetry_percent": "0"})[0]
    assert "nova_poetry_percent: unknown Nova category 'poetry'" in problem
    assert "known: agents, baseline, chat" in problem and "reasoning-stem" in problem


def test_nova_percentages_must_sum_to_100_within_a_hundredth():
    off = {**PUBLISHED_NOVA_EXAMPLE, "nova_math_percent": "2.02"}
    assert "must sum to 100 (within 0.01), got 100.02" in mix_problems(off)[0]
    within = {**PUBLISHED_NOVA_EXAMPLE, "nova_math_percent": "2.005"}
    assert parse_config({**DATA, "mix": within}).mix.weights["math"] == 2.005


def test_nova_percentages_adding_up_with_customer_get_a_hint():
    problem = mix_problems({"customer_data_percent": 60, "nova_math_percent": 30, "nova_code_percent": 10})[0]
    assert "got 40" in problem and "scale them by 2.5" in problem


def test_nova_customer_only_is_the_control_run_and_partial_needs_categories():
    assert parse_config({**DATA, "mix": {"customer_data_percent": "100"}}).mix.domain_percent == 100
    assert "mixtune does not guess" in mix_problems({"customer_data_percent": 70})[0]


@pytest.mark.parametrize("mix, fragment", [
    ({"customer_data_percent": 0, "nova_math_percent": 100}, "customer_data_percent: must be in (0, 100]"),
    ({"customer_data_percent": 101, "nova_math_percent": 100}, "customer_data_percent: must be in (0, 100]"),
    ({"customer_data_percent": "nan", "nova_math_percent": 100}, "customer_data_percent: must be a finite"),
    ({"customer_data_percent": 50, "nova_math_percent": "lots"}, "nova_math_percent: expected a number"),
    ({"customer_data_percent": 50, "nova_math_percent": 110, "nova_code_percent": -10},
     "nova_code_percent: must be >= 0"),
    ({"customer_data_percent": 50, "nova_math_percent": 100, "weights": {"math": 1}},
     "do not mix the native form"),
])
def test_nova_bad_values_are_errors_naming_the_key(mix, fragment):
    problems = mix_problems(mix)
    assert problems[0].startswith("mix:") and fragment in problems[0]


# --- the catalog in a run config ---


def _write_catalog(folder, categories):
    (folder / "cat.yaml").write_text(yaml.safe_dump({"categories": categories}))


def test_config_catalog_file_merges_with_inline_categories_and_paths_resolve(tmp_path):
    (tmp_path / "catalogs").mkdir()
    _write_catalog(tmp_path / "catalogs", {
        "math": [{"name": "gsm", "uri": "math.jsonl", "license": "MIT"}],
        "code": [{"name": "mbpp", "uri": "code.jsonl"}],
    })
    (tmp_path / "run.yaml").write_text(yaml.safe_dump({
        **DATA,
        "catalog": "catalogs/cat.yaml",
        "categories": {
            "code": [{"name": "my-code", "uri": "mine/code.jsonl"}],  # replaces the file's code
            "tickets": [{"name": "tix", "uri": "s3://bucket/t.jsonl"}],
        },
        "mix": {"domain_percent": 70, "weights": {"math": 1, "code": 1, "tickets": 1}},
    }))
    cfg = load_config(tmp_path / "run.yaml")
    assert cfg.catalog == str(tmp_path / "catalogs" / "cat.yaml")
    assert {c: [s.name for s in v] for c, v in cfg.categories.items()} == {
        "math": ["gsm"], "code": ["my-code"], "tickets": ["tix"]}
    assert cfg.categories["math"][0].uri == str(tmp_path / "catalogs" / "math.jsonl")
    assert cfg.categories["math"][0].license == "MIT"
    assert cfg.categories["code"][0].uri == str(tmp_path / "mine" / "code.jsonl")
    assert cfg.categories["tickets"][0].uri == "s3://bucket/t.jsonl"
    assert parse_config(cfg.dump()) == cfg
    (tmp_path / "dumped.yaml").write_text(yaml.safe_dump(cfg.dump()))
    assert load_config(tmp_path / "dumped.yaml") == cfg  # merging again changes nothing


def test_config_weight_on_unknown_category_lists_the_known_ones(tmp_path):
    _write_catalog(tmp_path, {"math": [{"name": "gsm", "uri": "m.jsonl"}]})
    (tmp_path / "run.yaml").write_text(yaml.safe_dump({
        **DATA, "catalog": "cat.yaml",
        "mix": {"domain_percent": 70, "weights": {"maths": 1, "poetry": 0}},  # zero: never looked up
    }))
    with pytest.raises(ConfigError) as err:
        load_config(tmp_path / "run.yaml")
    assert err.value.problems == ["mix.weights.maths: unknown category; known: math"]


def test_config_catalog_problems_are_config_errors(tmp_path):
    _write_catalog(tmp_path, {"Math!": [{"name": "gsm", "uri": "m.jsonl", "colums": {}}]})
    (tmp_path / "run.yaml").write_text(yaml.safe_dump({**DATA, "catalog": "cat.yaml"}))
    with pytest.raises(ConfigError) as err:
        load_config(tmp_path / "run.yaml")
    assert str(tmp_path / "cat.yaml") in str(err.value)
    assert any("colums: unknown key" in p for p in err.value.problems)
    (tmp_path / "run.yaml").write_text(yaml.safe_dump({**DATA, "catalog": "nope.yaml"}))
    with pytest.raises(ConfigError, match="catalog: file not found"):
        load_config(tmp_path / "run.yaml")


def test_config_source_names_must_be_unique_across_domain_and_categories():
    with pytest.raises(ConfigError, match="source 'x' is in both 'a' and 'b'"):
        parse_config({**DATA, "categories": {"a": [{"name": "x", "uri": "1"}], "b": [{"name": "x", "uri": "2"}]}})


def test_config_domain_source_named_like_a_category_source_is_an_error(tmp_path):
    (tmp_path / "run.yaml").write_text(yaml.safe_dump({
        **DATA, "categories": {"math": [{"name": "domain-qa", "uri": "m.jsonl"}]}}))
    with pytest.raises(ConfigError, match="'domain-qa' is also a source of category 'math'"):
        load_config(tmp_path / "run.yaml")
