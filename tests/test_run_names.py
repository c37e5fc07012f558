"""Flow and task runs are named after what they do, in a real Prefect run; naming never fails a run."""

from __future__ import annotations

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from test_prepare_flow import demo_like_config, write_domain_rows

from mixtune.config import parse_config
from mixtune.flows.pipeline import config_mix_name
from mixtune.flows.prepare import prepare
from mixtune.flows.sweep import _run_label
from mixtune.tasks._names import task_run_namer
from mixtune.tasks.download import download
from mixtune.tasks.evaluate import evaluate_general
from mixtune.tasks.split import split


def test_task_names_read_the_parameters_and_fall_back_to_the_task_name():
    trained = {"stage": "train", "name": "d75-math1", "uri": "x", "fingerprint": "f"}
    assert evaluate_general.task_run_name(parameters={"trained": None}) == "eval_general base"
    assert evaluate_general.task_run_name(parameters={"trained": trained}) == "eval_general d75-math1"
    assert split.task_run_name(parameters={"validated": [trained, {**trained, "name": "faq"}]}) == "split d75-math1, faq"
    assert download.task_run_name(parameters={}) == "download"  # unreadable parameters: the plain name
    assert task_run_namer("train", lambda p: "x" * 500)(parameters={}).endswith("...")


def test_flow_names_accept_a_deployment_config_that_is_still_a_dict():
    raw = {"name": "demo", "mix": {"domain_percent": 75, "weights": {"math": 2, "code": 1}}}
    assert config_mix_name(raw) == "d75-code1-math2"
    assert _run_label({"config": raw, "domain_percents": [100, 75]}) == "demo: d100, d75-code1-math2"


@pytest.mark.usefixtures("prefect_server")
def test_prepare_flow_and_its_task_runs_are_named_after_their_source(tmp_path):
    data = write_domain_rows(tmp_path / "med.jsonl", rows=30)
    state = prepare(parse_config(demo_like_config(tmp_path, data)), return_state=True)
    flow_run_id = state.state_details.flow_run_id
    with get_client(sync_client=True) as client:
        flow_run = client.read_flow_run(flow_run_id)
        task_runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    assert flow_run.name == "prepare t"
    assert sorted(r.name for r in task_runs) == [
        "base-model mixtune:tiny", "download med", "sanitize med", "split med", "transform med", "validate med"]
