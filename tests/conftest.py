"""Shared fixtures: offline environment, a real Prefect test server, the tiny model.

The environment is set before anything imports transformers, Prefect or MLflow,
so no test can reach for the network or write into the user's home.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
_HOME = Path(tempfile.mkdtemp(prefix="mixtune-tests-"))
os.environ.update(
    HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_HUB_DISABLE_TELEMETRY="1",
    TOKENIZERS_PARALLELISM="false", DO_NOT_TRACK="true", MLFLOW_DISABLE_TELEMETRY="true",
    PREFECT_SERVER_ANALYTICS_ENABLED="false", MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false",
    HF_HOME=str(_HOME / "hf"), PREFECT_HOME=str(_HOME / "prefect"),
    NLTK_DATA=str(REPO / "data" / "nltk_data"),
    PREFECT_LOGGING_TO_API_ENABLED="false",
    MIXTUNE_LOG_DIR=str(_HOME / "logs"),  # commands run in-process log here, not under the repo
)

import pytest  # noqa: E402

from mixtune.sections import TinyModelConfig  # noqa: E402

DEMO_CORPUS = REPO / "data" / "medquad" / "medquad.jsonl"


@pytest.fixture(scope="session")
def prefect_server():
    """A real Prefect API on a temporary sqlite database, shared by the session's flow tests."""
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        # The heartbeat thread adds ~1 s to every flow call and tells a test nothing.
        with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
            yield


def tiny_model_config(**overrides) -> TinyModelConfig:
    """Small enough to build in about a second, on the shipped demo text."""
    return TinyModelConfig(corpus_files=[str(DEMO_CORPUS)], vocab_size=512, max_position_embeddings=1024,
                           **overrides)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny Llama folder with a trained tokenizer and chat template, built once per session."""
    from mixtune.models.tiny import build_tiny_model

    return build_tiny_model(tiny_model_config(), tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


# Chat turns for hand-written conversations in tests.
def U(content: str) -> dict:
    return {"role": "user", "content": content}


def A(content: str) -> dict:
    return {"role": "assistant", "content": content}


def S(content: str) -> dict:
    return {"role": "system", "content": content}


@pytest.fixture(scope="session")
def real_model_dir() -> Path:
    """SmolLM2-135M-Instruct (the default model), converted from its GGUF once and kept in
    .mixtune/test-store across sessions: the conversion takes ~30 s, loading the folder ~1 s."""
    from mixtune.models import model_path
    from mixtune.sections import ModelConfig, StorageConfig

    return Path(model_path(ModelConfig(), StorageConfig(root=str(REPO / ".mixtune" / "test-store"))))


@pytest.fixture(scope="session")
def real_tokenizer(real_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(real_model_dir)


def tiny_prepare_config(tmp_path: Path, name: str, storage: dict) -> Path:
    """A config file for a quick CLI run in a subprocess: 40 MedQuAD rows, the tiny model, ``storage``."""
    import yaml

    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({
        "name": name,
        "data": {"sources": [{"name": "med", "uri": str(DEMO_CORPUS), "max_rows": 40, "columns": {
            "kind": "prompt_response", "prompt": "question", "response": "answer"}}]},
        "model": {"name_or_path": "mixtune:tiny", "tiny": {"vocab_size": 400, "corpus_files": [str(DEMO_CORPUS)]}},
        "storage": storage,
    }))
    return config

