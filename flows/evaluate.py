"""evaluate flow: one model on both axes, the base (no ``trained``) or a trained mix.

    mixtune evaluate configs/demo.yaml

General benchmarks through lm-eval, then the domain task on the held-out
test split, both with the config's ``eval`` settings, identical for every
model. The base model's results are cached by model, eval config and data,
so a sweep evaluates it once. Runs prepare first when not handed its output.
"""

from __future__ import annotations

from prefect import flow
from pydantic import BaseModel

from mixtune.flows.prepare import PreparedData, prepare
from mixtune.storage.artifacts import ArtifactRef
from mixtune.config import MixtuneConfig
from mixtune.tasks._names import field, flow_run_namer
from mixtune.tasks._stage import bind
from mixtune.eval.scores import read_scores
from mixtune.eval.under_test import BASE_RUN, run_name
from mixtune.tasks.evaluate import evaluate_domain, evaluate_general


class EvalScores(BaseModel):
    """One model's evaluation: where the details are and the flat scores."""

    run: str  # "base" or the trained mix's name
    general: ArtifactRef  # scores + lm-eval's per-document samples
    domain: ArtifactRef  # predictions with per-row scores
    scores: dict[str, float]  # {"mmlu/acc": ..., "domain/rouge_l": ...}


class ComparisonResult(BaseModel):
    """What the pipeline and sweep flows return: the base, every tuned mix, the report, the MLflow parent."""

    base: EvalScores
    runs: list[EvalScores]
    report: ArtifactRef
    mlflow_run_id: str


@flow(name="evaluate", log_prints=True, flow_run_name=flow_run_namer(
    "evaluate", lambda p: BASE_RUN if p.get("trained") is None else field(p["trained"], "name")))
def evaluate(config: MixtuneConfig, prepared: PreparedData | None = None,
             trained: ArtifactRef | None = None) -> EvalScores:
    """Score the base model (``trained`` unset) or a trained model on the general and domain axes."""
    prepared = prepared or prepare(config)
    general_, domain_ = bind(config.storage, evaluate_general, evaluate_domain)
    source_is_label = any(s.columns.kind == "label" for s in config.data.sources)
    general = general_(config.model, trained, config.eval, config.storage)
    domain = domain_(config.model, trained, prepared.split, source_is_label, config.eval, config.storage)
    return EvalScores(run=run_name(trained), general=general, domain=domain,
                      scores=read_scores([general, domain], config.storage))
