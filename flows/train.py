"""train flow: one mix's manifest and a base model in, an adapter out.

Its own flow so that ``prefect.yaml`` can deploy it to the ``gpu`` work pool;
the pipeline calls it in-process unless given that deployment's name. A run on
another machine reports its result through a pointer file in the storage root
(the caller shares the root, not the worker's local disk).
"""

from __future__ import annotations

from prefect import flow

from mixtune.flows.prepare import PreparedData
from mixtune.storage.artifacts import ArtifactRef, ArtifactStore
from mixtune.config import MixtuneConfig, resolve_config
from mixtune.train.job import MlflowTarget
from mixtune.tasks._names import flow_run_namer
from mixtune.tasks._stage import bind
from mixtune.tasks.forgetting import base_answers
from mixtune.tasks.train import train as train_task


def result_pointer(store: ArtifactStore, name: str, manifest: ArtifactRef) -> str:
    return store.uri("train", "_results", f"{name}-{manifest.fingerprint[:16]}.json")


@flow(name="train", log_prints=True, flow_run_name=flow_run_namer("train", lambda p: p["name"]))
def train(config: MixtuneConfig, name: str, manifest: ArtifactRef, prepared: PreparedData,
          mlflow: MlflowTarget | None = None) -> ArtifactRef:
    """Train on the manifest's exact order; resumes from the last checkpoint after a crash."""
    config = resolve_config(config)  # a deployment passes it unresolved
    train_, base_answers_ = bind(config.storage, train_task, base_answers)
    # The base model's answers to held-out general prompts: cached, so once per base in a sweep.
    answers = base_answers_(config.model, prepared.split, prepared.categories, config.storage) \
        if prepared.categories else None
    trained = train_(name, config.model, manifest, prepared.split, prepared.categories, config.train,
                     config.storage, mlflow, answers)
    store = ArtifactStore(config.storage)
    store.write_json(result_pointer(store, name, manifest), trained.model_dump(mode="json"))
    return trained
