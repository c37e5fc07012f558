"""A finished run's last lines: where to look (a direct MLflow address), then the recommendation, then done."""

from __future__ import annotations

from mixtune.cli import DONE_MARKER, _mlflow_command, _print_where
from mixtune.config import parse_config
from mixtune.storage.artifacts import ArtifactStore
from mixtune.tracking import mlflow_run, run_url, tracking_uri
from test_prepare_flow import demo_like_config

SENTENCE = "Ship d75-math1: domain ROUGE-L +0.050 (95% CI [+0.020, +0.080], n=40), general -0.004 (95% CI ...)."


def test_the_recommendation_is_printed_last_before_the_done_line(tmp_path, capsys):
    cfg = parse_config(demo_like_config(tmp_path, tmp_path / "unused.jsonl"))
    store = ArtifactStore(cfg.storage)
    uri = store.artifact_uri("compare", "comparison", "k1")
    store.write_bytes(f"{uri}/report.md", f"# mixtune: base vs tuned\n\n**{SENTENCE}**\n".encode())
    report = store.commit(stage="compare", name="comparison", key="k1", tables={}, rows_in=0, rows_kept=0,
                          extra={"recommendation": {"kind": "ship", "run": "d75-math1", "sentence": SENTENCE}})
    with mlflow_run(cfg.tracking, cfg.storage, "t-sweep") as parent:
        run_id, experiment_id = parent.info.run_id, parent.info.experiment_id

    _print_where(cfg, report, run_id)
    lines = [line for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert lines[-1].startswith(f"{DONE_MARKER} {uri}/report.md")
    assert lines[-2] == SENTENCE
    mlflow_line = next(line for line in lines if line.startswith("mlflow:"))
    # A file store has no server: the command to start one and the sweep's saved runs view on it.
    assert mlflow_line == (f"mlflow:    {_mlflow_command()} ui --backend-store-uri "
                           f"{tracking_uri(cfg.tracking, cfg.storage)}  "
                           f"then open http://127.0.0.1:5000/#/experiments/{experiment_id}/runs"
                           f"?viewStateShareKey=mixtune-{run_id}  (the mixes side by side)")


def test_a_tracking_server_has_a_direct_run_address():
    assert run_url("http://mlflow.internal:5000/", "3", "abc") == "http://mlflow.internal:5000/#/experiments/3/runs/abc"
    assert run_url("sqlite:///x/mlflow.db", "3", "abc") is None


def test_the_printed_mlflow_command_runs_from_this_shell_without_an_activated_venv():
    """`mixtune` runs as .venv/bin/mixtune with the venv not activated: `mlflow` alone may not be found."""
    import subprocess

    command = _mlflow_command()
    assert subprocess.run([command, "--version"], capture_output=True, timeout=120).returncode == 0

