"""sweep flow: several mixes, one prepare, one base evaluation, one comparison.

    mixtune sweep configs/demo.yaml --domain-percent 100,75,50,25

Each mix is a child flow run (``mix-run``) and an MLflow child run; the
domain-only control (100%) is always part of the sweep, because "did mixing
help" is only answerable against it. ``max_concurrency`` mixes train at once.
"""

from __future__ import annotations

import contextvars
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from prefect import flow
from pydantic import Field
from pydantic.fields import FieldInfo

from mixtune.flows.evaluate import ComparisonResult, EvalScores, evaluate
from mixtune.flows.pipeline import mix_name, mix_run
from mixtune.flows.prepare import prepare
from mixtune.storage.artifacts import ArtifactRef
from mixtune.config import MixtuneConfig, resolve_config
from mixtune.mix.spec import MixSpec
from mixtune.tracking import log_config, mlflow_run
from mixtune.tracking_runs import run_key
from mixtune.tasks._names import field, flow_run_namer
from mixtune.tasks._stage import bind
from mixtune.tasks.compare import compare

DEFAULT_DOMAIN_PERCENTS = [100.0, 75.0, 50.0, 25.0]


def sweep_mixes(base: MixSpec, domain_percents: list[float] | None = None,
                mixes: list[dict[str, Any]] | None = None) -> list[MixSpec]:
    """The mixes to run: explicit ones, or the config's weights at each domain share; control included."""
    if mixes:
        specs = [MixSpec.model_validate({**base.model_dump(exclude={"domain_percent", "weights"}), **m})
                 for m in mixes]
    else:
        specs = [base.model_copy(update={"domain_percent": float(p)})
                 for p in (domain_percents or DEFAULT_DOMAIN_PERCENTS)]
        specs = [MixSpec.model_validate(s.model_dump()) for s in specs]  # re-validate the new share
    if not any(s.domain_percent >= 100 for s in specs):
        specs.insert(0, base.model_copy(update={"domain_percent": 100.0}))
    unique: dict[str, MixSpec] = {}
    for spec in specs:
        unique.setdefault(mix_name(spec), spec)
    return list(unique.values())


def _run_label(parameters: dict[str, Any]) -> str:
    """``demo: d100, d75-math1``: the config's name and the mixes this sweep runs."""
    mix = field(parameters["config"], "mix")
    specs = sweep_mixes(mix if isinstance(mix, MixSpec) else MixSpec.model_validate(mix),
                        parameters.get("domain_percents"), parameters.get("mixes"))
    return f"{field(parameters['config'], 'name')}: {', '.join(mix_name(s) for s in specs)}"


@flow(name="sweep", log_prints=True, flow_run_name=flow_run_namer("sweep", _run_label))
def sweep(config: MixtuneConfig = Field(json_schema_extra={"position": 10}),
          domain_percents: list[float] | None = DEFAULT_DOMAIN_PERCENTS,  # never mutated
          mixes: list[dict[str, Any]] | None = None, max_concurrency: int = 1,
          train_deployment: str | None = None) -> ComparisonResult:
    """Prepare once, evaluate the base once, then one child flow run per mix, then compare them all.

    ``config`` is listed last in a deployment's Run form (its schema position):
    the sweep's own knobs come first, the long run config after them.

    Args:
        config: The run config (configs/*.yaml as a mapping); its mix's category weights are used by every
            blend of a domain_percents grid.
        domain_percents: Domain share of every training batch, in percent (0-100], one mix per value; the
            config's category weights split the rest. The domain-only control (100) is always added. Ignored
            when mixes is given.
        mixes: Explicit mixes instead of a grid, each like {domain_percent: 75, weights: {math: 2, code: 1}}
            (deployments/sweeps/*.yaml); empty = the domain_percents grid.
        max_concurrency: Mixes trained and evaluated at the same time (each holds a model in memory).
        train_deployment: A train deployment to run each mix's training on (e.g. train/mixtune-train on the
            gpu pool); empty = train in this flow run's process.
    """
    import mlflow

    if isinstance(config, FieldInfo):  # the signature's Field only orders the Run form; it is no default
        raise TypeError("sweep() missing required argument: 'config' (the run config)")
    config = resolve_config(config)  # a deployment passes it unresolved
    specs = sweep_mixes(config.mix, domain_percents, mixes)
    categories = sorted({c for spec in specs for c in spec.category_weights()})
    print("sweep over: " + ", ".join(mix_name(s) for s in specs))
    prepared = prepare(config, categories=categories)
    # Keyed by config, mixes and data: an identical re-run resumes its MLflow runs (see flows/pipeline.py).
    key = run_key("sweep", config.dump(), [s.model_dump(mode="json") for s in specs], prepared.fingerprints())
    with mlflow_run(config.tracking, config.storage, f"{config.name}-sweep", tags={"mixtune.flow": "sweep"},
                    key=key) as parent:
        log_config(mlflow, config.dump())
        base = evaluate(config, prepared)
        per_mix = [config.model_copy(update={"mix": spec}) for spec in specs]
        with ThreadPoolExecutor(max_workers=max(1, max_concurrency)) as pool:
            # copy_context: each thread's flow call must see this flow as its parent.
            futures = [pool.submit(contextvars.copy_context().run, mix_run, c, prepared, parent.info.run_id,
                                   train_deployment) for c in per_mix]
            runs = [f.result() for f in futures]
        (compare_,) = bind(config.storage, compare)
        report = compare_([base.general, base.domain], {r.run: [r.general, r.domain] for r in runs},
                          config.eval, config.storage, config.tracking, parent.info.run_id)
    return ComparisonResult(base=base, runs=runs, report=report, mlflow_run_id=parent.info.run_id)
