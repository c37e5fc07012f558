"""Same data, seed and config give the same manifest and the same adapter, whatever the storage root."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from prefect import flow

from mixtune.config import parse_config
from mixtune.flows.prepare import prepare
from mixtune.flows.train import train
from mixtune.mix.sources import run_size
from mixtune.storage.artifacts import ArtifactStore
from mixtune.tasks._stage import bind
from mixtune.tasks.mix_manifest import mix_manifest
from test_prepare_flow import demo_like_config, write_domain_rows

pytestmark = pytest.mark.usefixtures("prefect_server")
REPO = Path(__file__).resolve().parents[1]


@flow
def manifest_and_adapter(config, name: str):
    prepared = prepare(config)
    (mix_manifest_,) = bind(config.storage, mix_manifest)
    manifest = mix_manifest_(name, prepared.split, prepared.categories, config.mix, run_size(config.train),
                             config.storage)
    return manifest, train(config, name, manifest, prepared)


def _config(tmp_path: Path, data: Path, root: Path):
    raw = demo_like_config(tmp_path, data, mix={"domain_percent": 50, "weights": {"math": 1}},
                           train={"global_batch_size": 4, "per_device_batch_size": 4, "max_steps": 3,
                                  "lora": {"rank": 4, "alpha": 8}})
    raw["categories"] = {"math": [{"name": "gsm8k-small",
                                   "uri": str(REPO / "data/categories/math/gsm8k_train_first300.jsonl"),
                                   "columns": {"kind": "prompt_response", "prompt": "question",
                                               "response": "answer"},
                                   "max_rows": 10}]}
    raw["storage"] = {"root": str(root)}
    return parse_config(raw)


def test_two_roots_give_identical_manifests_and_adapters(tmp_path):
    data = write_domain_rows(tmp_path / "med.jsonl", rows=40)
    results = []
    for root in ("store-a", "elsewhere/store-b"):
        config = _config(tmp_path, data, tmp_path / root)
        manifest, trained = manifest_and_adapter(config, "m50")
        store = ArtifactStore(config.storage)
        adapter = Path(trained.uri) / "adapter"
        results.append({
            "manifest_fingerprint": manifest.fingerprint,
            "trained_fingerprint": trained.fingerprint,
            "schedule": next(Path(manifest.uri, "schedule").glob("*.parquet")).read_bytes(),
            "weights": (adapter / "adapter_model.safetensors").read_bytes(),
            "adapter_config": json.loads((adapter / "adapter_config.json").read_text()),
            "uri": trained.uri,
            "parents": [p["fingerprint"] for p in store.manifest(trained)["parents"]],
        })
    a, b = results
    assert a["uri"] != b["uri"]  # two places ...
    assert a["manifest_fingerprint"] == b["manifest_fingerprint"]  # ... one content
    assert a["trained_fingerprint"] == b["trained_fingerprint"]
    assert a["parents"] == b["parents"]
    assert a["schedule"] == b["schedule"]
    assert a["weights"] == b["weights"]
    # The base model's location is recorded as it is; everything else in the adapter config is the same.
    assert {k: v for k, v in a["adapter_config"].items() if k != "base_model_name_or_path"} == \
        {k: v for k, v in b["adapter_config"].items() if k != "base_model_name_or_path"}
    assert a["adapter_config"]["target_modules"] == sorted(a["adapter_config"]["target_modules"])
