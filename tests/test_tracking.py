"""MLflow tracking against a real server on 127.0.0.1: parent/child runs, params, no secrets."""

from __future__ import annotations

import pytest

from mixtune.sections import StorageConfig, TrackingConfig
from mixtune.tracking import config_params, flatten, log_config, mlflow_run, param_keys, redact, tracking_uri
from mlflow_server import running_mlflow_server


def test_flatten_dotted_keys_and_indexed_lists():
    flat = flatten({"mix": {"domain_percent": 75, "weights": {"math": 2}},
                    "data": {"sources": [{"name": "a"}]}, "tags": ["x", "y"]})
    assert flat == {"mix.domain_percent": "75", "mix.weights.math": "2", "data.sources.0.name": "a",
                    "tags": "['x', 'y']"}


def test_flatten_writes_floats_with_at_most_six_significant_digits():
    flat = flatten({"a": 0.1 + 0.2, "lr": 0.000123456789, "share": 75.0, "n": 3, "on": True, "big": 1234567.0,
                    "xs": [0.1 + 0.2, 1], "s": "0.30000000000000004"})
    assert flat == {"a": "0.3", "lr": "0.000123457", "share": "75.0", "n": "3", "on": "True", "big": "1234570.0",
                    "xs": "[0.3, 1]", "s": "0.30000000000000004"}  # a string is the user's text, kept


def test_params_name_each_categorys_sources_and_the_json_keeps_the_whole_config(tmp_path, monkeypatch):
    """configs/demo.yaml logged to a real sqlite store: the catalog's per-source internals (URI, format,
    revision, columns, license of every entry) are not params; the resolved config artifact has them."""
    import json

    import mlflow

    from mixtune.config import load_config
    from mixtune.resources import config_file

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "never-log-this")
    cfg = load_config(config_file("demo.yaml"))
    cfg.train.learning_rate = 0.1 + 0.2
    cfg.eval.domain.judge.api_key_env = "OPENAI_API_KEY"
    tracking = TrackingConfig(mlflow_tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", experiment="t-readable")
    with mlflow_run(tracking, StorageConfig(root=str(tmp_path / "s")), "readable") as run:
        log_config(mlflow, cfg.dump())
    client = mlflow.MlflowClient(tracking.mlflow_tracking_uri)
    params = client.get_run(run.info.run_id).data.params

    assert not [k for k in params if k.startswith("categories.") and k.count(".") > 1]
    assert params["categories.math"] == ", ".join(s.name for s in cfg.categories["math"])
    assert set(cfg.categories) == {k.removeprefix("categories.") for k in params if k.startswith("categories.")}
    assert params["catalog"] == cfg.catalog and params["mix.weights.math"] == "2.0"
    assert params["train.learning_rate"] == "0.3" and params["mix.domain_percent"] == "75.0"
    assert params["data.sources.0.uri"] == cfg.data.sources[0].uri  # the user's own data stays in full
    assert len(params) < len(flatten(cfg.dump())) / 1.5
    assert "never-log-this" not in json.dumps(params)
    resolved = client.download_artifacts(run.info.run_id, "config/resolved_config.json", str(tmp_path))
    assert json.loads(open(resolved).read()) == cfg.dump()  # full precision, every catalog entry


def test_redact_hides_secret_looking_keys_only():
    assert redact({"judge.api_key": "sk-1", "judge.api_key_env": "OPENAI_API_KEY", "a.b": "1"}) == {
        "judge.api_key": "<redacted>", "judge.api_key_env": "OPENAI_API_KEY", "a.b": "1"}


def test_default_tracking_uri_is_sqlite_beside_local_root(tmp_path):
    uri = tracking_uri(TrackingConfig(), StorageConfig(root=str(tmp_path / "store")))
    assert uri == f"sqlite:///{tmp_path / 'mlflow.db'}"


@pytest.fixture(scope="module")
def mlflow_url(tmp_path_factory):
    with running_mlflow_server(tmp_path_factory.mktemp("mlflow")) as url:
        yield url


def test_parent_and_child_runs_on_a_real_server(mlflow_url, tmp_path, monkeypatch):
    import mlflow

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "never-log-this")
    tracking = TrackingConfig(mlflow_tracking_uri=mlflow_url, experiment="t-parent-child")
    storage = StorageConfig(root=str(tmp_path))
    with mlflow_run(tracking, storage, "sweep") as parent:
        log_config(mlflow, {"mix": {"domain_percent": 75}, "storage": {"root": "s3://b/p"}})
        with mlflow_run(tracking, storage, "mix-75", parent_run_id=parent.info.run_id) as child:
            mlflow.log_metric("domain/rougeL", 0.5)
    client = mlflow.MlflowClient(mlflow_url)
    child_run = client.get_run(child.info.run_id)
    assert child_run.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert child_run.data.metrics["domain/rougeL"] == 0.5
    parent_run = client.get_run(parent.info.run_id)
    assert parent_run.data.params["mix.domain_percent"] == "75"
    assert "never-log-this" not in str(parent_run.data.params)
    files = [f.path for f in client.list_artifacts(parent.info.run_id, "config")]
    assert files == ["config/resolved_config.json"]


def test_config_check_accepts_it_so_logging_does(tmp_path):
    """The reported config: a zero-weight category named "code (python)" passed config check, then the run
    died on MlflowException 'Invalid value "mix.weights.code (python)"'. Logged to a real sqlite store."""
    import json

    import mlflow
    import yaml

    from mixtune.config import load_config
    from mixtune.resources import config_file

    raw = {"data": {"sources": [{"name": "d", "uri": "d.jsonl"}]}, "catalog": str(config_file("catalog-offline.yaml")),
           "mix": {"domain_percent": 75, "weights": {"math": 1, "code (python)": 0}},
           "storage": {"root": str(tmp_path / "store")}}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(raw))
    cfg = load_config(tmp_path / "run.yaml")  # what `mixtune config check` runs
    tracking = TrackingConfig(mlflow_tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", experiment="t-keys")
    with mlflow_run(tracking, cfg.storage, "keys") as run:
        log_config(mlflow, cfg.dump())
    client = mlflow.MlflowClient(tracking.mlflow_tracking_uri)
    params = client.get_run(run.info.run_id).data.params
    renamed = json.loads(open(client.download_artifacts(run.info.run_id, "config/param_keys.json",
                                                        str(tmp_path))).read())
    assert renamed == {param_keys(["mix.weights.code (python)"])["mix.weights.code (python)"]:
                       "mix.weights.code (python)"}
    (mlflow_key,) = renamed
    assert params[mlflow_key] == "0.0" and params["mix.weights.math"] == "1.0"
    assert len(params) == len(config_params(cfg.dump()))


def test_param_keys_are_valid_unique_and_stable():
    keys = ["mix.weights.code (python)", "mix.weights.code _python_", "x" * 300, "a/./b", "mix.seed"]
    mapped = param_keys(keys)
    assert mapped["mix.seed"] == "mix.seed" and mapped["mix.weights.code _python_"] == "mix.weights.code _python_"
    assert len(set(mapped.values())) == len(keys)
    assert all(len(v) <= 250 and "(" not in v and "/" not in v for v in mapped.values())
    assert param_keys(keys) == mapped
