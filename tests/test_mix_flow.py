"""The mix-manifest stage in a real flow run: category sources prepared, exact shares, cached."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

import polars as pl
import pytest
from prefect import flow

from mixtune.flows.prepare import prepare
from mixtune.storage.artifacts import ArtifactStore
from mixtune.cli import main
from mixtune.config import load_config
from mixtune.tasks._stage import bind
from mixtune.mix.sources import run_size
from mixtune.tasks.mix_manifest import mix_manifest
from test_prepare_flow import demo_like_config, task_states, write_domain_rows

pytestmark = pytest.mark.usefixtures("prefect_server")
REPO = Path(__file__).resolve().parents[1]


@flow
def mix_only(config, name: str):
    prepared = prepare(config)
    (mix_manifest_,) = bind(config.storage, mix_manifest)
    return mix_manifest_(name, prepared.split, prepared.categories, config.mix, run_size(config.train),
                         config.storage)


@pytest.fixture(scope="module")
def mix_config(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mix")
    data = write_domain_rows(tmp / "med.jsonl", rows=80)
    raw = demo_like_config(tmp, data,
                           catalog=str(REPO / "configs" / "catalog-offline.yaml"),
                           mix={"domain_percent": 50, "weights": {"math": 3, "code": 1}},
                           train={"global_batch_size": 8, "per_device_batch_size": 4, "max_steps": 25})
    raw["categories"] = {"math": [{"name": "gsm8k-small", "uri": str(REPO / "data/categories/math/gsm8k_train_first300.jsonl"),
                                   "columns": {"kind": "prompt_response", "prompt": "question", "response": "answer"},
                                   "max_rows": 15}]}
    (tmp / "run.yaml").write_text(yaml.safe_dump(raw))
    return load_config(tmp / "run.yaml")  # merges the catalog file, as users' configs are


def test_mix_stage_realizes_exact_shares_in_every_batch(mix_config):
    ref = mix_only(mix_config, "m50")
    store = ArtifactStore(mix_config.storage)
    schedule = store.read_table(ref, "schedule")
    assert schedule.height == 25 * 8
    per_batch = schedule.group_by("batch").agg(pl.len().alias("n"))
    assert set(per_batch["n"]) == {8}
    by_category = store.read_table(ref, "summary")
    sources = set(schedule["source"].cast(pl.String))
    assert sources == {"med", "gsm8k-small", "mbpp-train", "gpteacher-code"}
    domain_rows = schedule.filter(pl.col("source").cast(pl.String) == "med")
    assert domain_rows.height == 100  # 50% of 200, exactly
    math_rows = schedule.filter(pl.col("source").cast(pl.String) == "gsm8k-small")
    assert math_rows.height == 75  # 3/4 of the other half
    # 15 math rows drawn 75 times: repeated 5x, over the warning limit of 4.
    assert any("gsm8k-small" in w for w in store.manifest(ref)["warnings"])
    assert set(by_category.columns) >= {"source", "category"}


def test_mix_stage_is_cached_and_mix_change_rebuilds_only_the_manifest(mix_config):
    mix_only(mix_config, "m50")
    # The parent flow's runs are the mix task and the `prepare` subflow's wrapper run.
    assert task_states(mix_only(mix_config, "m50", return_state=True))["mix-manifest"] == ["Cached"]
    changed = mix_config.model_copy(deep=True)
    changed.mix = changed.mix.model_copy(update={"domain_percent": 75})
    assert task_states(mix_only(changed, "m75", return_state=True))["mix-manifest"] == ["Completed"]


def test_cli_mix_plan_prints_json_plan(mix_config, tmp_path, capsys):
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(mix_config.dump()))
    capsys.readouterr()
    assert main(["mix", "plan", str(tmp_path / "c.yaml"), "--json"]) == 0
    out = capsys.readouterr().out
    plan = json.loads(out[out.index("{"):])
    assert json.dumps(plan).count("gsm8k-small") >= 1
    assert any("gsm8k-small" in w for w in plan["warnings"])


def test_category_that_gets_no_sample_is_warned_in_the_manifest_and_the_run_log(mix_config, caplog):
    tiny_weight = mix_config.model_copy(deep=True)
    tiny_weight.mix = tiny_weight.mix.model_copy(update={"weights": {"math": 3, "code": 0.001}})
    with caplog.at_level("WARNING"):
        ref = mix_only(tiny_weight, "code-0.001")
    warning = ("category 'code' (weight 0.001) gets no sample in this run of 25 batches x 8 = 200 samples")
    assert any(w.startswith(warning) for w in ArtifactStore(mix_config.storage).manifest(ref)["warnings"])
    assert any(f"mix code-0.001: {warning}" in r.getMessage() for r in caplog.records)
