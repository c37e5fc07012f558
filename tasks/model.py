"""base-model task: make the configured model loadable by every later stage."""

from __future__ import annotations

from prefect import get_run_logger, task

from mixtune.models import model_path
from mixtune.sections import ModelConfig, StorageConfig


@task(name="base-model")
def base_model(model: ModelConfig, storage: StorageConfig) -> str:
    """Resolve (build or convert once, then cache) the configured base model; its local path or hub id."""
    path = model_path(model, storage)
    get_run_logger().info("model %s -> %s", model.name_or_path, path)
    return path
