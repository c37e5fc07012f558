"""The whole prepare flow on S3: moto's standalone server on 127.0.0.1, data and artifacts in buckets."""

from __future__ import annotations

import json

import polars as pl
import pytest
import s3fs

from mixtune.flows.prepare import prepare
from mixtune.storage.artifacts import ArtifactStore
from mixtune.config import parse_config
from s3_server import S3_TEST_ENV, create_bucket, running_moto_process
from test_prepare_flow import demo_like_config, task_states, write_domain_rows

pytestmark = pytest.mark.usefixtures("prefect_server")
SECRET = "s3cr3t-never-logged-0123456789"


@pytest.fixture
def moto_endpoint(tmp_path, monkeypatch):
    for name, value in {**S3_TEST_ENV, "AWS_SECRET_ACCESS_KEY": SECRET}.items():
        monkeypatch.setenv(name, value)
    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    with running_moto_process(tmp_path) as url:
        yield url


def test_prepare_reads_and_writes_s3_and_second_run_is_cached(tmp_path, moto_endpoint):
    create_bucket(moto_endpoint, "team-data")
    create_bucket(moto_endpoint, "mixtune-artifacts")
    fs = s3fs.S3FileSystem(endpoint_url=moto_endpoint)
    local = write_domain_rows(tmp_path / "med.jsonl", rows=50, bad_rows=(4,))
    fs.put(str(local), "team-data/med/med.jsonl")

    raw = demo_like_config(tmp_path, local)
    raw["data"]["sources"][0]["uri"] = "s3://team-data/med/med.jsonl"
    raw["storage"] = {"root": "s3://mixtune-artifacts/runs", "endpoint_url": moto_endpoint,
                      "region": "us-east-1"}
    cfg = parse_config(raw)
    first = prepare(cfg, return_state=True)
    prepared = first.result()

    # Artifacts are in the bucket and read back through s3fs, counts reconciled.
    validated = prepared.domain[0]
    assert validated.uri.startswith("s3://mixtune-artifacts/runs/validate/med-")
    assert (validated.rows_in, validated.rows_kept, validated.rows_rejected) == (50, 49, 1)
    store = ArtifactStore(cfg.storage)
    rejects = store.read_table(validated, "rejects")
    assert rejects["_source_file"].to_list() == ["s3://team-data/med/med.jsonl"]
    assert rejects["reason"].to_list() == ["empty_content"]
    with fs.open(f"{prepared.split.uri}/train/part-00000.parquet", "rb") as f:
        assert pl.read_parquet(f).height == prepared.split.tables["train"]
    assert fs.exists("mixtune-artifacts/runs/_prefect")  # Prefect's result records live in the root too
    assert any(p.endswith("config.json") for p in fs.find("mixtune-artifacts/runs/models"))

    # A second run finds every stage in S3's cache.
    second = prepare(cfg, return_state=True)
    states = task_states(second)
    assert states.pop("base-model") == ["Completed"]  # re-checks the model folder each run: cheap, never stale
    assert set(sum(states.values(), [])) == {"Cached"}

    # The secret key never lands in what we wrote: manifests, Prefect results, refs.
    written = "".join(fs.cat(p).decode("utf-8", "replace") for p in fs.find("mixtune-artifacts/runs")
                      if p.endswith((".json",)) or "/_prefect/" in p)
    assert written and SECRET not in written
    assert SECRET not in json.dumps(prepared.model_dump(mode="json"))
