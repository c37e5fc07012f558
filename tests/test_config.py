"""Config: strict parsing, every bad key reported at once, paths resolved, shipped configs load."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from mixtune.cli import main
from mixtune.config import MixtuneConfig, load_config, parse_config
from mixtune.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
MINIMAL = {"data": {"sources": [{"name": "d", "uri": "d.jsonl"}]}}


def test_config_minimal_fills_defaults():
    cfg = parse_config(MINIMAL)
    assert cfg.split.train == 0.8 and cfg.validate_.max_reject_percent == 5.0
    assert cfg.data.sources[0].columns.kind == "prompt_response"


def test_config_unknown_keys_all_reported_with_paths():
    bad = {
        "data": {"sources": [{"name": "d", "uri": "d.jsonl", "colums": {}}]},
        "sanitise": {},
        "validate": {"max_length": "long"},
    }
    with pytest.raises(ConfigError) as err:
        parse_config(bad, "bad.yaml")
    text = str(err.value)
    assert "bad.yaml" in text
    assert "data.sources[0].colums: unknown key" in text
    assert "sanitise: unknown key" in text
    assert "validate.max_length" in text and "'long'" in text
    assert len(err.value.problems) == 3


def test_config_mistyped_column_mapping_names_the_kind():
    bad = {"data": {"sources": [{"name": "d", "uri": "x", "columns": {"kind": "label", "txt": "t"}}]}}
    with pytest.raises(ConfigError, match=r"data\.sources\[0\]\.columns\.label\.txt: unknown key"):
        parse_config(bad)


def test_config_split_fractions_must_sum_to_one():
    with pytest.raises(ConfigError, match="train \\+ val \\+ test must be 1.0"):
        parse_config({**MINIMAL, "split": {"train": 0.5}})


def test_config_duplicate_source_names_rejected():
    two = {"data": {"sources": [{"name": "d", "uri": "a"}, {"name": "d", "uri": "b"}]}}
    with pytest.raises(ConfigError, match="repeated: \\['d'\\]"):
        parse_config(two)


def test_config_relative_paths_resolve_against_config_folder(tmp_path):
    sub = tmp_path / "configs"
    sub.mkdir()
    (sub / "run.yaml").write_text(yaml.safe_dump({
        "data": {"sources": [{"name": "d", "uri": "../data/d.jsonl"}, {"name": "s", "uri": "s3://b/k.jsonl"}]},
        "storage": {"root": "../store"},
    }))
    cfg = load_config(sub / "run.yaml")
    assert cfg.data.sources[0].uri == str(tmp_path / "data" / "d.jsonl")
    assert cfg.data.sources[1].uri == "s3://b/k.jsonl"
    assert cfg.storage.root == str(tmp_path / "store")


def test_config_missing_file_and_bad_yaml_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "nope.yaml")
    (tmp_path / "bad.yaml").write_text("data: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(tmp_path / "bad.yaml")


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_loads(path):
    if path.name.startswith("catalog"):
        pytest.skip("catalogs are checked in test_catalog.py")
    assert isinstance(load_config(path), MixtuneConfig)


def test_config_round_trips_through_dump():
    cfg = load_config(REPO / "configs" / "demo.yaml")
    assert parse_config(cfg.dump()) == cfg


def test_cli_config_check_prints_resolved_config(capsys):
    assert main(["config", "check", str(REPO / "configs" / "demo.yaml")]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["data"]["sources"][0]["uri"].endswith("data/medquad/medquad.jsonl")
    assert printed["validate"]["max_length"] == 256
    assert printed["model"]["name_or_path"] == "smollm2-135m-instruct"  # the real model is the default demo


def test_cli_config_check_reports_errors_and_exits_nonzero(tmp_path, capsys):
    (tmp_path / "c.yaml").write_text("data: {sources: [{name: d, uri: x, bogus: 1}]}\n")
    assert main(["config", "check", str(tmp_path / "c.yaml")]) == 2
    assert "data.sources[0].bogus: unknown key" in capsys.readouterr().err
