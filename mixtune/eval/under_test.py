"""Which weights an evaluation loads: the base model, base + LoRA adapter, or full weights.

A trained model is a ``train`` artifact: ``{uri}/adapter/`` (PEFT adapter,
applied unmerged on the configured base) when its manifest says
``"method": "lora"``, ``{uri}/model/`` (full weights) when ``"full"``.
"""

from __future__ import annotations

from pathlib import Path

from mixtune.models import model_path
from mixtune.models.tiny import local_model_cache
from mixtune.sections import ModelConfig, StorageConfig
from mixtune.storage.artifacts import ArtifactRef, ArtifactStore

BASE_RUN = "base"  # the run name of the untuned model in artifacts, tables and reports
_WEIGHTS_FOLDER = {"lora": "adapter", "full": "model"}



def local_model_files(ref: ArtifactRef, store: ArtifactStore) -> Path:
    """Local folder of a trained model's weights: the adapter (LoRA) or the full model.

    On a remote root the folder is fetched once into the local model cache
    (HF loaders need local files); a half-finished copy is never used.
    """
    method = store.manifest(ref).get("method")
    if method not in _WEIGHTS_FOLDER:
        raise ValueError(f"{ref.uri}/manifest.json: method is {method!r}; a train artifact says 'lora' or 'full'")
    folder = _WEIGHTS_FOLDER[method]
    if store.is_local:
        local = Path(store.fs_path(ref.uri)) / folder
        if not local.is_dir():
            raise FileNotFoundError(f"{ref.uri}: no {folder}/ folder for a {method} model")
        return local
    local = local_model_cache(store) / "trained" / f"{ref.name}-{ref.fingerprint[:16]}" / folder
    return store.fetch_dir(f"{ref.uri}/{folder}", local)


def model_under_test(model: ModelConfig, trained: ArtifactRef | None,
                     storage: StorageConfig) -> tuple[str, str | None, str | None]:
    """(pretrained, adapter_dir, revision) for the loaders: the base, base + adapter, or full weights."""
    base = model_path(model, storage)
    if trained is None:
        return base, None, model.revision
    store = ArtifactStore(storage)
    files = local_model_files(trained, store)
    if store.manifest(trained)["method"] == "lora":
        return base, str(files), model.revision
    return str(files), None, None  # full weights: a local folder, no hub revision


def run_name(trained: ArtifactRef | None) -> str:
    return BASE_RUN if trained is None else trained.name
