"""compare task: every tuned run against the base on both axes, checks with intervals, a recommendation.

Writes ``report.md``, ``report.html`` (plot embedded), ``pareto.png`` and the
comparison table (Parquet) into one artifact folder; its manifest holds the
recommendation, verdicts and checks (``mixtune compare``'s CLI reads the
recommendation from there). Publishes the recommendation with the changes
table (verdict first) as the Prefect artifact ``mix-comparison`` and every
score as ``mix-scores``. Given an MLflow run id (the pipeline's or sweep's
parent), it logs the recommendation as that run's description and a tag, every
run's scores and deltas as metrics, the report files as artifacts, and on each
mix's child run (found by name under the parent) its deltas with intervals,
verdict and checks.
"""

from __future__ import annotations

import html
import json
import math
import os
import re
import tempfile
import time
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

import mixtune.eval.compare as core
import mixtune.eval.scores as scores_core
import mixtune.eval.stats as stats_core
from mixtune.eval import curves as curves_core
from mixtune.eval import report
from mixtune.eval.config import EvalConfig
from mixtune.eval.domain import primary_domain_score
from mixtune.eval.scores import domain_item_labels, domain_item_scores, general_item_scores, read_scores
from mixtune.eval.under_test import BASE_RUN
from mixtune.models import describe_model
from mixtune.sections import ModelConfig, StorageConfig, TrackingConfig
from mixtune.storage.artifacts import ArtifactRef, ArtifactStore, code_version, fingerprint
from mixtune.tasks._names import task_run_namer
from mixtune.tasks._stage import stage_task
from mixtune.tracking import (SHARED_VIEW_TAG_PREFIX, comparison_view_key, comparison_view_state,
                              comparison_view_url, run_url, tracking_uri)

REPORT_FILES = ("report.md", "report.html", "pareto.png")
CURVE_FILES = ("curves.png",)  # when the training runs logged held-out losses
_MAX_TAG_CHARS = 7900  # MLflow refuses tag values over 8000 characters
_MIX_NAME = re.compile(r"d(\d+(?:\.\d+)?)(?:-|$)")


def _mix_of(refs: list[ArtifactRef], store: ArtifactStore, name: str) -> tuple[float | None, dict[str, float]]:
    """The run's mix (domain percent, weights) from lineage: evaluation -> train -> mix-manifest.

    A run evaluated without that lineage (a hand-made artifact) falls back to
    the share its name states (``d75-...``), else unknown; it only shapes advice.
    """
    try:
        for ref in refs:
            for parent in store.manifest(ref).get("parents", []):
                if parent["stage"] != "train":
                    continue
                for grand in store.read_json(f"{parent['uri']}/manifest.json").get("parents", []):
                    if grand["stage"] == "mix-manifest":
                        mix = store.read_json(f"{grand['uri']}/manifest.json")["parameters"]["mix"]
                        return float(mix["domain_percent"]), {k: float(v) for k, v in mix.get("weights", {}).items()}
    except (OSError, KeyError, TypeError, ValueError):
        pass
    match = _MIX_NAME.match(name)
    return (float(match.group(1)), {}) if match else (None, {})


def run_scores(name: str, refs: list[ArtifactRef], eval_cfg: EvalConfig, storage: StorageConfig) -> core.RunScores:
    """One run's scores and per-item results from its [general, domain] evaluation artifacts."""
    store = ArtifactStore(storage)
    scores = read_scores(refs, storage)
    domain_key, domain_score = primary_domain_score(scores, eval_cfg.domain)
    general = {k: v for k, v in scores.items() if not k.startswith("domain/")}
    items: dict[str, core.Items] = {}
    for ref in refs:
        if ref.stage == "eval_general" and "samples" in ref.tables:
            per_key = general_item_scores(store.read_table(ref, "samples"), general)
            items |= {key: core.Items(scores=values) for key, values in per_key.items()}
        elif ref.stage == "eval_domain" and "predictions" in ref.tables:
            predictions = store.read_table(ref, "predictions")
            metric = domain_key.split("/", 1)[1]
            items[domain_key] = (core.Items(labels=domain_item_labels(predictions)) if metric == "macro_f1"
                                 else core.Items(scores=domain_item_scores(predictions, metric)))
    percent, weights = _mix_of(refs, store, name)
    return core.RunScores(name=name, domain_score=domain_score, general=general, items=items,
                          domain_metric=domain_key, domain_percent=percent, weights=weights)


# --- MLflow ---


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _mlflow_metrics(comparison: core.Comparison) -> dict[str, float]:
    """For the parent run: ``<run>/<column>`` and ``<run>/delta/<metric>`` for every number in the table."""
    metrics = {}
    for row in comparison.table.iter_rows(named=True):
        run = re.sub(r"[^A-Za-z0-9_.\- /]", "_", row["run"])
        for column, value in row.items():
            if not _finite(value):
                continue
            if column.endswith(" delta") or column == "domain_delta":
                metrics[f"{run}/delta/{column.removesuffix(' delta').removesuffix('_delta')}"] = float(value)
            else:
                metrics[f"{run}/{column}"] = float(value)
    return metrics


def _child_logs(comparison: core.Comparison) -> dict[str, dict[str, Any]]:
    """Per tuned run, what its own MLflow child run gets: changes with intervals, verdict, checks."""
    logs = {}
    recommended = comparison.recommendation.run if comparison.recommendation.kind == core.SHIP else None
    for name, changes in comparison.changes.items():
        metrics = {}
        for metric, change in changes.items():
            for field in ("delta", "ci_low", "ci_high", "n"):
                value = getattr(change, field)
                if _finite(value):
                    metrics[f"vs_base/{metric}/{field}"] = float(value)
        checks = comparison.checks[name]
        failed = [c for c in checks if not c.passed]
        note = "\n".join([f"**{comparison.verdicts[name]}**", "",
                           *(f"- {c.heading}: {c.finding}. Next: {c.advice}." for c in failed),
                           *(f"- passed: {c.finding}" for c in checks if c.passed), "",
                           f"Recommendation for the sweep: {comparison.recommendation.sentence}"])
        logs[name] = {"metrics": metrics, "tags": {
            "verdict": comparison.verdicts[name], "recommended": "yes" if name == recommended else "no",
            "checks_not_passed": ", ".join(c.metric for c in failed) or "none",
            "mlflow.note.content": note[:_MAX_TAG_CHARS]},
            "scores": list(comparison.general_metrics)}  # logged by the mix run itself; named for the view
    return logs


@task(name="log-comparison", task_run_name="log-comparison to MLflow", retries=2, retry_delay_seconds=[5, 30],
      cache_policy=NO_CACHE)
def log_comparison(metrics: dict[str, float], tags: dict[str, str], children: dict[str, dict[str, Any]],
                   report_dir: str, tracking: TrackingConfig, storage: StorageConfig,
                   mlflow_run_id: str) -> tuple[str | None, str | None]:
    """Parent: metrics, tags (verdicts, recommendation, description) and report files; each child: its own;
    the experiment: a saved runs-table view of the mixes side by side.

    Returns the parent run's UI address and the view's when the tracking URI is a server. Retried: network.
    """
    from mlflow import MlflowClient
    from mlflow.entities import Metric, RunTag

    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    if storage.endpoint_url and storage.root.startswith("s3://"):
        os.environ.setdefault("MLFLOW_S3_ENDPOINT_URL", storage.endpoint_url)
    # The client API, not start_run: the pipeline may hold this very run open in this thread.
    uri = tracking_uri(tracking, storage)
    client = MlflowClient(uri)
    now_ms = int(time.time() * 1000)
    experiment_id = client.get_run(mlflow_run_id).info.experiment_id
    # Open the experiment on its runs table, not the GenAI overview (traces): these are training runs.
    client.set_experiment_tag(experiment_id, "mlflow.experimentKind", "custom_model_development")

    def log(run_id: str, run_metrics: dict[str, float], run_tags: dict[str, str]) -> None:
        items = sorted(run_metrics.items())
        for start in range(0, max(len(items), 1), 1000):  # MLflow caps a batch at 1000 metrics
            batch_tags = [RunTag(k, v) for k, v in sorted(run_tags.items())] if start == 0 else []
            client.log_batch(run_id, metrics=[Metric(k, v, now_ms, 0) for k, v in items[start:start + 1000]],
                             tags=batch_tags)

    log(mlflow_run_id, metrics, tags)
    parent_filter = f"tags.`mlflow.parentRunId` = '{mlflow_run_id}'"
    child_ids = {run.info.run_name: run.info.run_id for run in client.search_runs([experiment_id], parent_filter)}
    for name, payload in children.items():
        if name in child_ids:
            log(child_ids[name], payload["metrics"], payload["tags"])
    # A saved view of the runs table: this sweep's mixes side by side, verdict and changes first.
    deltas = sorted({k for p in children.values() for k in p["metrics"] if k.endswith("/delta")})
    scores = sorted({k for p in children.values() for k in p["scores"]})
    domain_gain = next((k for k in deltas if k.startswith("vs_base/domain/")), None)  # the best domain gain first
    view = comparison_view_state(mlflow_run_id, deltas + scores, ["verdict", "recommended", "checks_not_passed"],
                                 ["mix.domain_percent"], order_by_metric=domain_gain)
    client.set_experiment_tag(experiment_id, SHARED_VIEW_TAG_PREFIX + comparison_view_key(mlflow_run_id),
                              json.dumps(view))
    client.log_artifacts(mlflow_run_id, report_dir, artifact_path="comparison")
    return run_url(uri, experiment_id, mlflow_run_id), comparison_view_url(uri, experiment_id, mlflow_run_id)


def _folder_key(base: list[ArtifactRef], runs: dict[str, list[ArtifactRef]], eval_cfg: EvalConfig) -> str:
    """Same evaluations and settings, same folder, whichever MLflow run the report is logged to."""
    return fingerprint("compare", code_version(core, report, stats_core, scores_core), base, runs, eval_cfg)


def _artifact_markdown(comparison: core.Comparison, ref: ArtifactRef, parent_url: str | None,
                       view_url: str | None, mlflow_run_id: str | None) -> str:
    """The Prefect pane: recommendation, the changes table with the verdict first, where to read more."""
    header, rows = report.changes_table(comparison)

    def line(values: list[str]) -> str:
        return "| " + " | ".join(v.replace("|", "\\|") for v in values) + " |"

    parts = [f"**{comparison.recommendation.sentence}**", ""]
    if rows:
        parts += ["Changes against the base, 95% CI:", "", line(header), line(["---"] * len(header)),
                  *(line(r) for r in rows), ""]
    for name, checks in comparison.checks.items():
        for check in checks:
            if not check.passed:
                parts.append(f"- **{name}** {check.heading}: {check.finding}. Next: {check.advice}.")
    parts += ["", f"Report with plot: `{ref.uri}/report.html`"]
    if parent_url:
        parts.append(f"MLflow parent run: [{mlflow_run_id}]({parent_url})")
        parts.append(f"MLflow, the mixes side by side: [runs table]({view_url})")
    elif mlflow_run_id:
        parts.append(f"MLflow parent run: `{mlflow_run_id}` (file store: browse with `mlflow ui`)")
    return "\n".join(parts) + "\n"


@stage_task("compare", core, report, stats_core, scores_core,
            run_name=task_run_namer("compare", lambda p: f"{BASE_RUN} vs " + ", ".join(p["runs"])))
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
    recommendation = comparison.recommendation
    key = _folder_key(base, runs, eval_cfg)
    parent_url = view_url = None
    with tempfile.TemporaryDirectory() as tmp:
        report_dir = Path(tmp)
        report.plot_pareto(comparison, report_dir / "pareto.png")
        (report_dir / "report.md").write_text(report.render_markdown(comparison), encoding="utf-8")
        (report_dir / "report.html").write_text(
            report.render_html(comparison, pareto_png=report_dir / "pareto.png"), encoding="utf-8")
        curves_core.add_to_report(report_dir, curves_core.curves_of_runs(store, runs))
        _name_the_model(report_dir, store, base)
        if (ref := store.find("compare", "comparison", key)) is None:
            uri = store.artifact_uri("compare", "comparison", key)
            for file in REPORT_FILES + CURVE_FILES:  # before commit: the manifest is written last
                if (report_dir / file).exists():
                    store.write_bytes(f"{uri}/{file}", (report_dir / file).read_bytes())
            ref = store.commit(
                stage="compare", name="comparison", key=key, tables={"comparison": comparison.table},
                parents=[*base, *(r for refs in runs.values() for r in refs)],
                parameters={"eval": eval_cfg}, rows_in=comparison.table.height, rows_kept=comparison.table.height,
                extra={"recommendation": {"kind": recommendation.kind, "run": recommendation.run,
                                          "sentence": recommendation.sentence},
                       "verdicts": comparison.verdicts,
                       "checks": {name: [{"metric": c.metric, "outcome": c.outcome, "finding": c.finding,
                                          "advice": c.advice, "n_needed": c.n_needed} for c in checks]
                                  for name, checks in comparison.checks.items()},
                       "pareto_front": comparison.pareto_front, "domain_target": comparison.domain_target,
                       "domain_metric": comparison.domain_metric, "general_metrics": comparison.general_metrics,
                       "rule": core.RULE, "files": list(REPORT_FILES)},
            )
        if mlflow_run_id is not None:
            tags = {f"verdict.{name}": text for name, text in comparison.verdicts.items()}
            # The run's description in the MLflow UI: the report from the recommendation on, no title.
            note = report.render_markdown(comparison, pareto_png=None).split("\n", 2)[-1]
            tags |= {"recommendation": recommendation.sentence[:_MAX_TAG_CHARS],
                     "mlflow.note.content": note[:_MAX_TAG_CHARS]}
            parent_url, view_url = log_comparison(_mlflow_metrics(comparison), tags, _child_logs(comparison),
                                                  str(report_dir), tracking or TrackingConfig(), storage,
                                                  mlflow_run_id)
    create_markdown_artifact(
        key="mix-comparison", markdown=_artifact_markdown(comparison, ref, parent_url, view_url, mlflow_run_id),
        description="Which mix to ship: recommendation, verdicts and changes with 95% intervals",
    )
    create_table_artifact(key="mix-scores", table=report.score_rows(comparison),
                          description="Every run's verdict, scores (± standard error) and changes (95% CI)")
    logger = get_run_logger()
    for name, text in comparison.verdicts.items():
        logger.info("%s: %s", name, text)
    logger.info("recommendation: %s", recommendation.sentence)
    return ref


def _name_the_model(report_dir: Path, store: ArtifactStore, base: list[ArtifactRef]) -> None:
    """Right after the recommendation: which weights every run started from (file, hash, quantization)."""
    parameters = store.manifest(base[0]).get("parameters", {}) if base else {}
    if "model" not in parameters:
        return
    line = "Base model: " + describe_model(ModelConfig.model_validate(parameters["model"]), store.cfg)
    markdown = report_dir / "report.md"
    lines = markdown.read_text(encoding="utf-8").split("\n")
    at = next((i + 1 for i, text in enumerate(lines) if text.startswith("**")), 1)
    markdown.write_text("\n".join([*lines[:at], "", line, *lines[at:]]), encoding="utf-8")
    page = report_dir / "report.html"
    text = page.read_text(encoding="utf-8")
    anchor = "</strong></p>" if "</strong></p>" in text else "</h1>"
    page.write_text(text.replace(anchor, f"{anchor}\n<p>{html.escape(line)}</p>", 1), encoding="utf-8")
