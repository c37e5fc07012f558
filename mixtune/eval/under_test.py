"""Which weights an evaluation loads, on which device and in which precision.

A trained model is a ``train`` artifact: ``{uri}/adapter/`` (PEFT adapter,
merged into the configured base at load) when its manifest says
``"method": "lora"``, ``{uri}/model/`` (full weights) when ``"full"``.

``eval.dtype: auto`` evaluates in bfloat16 where the device computes it
natively (a CUDA GPU with bf16, a CPU with AVX512-BF16 or AMX), in float32
on other CPUs (which emulate bf16 slower than fp32), and in the checkpoint's
own dtype on other GPUs. Both axes, the base and every tuned model
of a run resolve the same way, so their comparison stays like for like; the
resolved dtype is in every evaluation's cache key and manifest. Measured on
SmolLM2-135M (2 CPU cores with AVX512-BF16): the demo's general axis ran
1.7-1.9x faster in bf16 than in fp32 and its greedy decoding about 4x (with
32 prompts a batch instead of 8); 1 of 40 ARC-Easy and 1 of 60 PIQA items
changed their answer. In bf16 a score can also move with the batch shape
(padding changes the matmuls): ARC-Easy acc at n=40 read 0.500 with
lm-eval batches of 16 and 0.475 with 64, so keep ``batch_size`` fixed
across runs you compare (it is in the cache key).
"""

from __future__ import annotations

from pathlib import Path

from mixtune.models import model_path, native_bf16
from mixtune.models.tiny import local_model_cache
from mixtune.sections import ModelConfig, StorageConfig
from mixtune.storage.artifacts import ArtifactRef, ArtifactStore

BASE_RUN = "base"  # the run name of the untuned model in artifacts, tables and reports
_WEIGHTS_FOLDER = {"lora": "adapter", "full": "model"}



def eval_device(requested: str | None) -> str:
    """The configured device, else ``cuda`` when available, else ``cpu``."""
    import torch

    return requested or ("cuda" if torch.cuda.is_available() else "cpu")


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


def load_eval_model(pretrained: str, *, adapter_dir: str | None = None, revision: str | None = None,
                    trust_remote_code: bool = False, dtype: str = "auto", device: str | None = None):
    """(model, tokenizer) in eval mode on ``device``, both axes' one loader; ``dtype``/``device`` as ``eval_dtype``.

    A LoRA adapter is merged into the base weights (``merge_and_unload``)
    before the cast to ``dtype``: the base is loaded in float32, the adapter
    merged there, and only the sum rounded, so a small update is not lost to
    bf16 rounding twice. The merged model computes the same function as
    base + adapter unmerged (a test compares the logits) and runs as fast
    as the base: unmerged, the demo's adapter (r=16 on 7 projections x 30
    layers) made greedy decoding 1.2-1.3x slower and lm-eval's forward
    passes 1.05x slower on 2 CPU cores (``benchmarks/eval_bench.py``).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = eval_device(device)
    dtype = eval_dtype(dtype, device)
    target = dtype if dtype == "auto" else getattr(torch, dtype)
    tokenizer = AutoTokenizer.from_pretrained(pretrained, revision=revision, trust_remote_code=trust_remote_code)
    load_dtype = torch.float32 if adapter_dir and dtype != "auto" else target
    model = AutoModelForCausalLM.from_pretrained(pretrained, revision=revision, trust_remote_code=trust_remote_code,
                                                 dtype=load_dtype)
    if adapter_dir:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter_dir).merge_and_unload()
        if dtype != "auto":
            model = model.to(target)
    return model.to(device).eval(), tokenizer
