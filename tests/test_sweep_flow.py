"""The sweep flow in process: mixes as concurrent child flow runs, one base evaluation, one report."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import mlflow
import pytest
import yaml
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

from mixtune.flows.sweep import sweep, sweep_mixes
from mixtune.storage.artifacts import ArtifactStore
from mixtune.config import load_config
from mixtune.mix.spec import MixSpec
from mixtune.tracking import tracking_uri
from prefect_server import flow_run_tree, stage_states
from test_prepare_flow import demo_like_config, write_domain_rows

REPO = Path(__file__).resolve().parents[1]


def test_sweep_mixes_always_include_the_domain_only_control():
    base = MixSpec(domain_percent=75, weights={"math": 1})
    assert [m.domain_percent for m in sweep_mixes(base)] == [100, 75, 50, 25]
    explicit = sweep_mixes(base, mixes=[{"domain_percent": 60, "weights": {"code": 1}}])
    assert [(m.domain_percent, m.weights) for m in explicit] == [(100, {"math": 1}), (60, {"code": 1})]
    assert [m.domain_percent for m in sweep_mixes(base, domain_percents=[50, 50, 100])] == [50, 100]


@pytest.mark.usefixtures("prefect_server")
def test_sweep_runs_mixes_concurrently_as_child_runs_and_compares_them(tmp_path):
    data = write_domain_rows(tmp_path / "med.jsonl", rows=60)
    raw = demo_like_config(tmp_path, data, catalog=str(REPO / "configs" / "catalog-offline.yaml"),
                           mix={"domain_percent": 75, "weights": {"math": 1}},
                           train={"global_batch_size": 4, "per_device_batch_size": 4, "max_steps": 3,
                                  "logging_steps": 1},
                           eval={"general_tasks": [{"name": "arc_challenge", "limit": 2}],
                                 "domain": {"max_rows": 3, "max_new_tokens": 4}})
    raw["categories"] = {"math": [{"name": "gsm8k-small", "uri": str(REPO / "data/categories/math/gsm8k_train_first300.jsonl"),
                                   "columns": {"kind": "prompt_response", "prompt": "question", "response": "answer"},
                                   "max_rows": 20}]}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(raw))
    cfg = load_config(tmp_path / "run.yaml")

    state = sweep(cfg, domain_percents=[100, 75], max_concurrency=2, return_state=True)
    result = state.result()
    assert sorted(r.run for r in result.runs) == ["d100", "d75-math1"]

    with get_client(sync_client=True) as client:
        tree = flow_run_tree(client, state.state_details.flow_run_id)
        flow_names = Counter(client.read_flow(r.flow_id).name for r in tree[1:])
        stages = stage_states(client, state.state_details.flow_run_id)
        task_run_names = {r.name for r in client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[r.id for r in tree])))}
    # Runs are named after what they do, in the flow run list and in each run's task graph.
    assert tree[0].name == "sweep t: d100, d75-math1"
    assert sorted(r.name for r in tree[1:]) == [
        "evaluate base", "evaluate d100", "evaluate d75-math1", "mix-run d100", "mix-run d75-math1", "prepare t",
        "train d100", "train d75-math1"]
    assert {"download med", "download gsm8k-small", "mix-manifest d75-math1", "train d100", "train d75-math1",
            "eval_general base", "eval_domain d75-math1", "compare base vs d100, d75-math1"} <= task_run_names
    # Each mix is its own child run of the sweep, with its train and evaluate below it.
    assert flow_names == {"prepare": 1, "evaluate": 3, "mix-run": 2, "train": 2}
    assert all(r.state.is_completed() for r in tree)
    assert sorted(stages["train"]) == ["Completed", "Completed"]
    assert len(stages["eval_domain"]) == 3  # base once, then each mix

    report = ArtifactStore(cfg.storage).read_bytes(f"{result.report.uri}/report.md").decode()
    assert "d100" in report and "d75-math1" in report

    client = mlflow.MlflowClient(tracking_uri(cfg.tracking, cfg.storage))
    child_runs = client.search_runs([client.get_experiment_by_name(cfg.tracking.experiment).experiment_id],
                                    filter_string=f"tags.mlflow.parentRunId = '{result.mlflow_run_id}'")
    assert sorted(r.info.run_name for r in child_runs) == ["d100", "d75-math1"]
    assert all("train/loss" in r.data.metrics for r in child_runs)
    # Each mix's own run carries its verdict and its changes against the base with intervals.
    verdicts = ArtifactStore(cfg.storage).manifest(result.report)["verdicts"]
    assert {r.info.run_name: r.data.tags["verdict"] for r in child_runs} == verdicts
    assert all({"vs_base/domain/rouge_l/delta", "vs_base/domain/rouge_l/ci_low", "vs_base/general/delta"}
               <= set(r.data.metrics) for r in child_runs)
    parent = client.get_run(result.mlflow_run_id).data.tags
    assert parent["recommendation"] == ArtifactStore(cfg.storage).manifest(result.report)["recommendation"]["sentence"]
