"""The team path end to end: real Prefect, MLflow and S3 servers on 127.0.0.1 and a process worker.

What docs/team.md tells a team to do, with a tiny config: a ``process`` pool
from deployments/process.json, ``prefect deploy`` from prefect.yaml (with
MIXTUNE_HOME unset, so the worker's own value is used), a worker with
MIXTUNE_HOME, the S3 keys and the offline settings in its environment, and
runs triggered through the API as the UI's "Custom run" does: the
deployment's config, edited. MLflow keeps its artifacts in a local folder
(the server proxies them); mixtune's artifacts and Prefect's result records
are on moto's S3.

Slow and part of the default suite: 3 min 10 s on 2 idle cores, 3 min 45 s with
the cores shared (servers and deployments ~30-60 s, then runs of ~55, ~25, ~60 s).
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
import s3fs

from mlflow_server import running_mlflow_server
from prefect_server import (
    PREFECT, run_prefect_commands, stage_states, started_process, starting_prefect_server, wait_for_flow_run,
)
from s3_server import S3_TEST_ENV, create_bucket, running_moto_process

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
POOL = "e2e-cpu"
BUCKET = "mixtune"
EXPERIMENT = "e2e-team"
RUN_TIMEOUT_S = 600
# Planned samples = max_steps x global batch = 6 x 8 = 48: 36 domain rows (75%), 12 math rows.
MIX = {"domain_percent": 75, "weights": {"math": 1}, "unit": "samples", "seed": 0}
MIX_NAME = "d75-math1"
# Per pipeline run: two sources (domain + math) through prepare, base and tuned evaluation.
STAGE_RUNS = {"download": 2, "sanitize": 2, "transform": 2, "validate": 2, "split": 1,
              "mix-manifest": 1, "train": 1, "eval_general": 2, "eval_domain": 2}


@dataclass
class Team:
    api_url: str
    mlflow_url: str
    s3_url: str
    worker: subprocess.Popen  # `prefect worker start`
    client: Any  # prefect's SyncPrefectClient, pointed at the server
    deployments: dict[str, UUID]
    default_config: dict
    workdir: Path

    def trigger(self, deployment: str, parameters: dict) -> UUID:
        """A flow run from the deployment, as the UI creates one; waits until it completed."""
        started = time.monotonic()
        flow_run = self.client.create_flow_run_from_deployment(self.deployments[deployment], parameters=parameters)
        done = wait_for_flow_run(self.client, flow_run.id, RUN_TIMEOUT_S, worker=self.worker)
        seconds = time.monotonic() - started
        print(f"{deployment}: {done.state.name} in {seconds:.0f} s")
        assert done.state.is_completed(), f"{done.state.name}: {done.state.message}; see {self.workdir / 'worker.log'}"
        return flow_run.id


def client_env(api_url: str, workdir: Path) -> dict[str, str]:
    """A user's shell pointed at the server; MIXTUNE_HOME unset so deployments keep the placeholder."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_") and k != "MIXTUNE_HOME"}
    return env | {"PREFECT_API_URL": api_url, "PREFECT_HOME": str(workdir / "client-home"),
                  "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}


def worker_env(api_url: str, workdir: Path) -> dict[str, str]:
    """What the worker image and compose give a worker (docker/), plus the offline settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "AWS_", "MLFLOW_"))}
    return env | S3_TEST_ENV | {
        "PREFECT_API_URL": api_url,
        "PREFECT_HOME": str(workdir / "worker-home"),
        "PREFECT_WORKER_QUERY_SECONDS": "1",  # pick a run up within a second, not ten
        "MIXTUNE_HOME": str(REPO),
        "HF_HOME": str(workdir / "hf"),
        "NLTK_DATA": str(REPO / "data" / "nltk_data"),
        "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1", "TOKENIZERS_PARALLELISM": "false",
        "DO_NOT_TRACK": "true", "MLFLOW_DISABLE_TELEMETRY": "true",
    }


def small_config(default: dict, s3_url: str, mlflow_url: str) -> dict:
    """The deployment's demo config edited small; its relative paths resolve in MIXTUNE_HOME on the worker."""
    config = copy.deepcopy(default)
    config["name"] = "e2e"
    config["data"]["sources"][0]["max_rows"] = 120
    # The tiny model's 512-token vocabulary spends ~3x the real model's tokens on the same text.
    config["validate"] = {"max_length": 512, "on_too_long": "truncate", "max_reject_percent": 5}
    config["categories"] = {"math": [{  # replaces the catalog's math sources: 40 rows are plenty for 12 samples
        "name": "gsm8k-train", "uri": "data/categories/math/gsm8k_train_first300.jsonl",
        "columns": {"kind": "prompt_response", "prompt": "question", "response": "answer"},
        "max_rows": 40, "license": "MIT"}]}
    config["mix"] = dict(MIX)
    config["model"] = {"name_or_path": "mixtune:tiny",  # the tiny test model, trained on the demo data
                       "tiny": {"vocab_size": 512, "corpus_files": [config["data"]["sources"][0]["uri"]]}}
    config["train"] |= {"global_batch_size": 8, "per_device_batch_size": 8, "max_steps": 6,
                        "warmup_steps": 1, "logging_steps": 2, "checkpoint_every_steps": 3}
    config["storage"] = {"root": f"s3://{BUCKET}/runs", "endpoint_url": s3_url, "region": "us-east-1"}
    config["tracking"] = {"mlflow_tracking_uri": mlflow_url, "experiment": EXPERIMENT}
    config["eval"] = {"general_tasks": [{"name": "arc_challenge", "limit": 4}], "batch_size": 16,
                      "domain": {"max_rows": 6, "max_new_tokens": 8, "batch_size": 6}, "tolerance": 0.02}
    return config


def create_process_pool(client, name: str) -> None:
    """``prefect work-pool create NAME --type process --base-job-template deployments/process.json``."""
    from prefect.client.schemas.actions import WorkPoolCreate

    template = json.loads((REPO / "deployments" / "process.json").read_text())
    client.create_work_pool(WorkPoolCreate(name=name, type="process", base_job_template=template))


@pytest.fixture(scope="module")
def team(tmp_path_factory):
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    workdir = tmp_path_factory.mktemp("team")
    started = time.monotonic()
    with ExitStack() as stack, pytest.MonkeyPatch.context() as env:
        for name, value in S3_TEST_ENV.items():  # this process lists the bucket with s3fs
            env.setenv(name, value)
        for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_SESSION_TOKEN"):
            env.delenv(name, raising=False)
        # The Prefect server migrates its database while moto and MLflow start.
        prefect = stack.enter_context(starting_prefect_server(workdir))
        s3_url = stack.enter_context(running_moto_process(workdir))
        create_bucket(s3_url, BUCKET)
        mlflow_url = stack.enter_context(running_mlflow_server(workdir))
        api_url = prefect.wait_ready()
        print(f"servers up in {time.monotonic() - started:.0f} s")

        stack.enter_context(temporary_settings(updates={PREFECT_API_URL: api_url}))
        client = stack.enter_context(get_client(sync_client=True))
        create_process_pool(client, POOL)
        worker = stack.enter_context(started_process(
            [*PREFECT, "worker", "start", "--pool", POOL], worker_env(api_url, workdir), workdir / "worker.log"))
        run_prefect_commands([["deploy", "--name", name, "--pool", POOL]
                              for name in ("mixtune-pipeline", "mixtune-sweep")],
                             client_env(api_url, workdir), REPO, workdir)
        deployments = {name: client.read_deployment_by_name(f"{flow}/{name}")
                       for flow, name in (("pipeline", "mixtune-pipeline"), ("sweep", "mixtune-sweep"))}
        print(f"stack deployed in {time.monotonic() - started:.0f} s")
        yield Team(api_url=api_url, mlflow_url=mlflow_url, s3_url=s3_url, worker=worker, client=client,
                   deployments={name: d.id for name, d in deployments.items()},
                   default_config=deployments["mixtune-pipeline"].parameters["config"], workdir=workdir)
        # Leaving the ExitStack stops the worker (and any flow run, its child), then the servers.


@pytest.fixture(scope="module")
def config(team) -> dict:
    return small_config(team.default_config, team.s3_url, team.mlflow_url)


@pytest.fixture(scope="module")
def first_run(team, config):
    from mlflow import MlflowClient

    flow_run_id = team.trigger("mixtune-pipeline", {"config": config})
    mlflow = MlflowClient(team.mlflow_url)
    experiment = mlflow.get_experiment_by_name(EXPERIMENT)
    (parent,) = mlflow.search_runs([experiment.experiment_id], "tags.`mixtune.flow` = 'pipeline'")
    return flow_run_id, parent


@pytest.fixture(scope="module")
def s3(team):
    # No listings cache: a test compares listings taken before and after a run.
    return s3fs.S3FileSystem(endpoint_url=team.s3_url, use_listings_cache=False, skip_instance_cache=True)


def test_deployments_keep_mixtune_home_for_the_worker_to_fill_in(team):
    deployment = team.client.read_deployment(team.deployments["mixtune-pipeline"])
    assert deployment.pull_steps == [
        {"prefect.deployments.steps.set_working_directory": {"directory": "{{ $MIXTUNE_HOME }}"}}]
    assert deployment.work_pool_name == POOL


def test_pipeline_run_from_the_api_runs_every_stage(team, first_run):
    flow_run_id, _ = first_run
    states = stage_states(team.client, flow_run_id)
    assert {stage: states.get(stage) for stage in STAGE_RUNS} == {
        stage: ["Completed"] * runs for stage, runs in STAGE_RUNS.items()}


def test_artifacts_and_report_are_on_s3(first_run, s3):
    root = f"{BUCKET}/runs"
    for stage, name in [("download", "medquad"), ("download", "gsm8k-train"), ("validate", "medquad"),
                        ("split", "domain"), ("mix-manifest", MIX_NAME), ("train", MIX_NAME)]:
        assert len(s3.glob(f"{root}/{stage}/{name}-*/manifest.json")) == 1, (stage, name)
    (download,) = s3.glob(f"{root}/download/medquad-*/manifest.json")
    assert json.loads(s3.cat(download))["ref"]["rows_in"] == 120  # max_rows, read in MIXTUNE_HOME's data/
    (adapter,) = s3.glob(f"{root}/train/{MIX_NAME}-*/adapter")
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {Path(p).name for p in s3.ls(adapter)}
    reports = s3.glob(f"{root}/compare/comparison-*")  # one per set of compared runs (a sweep adds one)
    assert reports
    for report in reports:
        assert {"report.md", "report.html", "pareto.png", "manifest.json"} <= {Path(p).name for p in s3.ls(report)}
        assert MIX_NAME in s3.cat(f"{report}/report.md").decode()
    assert s3.glob(f"{root}/_prefect/*")  # Prefect's result records: what the second run's cache reads


def test_mlflow_has_the_mix_as_child_run_with_metrics_and_realized_mix(team, first_run):
    from mlflow import MlflowClient

    _, parent = first_run
    mlflow = MlflowClient(team.mlflow_url)
    (child,) = mlflow.search_runs([parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert child.info.run_name == MIX_NAME
    metrics = child.data.metrics
    assert "train/loss" in metrics and "domain/rouge_l" in metrics
    assert len(mlflow.get_metric_history(child.info.run_id, "train/loss")) == 3  # steps 2, 4, 6
    params = child.data.params
    assert params["realized_mix.source.medquad.samples"] == "36"
    assert params["realized_mix.source.gsm8k-train.samples"] == "12"
    assert params["mix.domain_percent"] == "75.0"
    assert any(key.startswith(f"{MIX_NAME}/") for key in parent.data.metrics)  # the comparison, on the parent


def test_second_trigger_with_same_parameters_hits_every_stage_cache(team, config, first_run, s3):
    trained_before = s3.glob(f"{BUCKET}/runs/train/*/manifest.json")
    flow_run_id = team.trigger("mixtune-pipeline", {"config": config})
    states = stage_states(team.client, flow_run_id)
    assert {stage: states.get(stage) for stage in STAGE_RUNS} == {
        stage: ["Cached"] * runs for stage, runs in STAGE_RUNS.items()}
    assert s3.glob(f"{BUCKET}/runs/train/*/manifest.json") == trained_before


def test_sweep_of_two_mixes_trains_only_the_new_one_and_reports_both(team, config, first_run, s3):
    from mlflow import MlflowClient
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

    mixes = [{"domain_percent": 100}, {"domain_percent": 75, "weights": {"math": 1}}]
    flow_run_id = team.trigger("mixtune-sweep", {"config": config, "mixes": mixes, "max_concurrency": 2})
    states = stage_states(team.client, flow_run_id)
    # d75-math1 is the pipeline's mix: its manifest, training and evaluation come from the cache.
    assert sorted(states["mix-manifest"]) == ["Cached", "Completed"]
    assert sorted(states["train"]) == ["Cached", "Completed"]
    assert sorted(states["eval_domain"]) == ["Cached", "Cached", "Completed"]  # base, d75-math1, d100
    assert set(states["download"] + states["validate"] + states["split"]) == {"Cached"}

    (artifact,) = team.client.read_artifacts(artifact_filter=ArtifactFilter(
        key=ArtifactFilterKey(any_=["mix-comparison"]), flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))
    report_uri = artifact.data.rsplit("Report with plot: `", 1)[1].split("`", 1)[0]
    report = s3.cat(report_uri.replace("report.html", "report.md")).decode()
    assert "d100" in report and MIX_NAME in report

    mlflow = MlflowClient(team.mlflow_url)
    experiment = mlflow.get_experiment_by_name(EXPERIMENT)
    (parent,) = mlflow.search_runs([experiment.experiment_id], "tags.`mixtune.flow` = 'sweep'")
    children = mlflow.search_runs([experiment.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert sorted(run.info.run_name for run in children) == ["d100", MIX_NAME]
