"""base-model task: make the configured model loadable by every later stage."""

from __future__ import annotations

from prefect import get_run_logger, task

from mixtune.models import model_path
from mixtune.sections import ModelConfig, StorageConfig
from mixtune.storage.faults import storage_faults
from mixtune.tasks._names import field, task_run_namer


@task(name="base-model", task_run_name=task_run_namer("base-model", lambda p: field(p["model"], "name_or_path")))
def base_model(model: ModelConfig, storage: StorageConfig) -> str:
    """Resolve (build or convert once, then cache) the configured base model; its local path or hub id."""
    with storage_faults(storage):
        path = model_path(model, storage)
    get_run_logger().info("model %s -> %s", model.name_or_path, path)
    return path
