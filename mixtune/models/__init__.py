"""Models: which weights a run loads, and how a configured name becomes a loadable folder.

``model_path`` turns ``model.name_or_path`` into what ``from_pretrained`` takes: a hub
id or local folder as given, or the built demo model ``mixtune:tiny`` (``tiny.py``).
``load_tokenizer`` is the one tokenizer every stage counts tokens and renders chat with.
"""

from __future__ import annotations

from mixtune.models.tiny import load_tokenizer as _load_tokenizer
from mixtune.models.tiny import resolve_model
from mixtune.sections import ModelConfig, StorageConfig
from mixtune.storage.artifacts import ArtifactStore


def model_path(model: ModelConfig, storage: StorageConfig) -> str:
    """A path or hub id for ``from_pretrained``; builds and caches the tiny demo model."""
    return resolve_model(model, ArtifactStore(storage))


def load_tokenizer(model: ModelConfig, storage: StorageConfig):
    """The configured model's tokenizer (a ``PreTrainedTokenizerBase``)."""
    return _load_tokenizer(model_path(model, storage), model)
