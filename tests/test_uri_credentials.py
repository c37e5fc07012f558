"""Credentials never sit in a URI: every URI-bearing field refuses them at load, and says where they go.

The reported input: a source ``uri: http://datauser:S3cr3tT0ken@127.0.0.1:PORT/qa.jsonl`` was
accepted, and the password landed in every row's ``_source_file``, the download manifest, the
Parquet files and the MLflow param ``data.sources.0.uri``. Here the same URI, against a real HTTP
server that wants exactly that password, is refused with its field path; the same server is read
with the password where it belongs (a netrc file), and nothing the download returns holds it.
"""

from __future__ import annotations

import base64
import functools
import http.server
import json
import os
import threading
from pathlib import Path

import pytest
import yaml

from mixtune.cli import main
from mixtune.config import load_config, parse_config
from mixtune.errors import ConfigError
from mixtune.mix.spec import load_catalog
from mixtune.prepare.download import download
from mixtune.sections import SourceConfig, redact_uri, uri_credentials_problem

USER, SECRET = "datauser", "S3cr3tT0ken"
ROWS = [{"question": "What is the capital of Australia?", "answer": "Canberra."},
        {"question": "What is 2 + 2?", "answer": "4"}]


class _BasicAuthHandler(http.server.SimpleHTTPRequestHandler):
    """Serves the folder only to ``USER:SECRET`` (HTTP basic auth), as a private data server would."""

    def do_GET(self):  # noqa: N802 - http.server's name
        expected = "Basic " + base64.b64encode(f"{USER}:{SECRET}".encode()).decode()
        if self.headers.get("Authorization") != expected:
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="data"')
            self.end_headers()
            return
        super().do_GET()

    def do_HEAD(self):  # noqa: N802
        self.do_GET()

    def log_message(self, *args):
        pass


@pytest.fixture
def private_http(tmp_path):
    """(base URL, netrc path): qa.jsonl behind basic auth on 127.0.0.1, and a netrc with its login."""
    folder = tmp_path / "served"
    folder.mkdir()
    (folder / "qa.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                             functools.partial(_BasicAuthHandler, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    netrc = tmp_path / "netrc"
    netrc.write_text(f"machine 127.0.0.1 login {USER} password {SECRET}\n")
    netrc.chmod(0o600)
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", netrc
    finally:
        server.shutdown()
        server.server_close()


def _config(uri: str, **sections) -> dict:
    return {"data": {"sources": [{"name": "qa", "uri": uri}]}, **sections}


# --- what counts as a credential ---


@pytest.mark.parametrize("uri", [
    f"http://{USER}:{SECRET}@127.0.0.1:8000/qa.jsonl",
    "https://ghp_0123456789abcdef@example.com/qa.jsonl",  # a token passed as the user name
    "s3://AKIAEXAMPLE:wJalrXUtnFEMI@bucket/qa.jsonl",
    "https://bucket.s3.amazonaws.com/qa.jsonl?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIA%2F"
    "&X-Amz-Signature=f00d",
    "https://acct.blob.core.windows.net/c/qa.jsonl?sv=2022-11-02&sp=r&sig=abc%3D",
    "https://example.com/qa.jsonl?access_token=abc",
    "https://example.com/qa.jsonl?apiKey=abc",
    "postgresql://mlflow:pw@db:5432/mlflow",
])
def test_uri_with_a_credential_is_named(uri):
    assert uri_credentials_problem(uri) is not None


@pytest.mark.parametrize("uri", [
    "/data/team@2024/qa.jsonl",  # a local path: '@' and '?' are ordinary characters there
    "relative/qa.jsonl",
    "s3://bucket/prefix/qa.jsonl",
    "https://example.com/qa.jsonl?page=2&format=jsonl",
    "hf://datasets/openai/gsm8k",
    "http://127.0.0.1:5000",
    "postgresql://mlflow@db:5432/mlflow",  # a database user name without its password
    "sqlite:////tmp/mlflow.db",
])
def test_uri_without_a_credential_is_accepted(uri):
    assert uri_credentials_problem(uri) is None


def test_redacted_uri_keeps_the_place_and_hides_the_secret():
    assert redact_uri(f"http://{USER}:{SECRET}@127.0.0.1:8000/qa.jsonl") == "http://***:***@127.0.0.1:8000/qa.jsonl"
    assert redact_uri("https://h/x?page=2&sig=abc") == "https://h/x?page=2&sig=***"


# --- every URI-bearing field refuses at load ---


@pytest.mark.parametrize("section, path, where", [
    ({"storage": {"root": f"s3://AKIAX:{SECRET}@bucket/prefix"}}, "storage.root", "AWS_SECRET_ACCESS_KEY"),
    ({"storage": {"root": "s3://b/p", "endpoint_url": f"http://minio:{SECRET}@127.0.0.1:9000"}},
     "storage.endpoint_url", "AWS_SECRET_ACCESS_KEY"),
    ({"tracking": {"mlflow_tracking_uri": f"http://admin:{SECRET}@127.0.0.1:5000"}},
     "tracking.mlflow_tracking_uri", "MLFLOW_TRACKING_PASSWORD"),
    ({"tracking": {"mlflow_tracking_uri": f"postgresql://mlflow:{SECRET}@db/mlflow"}},
     "tracking.mlflow_tracking_uri", "PGPASSWORD"),
    ({"eval": {"domain": {"judge": {"base_url": f"https://judge.example/v1?api_key={SECRET}"}}}},
     "eval.domain.judge.base_url", "api_key_env"),
    ({"categories": {"math": [{"name": "m", "uri": f"https://h/m.jsonl?token={SECRET}"}]}},
     "categories.math[0].uri", "netrc"),
])
def test_every_uri_field_refuses_credentials_with_its_path(section, path, where):
    with pytest.raises(ConfigError) as err:
        parse_config(_config("qa.jsonl", **section))
    text = str(err.value)
    assert f"{path}: " in text and where in text
    assert SECRET not in text and SECRET not in repr(err.value.__cause__)


def test_catalog_file_source_with_credentials_is_refused(tmp_path):
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text(yaml.safe_dump({"categories": {"math": [
        {"name": "m", "uri": f"https://{USER}:{SECRET}@h/m.jsonl"}]}}))
    with pytest.raises(ConfigError) as err:
        load_catalog(catalog)
    assert "categories.math[0].uri" in str(err.value) and SECRET not in str(err.value)


def test_source_uri_with_password_is_refused_at_load_and_netrc_reads_it(private_http, tmp_path, monkeypatch):
    base_url, netrc = private_http
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(_config(f"http://{USER}:{SECRET}@{base_url.removeprefix('http://')}/qa.jsonl")))
    with pytest.raises(ConfigError) as err:
        load_config(config)
    text = str(err.value)
    assert "data.sources[0].uri: http://***:***@127.0.0.1:" in text and "netrc" in text
    assert SECRET not in text

    # Where the password belongs: the server answers, and nothing read from it names the password.
    monkeypatch.setenv("NETRC", str(netrc))
    result = download(SourceConfig(name="qa", uri=f"{base_url}/qa.jsonl"))
    assert result.frame["answer"].to_list() == ["Canberra.", "4"]
    assert result.frame["_source_file"].unique().to_list() == [f"{base_url}/qa.jsonl"]
    assert SECRET not in json.dumps(result.files) + result.frame.write_csv()


def test_source_without_netrc_entry_is_refused_by_the_server(private_http):
    base_url, _ = private_http
    with pytest.raises(Exception, match="401|Unauthorized|does not exist"):
        download(SourceConfig(name="qa", uri=f"{base_url}/qa.jsonl"))


def test_check_data_refuses_a_uri_with_credentials(private_http, capsys):
    base_url, _ = private_http
    uri = f"http://{USER}:{SECRET}@{base_url.removeprefix('http://')}/qa.jsonl"
    assert main(["check-data", uri, "--json"]) == 2
    out = capsys.readouterr()
    record = json.loads(out.out.strip().splitlines()[-1])
    assert record["type"] == "error" and "password" in record["error"] and "netrc" in record["error"]
    assert SECRET not in out.out + out.err


# --- a whole run writes no secret ---


def _texts_of(path: Path) -> list[str]:
    """What a file holds, as text a secret could hide in: its bytes, and Parquet's decoded rows."""
    raw = path.read_bytes()
    texts = [raw.decode("utf-8", errors="replace")]
    if path.suffix == ".parquet":  # values may sit compressed in the file
        import polars as pl

        texts.append(pl.read_parquet(path).write_ndjson())
    return texts


@pytest.mark.usefixtures("prefect_server")
def test_a_run_writes_no_secret_anywhere(private_http, tmp_path, monkeypatch, capfd):
    """Credentials where they belong (a netrc for the HTTP source; S3, hub, MLflow and judge keys in the
    environment), a real run end to end, then every file it wrote is searched for them."""
    import prefect.settings

    from mixtune.flows.pipeline import pipeline
    from mixtune.storage.artifacts import ArtifactStore
    from test_prepare_flow import demo_like_config, write_domain_rows

    base_url, netrc = private_http
    served = Path(netrc).parent / "served" / "qa.jsonl"
    write_domain_rows(served, rows=40)  # real MedQuAD rows behind basic auth
    monkeypatch.setenv("NETRC", str(netrc))
    for name in ("AWS_SECRET_ACCESS_KEY", "HF_TOKEN", "MLFLOW_TRACKING_PASSWORD", "OPENAI_API_KEY"):
        monkeypatch.setenv(name, SECRET)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIA" + SECRET.upper())

    run_dir = tmp_path / "run"
    raw = demo_like_config(run_dir, served, mix={"domain_percent": 100},
                           split={"group_column": "focus", "train": 0.6, "val": 0.1, "test": 0.3},
                           train={"global_batch_size": 4, "per_device_batch_size": 4, "max_steps": 2,
                                  "logging_steps": 1, "checkpoint_every_steps": 1},
                           eval={"offline": True, "device": "cpu", "dtype": "float32",
                                 "general_tasks": [{"name": "arc_challenge", "limit": 2, "max_gen_toks": 4}],
                                 "domain": {"max_rows": 2, "max_new_tokens": 4, "judge": {"api_key_env": "OPENAI_API_KEY"}}})
    raw["data"]["sources"][0]["uri"] = f"{base_url}/qa.jsonl"
    run_dir.mkdir()
    (run_dir / "run.yaml").write_text(yaml.safe_dump(raw))
    cfg = load_config(run_dir / "run.yaml")

    result = pipeline(cfg)

    store = ArtifactStore(cfg.storage)
    assert result.runs[0].scores and store.exists(f"{result.report.uri}/report.md")
    download_dir = Path(cfg.storage.root) / "download"
    (manifest_file,) = download_dir.glob("*/manifest.json")
    assert json.loads(manifest_file.read_text())["files"] == [f"{base_url}/qa.jsonl"]  # it came over HTTP

    database = Path(prefect.settings.PREFECT_SERVER_DATABASE_CONNECTION_URL.value().split("///", 1)[1])
    places = [run_dir, database.parent, Path(os.environ["PREFECT_HOME"]), Path(os.environ["HF_HOME"])]
    assert (run_dir / "mlflow.db").is_file() and (Path(cfg.storage.root) / "_prefect").is_dir()
    assert (Path(cfg.storage.root) / "_mlflow").is_dir()
    secrets = {SECRET, base64.b64encode(f"{USER}:{SECRET}".encode()).decode(), SECRET.upper()}
    leaks, files = [], 0
    for place in places:
        for path in (p for p in place.rglob("*") if p.is_file()):
            files += 1
            leaks += [str(path) for text in _texts_of(path) if any(s in text for s in secrets)]
    console = capfd.readouterr()
    assert files > 50 and leaks == []
    assert not any(s in console.out + console.err for s in secrets)
