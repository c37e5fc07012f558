"""base-model task: make the configured model loadable by every later stage."""

from __future__ import annotations

from prefect import get_run_logger

import mixtune.tiny_model as core
from mixtune.artifacts import ArtifactStore
from mixtune.sections import ModelConfig, StorageConfig


def local_model_path(model: ModelConfig, storage: StorageConfig) -> str:
    """A path or hub id for ``from_pretrained``; builds and caches the tiny demo model."""
    return core.resolve_model(model, ArtifactStore(storage))


def load_tokenizer(model: ModelConfig, storage: StorageConfig):
    return core.load_tokenizer(local_model_path(model, storage), model)


def log_model(model: ModelConfig, storage: StorageConfig) -> str:
    path = local_model_path(model, storage)
    get_run_logger().info("model %s -> %s", model.name_or_path, path)
    return path
