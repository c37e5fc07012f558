"""Which weights an evaluation loads, on which device and in which precision.

A trained model is a ``train`` artifact: ``{uri}/adapter/`` (PEFT adapter,
applied unmerged on the configured base) when its manifest says
``"method": "lora"``, ``{uri}/model/`` (full weights) when ``"full"``.

``eval.dtype: auto`` evaluates in bfloat16 where the device computes it
natively (a CUDA GPU with bf16, a CPU with AVX512-BF16 or AMX), in float32
on other CPUs (which emulate bf16 slower than fp32), and in the checkpoint's
own dtype on other GPUs. Both axes, the base and every tuned model
of a run resolve the same way, so their comparison stays like for like; the
resolved dtype is in every evaluation's cache key and manifest. Measured on
SmolLM2-135M (2 CPU cores with AVX512-BF16): the demo's general axis ran
2.6x faster in bf16 than in fp32; 1 of 40 ARC-Easy and 1 of 60 PIQA items
changed their answer.
"""

from __future__ import annotations

from pathlib import Path

from mixtune.models import model_path
from mixtune.models.tiny import local_model_cache
from mixtune.sections import ModelConfig, StorageConfig
from mixtune.storage.artifacts import ArtifactRef, ArtifactStore

BASE_RUN = "base"  # the run name of the untuned model in artifacts, tables and reports
_WEIGHTS_FOLDER = {"lora": "adapter", "full": "model"}



def eval_device(requested: str | None) -> str:
    """The configured device, else ``cuda`` when available, else ``cpu``."""
    import torch

    return requested or ("cuda" if torch.cuda.is_available() else "cpu")


def native_bf16(device: str) -> bool:
    """True where bfloat16 matmuls run in hardware: a CUDA device with bf16, a CPU with AVX512-BF16 or AMX.

    Elsewhere a CPU emulates bf16 and runs it slower than fp32. The CPU
    check is torch's own (``torch.cpu._is_avx512_bf16_supported``, a private
    function: when a torch release drops it, the answer is False and fp32 stays).
    """
    import torch

    if device.startswith("cuda"):
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device != "cpu":
        return False
    checks = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(check() for check in checks if check is not None)


def eval_dtype(requested: str, device: str) -> str:
    """``auto`` -> ``bfloat16`` where ``native_bf16(device)``, else ``float32`` on a CPU and ``auto`` (the
    checkpoint's dtype) on a GPU; any other value as given."""
    if requested != "auto":
        return requested
    if native_bf16(device):
        return "bfloat16"
    return "float32" if device == "cpu" else "auto"


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
