"""pipeline flow: one mix, from raw data to a comparison report.

    mixtune run configs/demo.yaml

    prepare -> evaluate base -> [mix-manifest -> train -> evaluate tuned] -> compare

Read top to bottom: each line is one stage (or a flow of stages) taking the
previous stage's artifact references. MLflow gets one parent run for the
pipeline and a child run for the mix, as a sweep has one child per mix. The
parent is keyed by the config and the prepared data's fingerprints, each child
by its parent and mix name: the same run again, or again after a crash,
writes into the same MLflow runs instead of adding new ones.
"""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.deployments import run_deployment

from mixtune.config import MixtuneConfig, resolve_config
from mixtune.flows.evaluate import ComparisonResult, EvalScores, evaluate
from mixtune.flows.prepare import PreparedData, prepare
from mixtune.flows.train import result_pointer, train
from mixtune.mix.sources import run_size
from mixtune.mix.spec import MixSpec
from mixtune.storage.artifacts import ArtifactRef, ArtifactStore
from mixtune.tasks._names import field, flow_run_namer
from mixtune.tasks._stage import bind
from mixtune.tasks.compare import compare
from mixtune.tasks.mix_manifest import mix_manifest
from mixtune.tracking import log_config, log_realized_mix, mlflow_run, tracking_uri
from mixtune.tracking_runs import copy_training_curves, run_key
from mixtune.train.job import MlflowTarget


@flow(name="pipeline", log_prints=True, flow_run_name=flow_run_namer(
    "pipeline", lambda p: f"{field(p['config'], 'name')} {config_mix_name(p['config'])}"))
def pipeline(config: MixtuneConfig, train_deployment: str | None = None) -> ComparisonResult:
    """prepare -> mix-manifest -> train -> evaluate (base and tuned) -> compare, for one mix."""
    import mlflow

    config = resolve_config(config)  # a deployment passes it unresolved
    prepared = prepare(config)
    # Keyed by config and data: an identical re-run (or one after a crash) resumes its MLflow runs.
    key = run_key("pipeline", config.dump(), prepared.fingerprints())
    with mlflow_run(config.tracking, config.storage, config.name, tags={"mixtune.flow": "pipeline"},
                    key=key) as parent:
        log_config(mlflow, config.dump())
        base = evaluate(config, prepared)  # cached: a re-run or a sweep evaluates the base model once
        tuned = mix_run(config, prepared, parent.info.run_id, train_deployment)
        (compare_,) = bind(config.storage, compare)
        report = compare_([base.general, base.domain], {tuned.run: [tuned.general, tuned.domain]},
                          config.eval, config.storage, config.tracking, parent.info.run_id)
    return ComparisonResult(base=base, runs=[tuned], report=report, mlflow_run_id=parent.info.run_id)


@flow(name="mix-run", log_prints=True,
      flow_run_name=flow_run_namer("mix-run", lambda p: config_mix_name(p["config"])))
def mix_run(config: MixtuneConfig, prepared: PreparedData, parent_run_id: str,
            train_deployment: str | None = None) -> EvalScores:
    """One mix: its manifest, its training, its evaluation; an MLflow child run of ``parent_run_id``."""
    import mlflow

    name = mix_name(config.mix)
    with mlflow_run(config.tracking, config.storage, name, parent_run_id=parent_run_id,
                    key=run_key("mix", parent_run_id, name)) as child:
        log_config(mlflow, config.dump())
        (mix_manifest_,) = bind(config.storage, mix_manifest)
        manifest = mix_manifest_(name, prepared.split, prepared.categories, config.mix,
                                 run_size(config.train), config.storage)
        log_realized_mix(mlflow, manifest, config.storage)
        target = MlflowTarget(tracking_uri=tracking_uri(config.tracking, config.storage), run_id=child.info.run_id)
        trained = train_remote(config, name, manifest, prepared, target, train_deployment) \
            if train_deployment else train(config, name, manifest, prepared, target)
        trained_in = ArtifactStore(config.storage).manifest(trained).get("mlflow_run_id")
        if trained_in and trained_in != child.info.run_id:
            mlflow.set_tag("mixtune.trained_in_run", trained_in)  # training was a cache hit
            copy_curves(child.info.run_id, trained_in, config)
        scores = evaluate(config, prepared, trained)
        mlflow.log_metrics({k.replace(",", "."): v for k, v in scores.scores.items()})
    return scores


def copy_curves(run_id: str, trained_in: str, config: MixtuneConfig) -> None:
    """The training curves of the run that trained, into this mix's run; a warning when that run is gone."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    try:
        copy_training_curves(MlflowClient(tracking_uri(config.tracking, config.storage)), trained_in, run_id)
    except MlflowException as error:  # deleted, or tracked elsewhere: the curves stay in the training artifact
        get_run_logger().warning("training curves of MLflow run %s not copied: %s", trained_in,
                                 str(error).splitlines()[0])


def train_remote(config: MixtuneConfig, name: str, manifest: ArtifactRef, prepared: PreparedData,
                 target: MlflowTarget, deployment: str) -> ArtifactRef:
    """Run the train deployment (e.g. on the gpu pool) and wait; its result comes back through storage."""
    flow_run = run_deployment(deployment, parameters={
        "config": config.dump(), "name": name, "manifest": manifest.model_dump(mode="json"),
        "prepared": prepared.model_dump(mode="json"), "mlflow": target.model_dump(mode="json")})
    if not flow_run.state or not flow_run.state.is_completed():
        raise RuntimeError(f"train deployment {deployment!r} ended {flow_run.state.name if flow_run.state else 'without a state'}")
    store = ArtifactStore(config.storage)
    return ArtifactRef.model_validate(store.read_json(result_pointer(store, name, manifest)))


def mix_name(mix: MixSpec) -> str:
    """A readable run name: ``d75-code1-math2`` (weights as given, sorted by category)."""
    if mix.domain_percent >= 100:
        return "d100"
    weights = "-".join(f"{c}{w:g}" for c, w in sorted(mix.weights.items()) if w > 0)
    return f"d{mix.domain_percent:g}-{weights}"


def config_mix_name(config: MixtuneConfig | dict) -> str:
    """``mix_name`` of a config's mix, also for a config still a dict (a deployment's parameters)."""
    mix = field(config, "mix")
    return mix_name(mix if isinstance(mix, MixSpec) else MixSpec.model_validate(mix))
