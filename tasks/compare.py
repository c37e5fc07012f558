"""compare task: every tuned run against the base on both axes, a verdict each, a Pareto plot.

Writes ``report.md``, ``report.html`` (plot embedded), ``pareto.png`` and the
comparison table (Parquet) into one artifact folder, publishes the report and
the table as Prefect artifacts (``mix-comparison``, ``mix-scores``) and, given
an MLflow run id, logs every run's scores and deltas plus the report files to
that run.
"""

from __future__ import annotations

import os
import re
import tempfile
import time
from pathlib import Path

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

import mixtune.eval.compare as core
from mixtune.eval import report
from mixtune.storage.artifacts import ArtifactRef, ArtifactStore, code_version, fingerprint
from mixtune.eval.config import EvalConfig
from mixtune.eval.domain import primary_domain_score
from mixtune.sections import StorageConfig, TrackingConfig
from mixtune.tracking import tracking_uri
from mixtune.tasks._stage import stage_task
from mixtune.eval.scores import read_scores
from mixtune.eval.under_test import BASE_RUN

REPORT_FILES = ("report.md", "report.html", "pareto.png")


def run_scores(name: str, refs: list[ArtifactRef], eval_cfg: EvalConfig, storage: StorageConfig) -> core.RunScores:
    """One run's primary domain score and general scores from its evaluation artifacts."""
    scores = read_scores(refs, storage)
    _, domain_score = primary_domain_score(scores, eval_cfg.domain)
    return core.RunScores(name=name, domain_score=domain_score,
                          general={k: v for k, v in scores.items() if not k.startswith("domain/")})


def _mlflow_metrics(comparison: core.Comparison) -> dict[str, float]:
    """``<run>/<metric>`` and ``<run>/delta/<metric>`` for every number in the table."""
    metrics = {}
    for row in comparison.table.iter_rows(named=True):
        run = re.sub(r"[^A-Za-z0-9_.\- /]", "_", row["run"])
        for column, value in row.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            if column.endswith(" delta") or column == "domain_delta":
                metrics[f"{run}/delta/{column.removesuffix(' delta').removesuffix('_delta')}"] = float(value)
            else:
                metrics[f"{run}/{column}"] = float(value)
    return metrics


@task(name="log-comparison", retries=2, retry_delay_seconds=[5, 30], cache_policy=NO_CACHE)
def log_comparison(metrics: dict[str, float], verdicts: dict[str, str], report_dir: str, tracking: TrackingConfig,
                   storage: StorageConfig, mlflow_run_id: str) -> None:
    """Scores, deltas, verdicts (as tags) and the report files onto an existing MLflow run; retried: network."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric, RunTag

    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    if storage.endpoint_url and storage.root.startswith("s3://"):
        os.environ.setdefault("MLFLOW_S3_ENDPOINT_URL", storage.endpoint_url)
    # The client API, not start_run: the pipeline may hold this very run open in this thread.
    client = MlflowClient(tracking_uri(tracking, storage))
    now_ms = int(time.time() * 1000)
    client.log_batch(
        mlflow_run_id,
        metrics=[Metric(k, v, now_ms, 0) for k, v in sorted(metrics.items())],
        tags=[RunTag(f"verdict.{name}", text) for name, text in sorted(verdicts.items())],
    )
    client.log_artifacts(mlflow_run_id, report_dir, artifact_path="comparison")


def _folder_key(base: list[ArtifactRef], runs: dict[str, list[ArtifactRef]], eval_cfg: EvalConfig) -> str:
    """Same evaluations and settings, same folder, whichever MLflow run the report is logged to."""
    return fingerprint("compare", code_version(core, report), base, runs, eval_cfg)


@stage_task("compare", core, report)
def compare(base: list[ArtifactRef], runs: dict[str, list[ArtifactRef]], eval_cfg: EvalConfig,
            storage: StorageConfig, tracking: TrackingConfig | None = None,
            mlflow_run_id: str | None = None) -> ArtifactRef:
    """``base`` and each run are [general, domain] evaluation artifacts; runs are keyed by mix name."""
    store = ArtifactStore(storage)
    comparison = core.compare_runs(
        run_scores(BASE_RUN, base, eval_cfg, storage),
        [run_scores(name, refs, eval_cfg, storage) for name, refs in runs.items()],
        tolerance=eval_cfg.tolerance, domain_target=eval_cfg.domain_target,
        instruction_following_prefixes=eval_cfg.instruction_following_prefixes,
    )
    key = _folder_key(base, runs, eval_cfg)
    with tempfile.TemporaryDirectory() as tmp:
        report_dir = Path(tmp)
        report.plot_pareto(comparison, report_dir / "pareto.png")
        (report_dir / "report.md").write_text(report.render_markdown(comparison), encoding="utf-8")
        (report_dir / "report.html").write_text(
            report.render_html(comparison, pareto_png=report_dir / "pareto.png"), encoding="utf-8")
        if (ref := store.find("compare", "comparison", key)) is None:
            uri = store.artifact_uri("compare", "comparison", key)
            for file in REPORT_FILES:  # before commit: the manifest is written last
                store.write_bytes(f"{uri}/{file}", (report_dir / file).read_bytes())
            ref = store.commit(
                stage="compare", name="comparison", key=key, tables={"comparison": comparison.table},
                parents=[*base, *(r for refs in runs.values() for r in refs)],
                parameters={"eval": eval_cfg}, rows_in=comparison.table.height, rows_kept=comparison.table.height,
                extra={"verdicts": comparison.verdicts, "pareto_front": comparison.pareto_front,
                       "domain_target": comparison.domain_target, "general_metrics": comparison.general_metrics,
                       "files": list(REPORT_FILES)},
            )
        if mlflow_run_id is not None:
            log_comparison(_mlflow_metrics(comparison), comparison.verdicts, str(report_dir), tracking or TrackingConfig(),
                           storage, mlflow_run_id)
    create_markdown_artifact(
        key="mix-comparison",
        markdown=report.render_markdown(comparison, pareto_png=None) + f"\nReport with plot: `{ref.uri}/report.html`\n",
        description="Base vs tuned mixes: both axes, verdicts, Pareto front",
    )
    create_table_artifact(
        key="mix-scores",
        table=[{k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}
               for row in comparison.table.iter_rows(named=True)],
        description="Scores, deltas to the base and verdict per run",
    )
    for name, text in comparison.verdicts.items():
        get_run_logger().info("%s: %s", name, text)
    return ref
