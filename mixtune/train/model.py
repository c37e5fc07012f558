"""The model being trained: device, precision, attention kernel, LoRA or full, and its outputs.

Choices made automatically, each overridable in ``TrainConfig``:
- precision: ``auto`` is bf16 where the CUDA device supports it, fp32 otherwise
  (fp16 needs loss scaling, so it is never chosen); ``bf16`` also runs on a CPU
  with AVX512-BF16 or AMX (``mixtune.models.native_bf16``): a LoRA's frozen
  base in bf16 with fp32 adapters (177 against 75 tokens/s in fp32 for SmolLM2-135M
  LoRA on 2 cores with AVX512-BF16); ``auto`` keeps CPUs in fp32;
- attention: flash-attention 2 on CUDA when installed, else mixtune's packed
  sdpa (no (tokens x tokens) mask) for packed batches, plain sdpa otherwise;
- Liger's fused linear cross-entropy on CUDA when ``liger_kernel`` imports: it
  never materialises (tokens x vocab) logits, which dominate memory for 150k
  vocabularies. Off on CPU, where it has no kernels.
"""

from __future__ import annotations

import importlib.util
import json
import logging
from pathlib import Path
from typing import Any

import torch

from mixtune.models import native_bf16
from mixtune.train.packing import register_packed_attention
from mixtune.train.config import TrainConfig

log = logging.getLogger(__name__)


def pick_device(rank_local: int = 0) -> torch.device:
    return torch.device(f"cuda:{rank_local}") if torch.cuda.is_available() else torch.device("cpu")


def compute_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype:
    """fp32, or bf16 where ``native_bf16``: ``auto`` on a CUDA device, ``bf16`` on CUDA or a bf16 CPU."""
    if cfg.precision == "fp32":
        return torch.float32
    bf16_ok = native_bf16(device.type)
    if cfg.precision == "auto":
        return torch.bfloat16 if bf16_ok and device.type == "cuda" else torch.float32
    if not bf16_ok:
        log.warning("precision bf16 asked for, but %s has no native bf16; training in fp32", device)
    return torch.bfloat16 if bf16_ok else torch.float32


def attention_implementation(cfg: TrainConfig, device: torch.device) -> str:
    if cfg.attention == "packed_sdpa" and not cfg.packing:
        raise ValueError("train.attention packed_sdpa needs train.packing true")
    if cfg.attention != "auto":
        return register_packed_attention() if cfg.attention == "packed_sdpa" else cfg.attention
    if device.type == "cuda" and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return register_packed_attention() if cfg.packing else "sdpa"


def liger_enabled(cfg: TrainConfig, device: torch.device) -> bool:
    """Fused linear cross-entropy only where it has kernels: CUDA with liger_kernel installed."""
    if cfg.liger == "off" or device.type != "cuda":
        return False
    return importlib.util.find_spec("liger_kernel") is not None


def build_model(model_path: str, cfg: TrainConfig, device: torch.device, *, revision: str | None = None,
                trust_remote_code: bool = False) -> tuple[Any, Any]:
    """(model ready for training on ``device``, tokenizer). LoRA wraps the base in a PeftModel."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path, revision=revision, trust_remote_code=trust_remote_code)
    dtype = compute_dtype(cfg, device)
    # Full training keeps fp32 master weights and autocasts; LoRA's frozen base can live in bf16.
    load_dtype = dtype if cfg.method == "lora" else torch.float32
    attention = attention_implementation(cfg, device)
    model = AutoModelForCausalLM.from_pretrained(
        model_path, revision=revision, trust_remote_code=trust_remote_code, dtype=load_dtype,
        attn_implementation="sdpa" if attention.startswith("mixtune_") else attention,
    )
    if attention.startswith("mixtune_"):
        model.set_attn_implementation(attention)  # registered names are accepted only after loading
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token  # padding (packing off) needs some id; it is never a label
    torch.manual_seed(cfg.seed)  # LoRA's A matrices are drawn here
    if cfg.method == "lora":
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(
            r=cfg.lora.rank, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
            target_modules=cfg.lora_targets(model.config.model_type), task_type="CAUSAL_LM", bias="none",
        )
        model = get_peft_model(model, lora)
    model.to(device)
    model.train()
    return model, tokenizer


def trainable_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every trainable tensor by name: the adapter for LoRA, every weight for full training."""
    return {name: p.detach().to("cpu").contiguous() for name, p in model.named_parameters() if p.requires_grad}


def load_trainable_state(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    expected = {name for name, p in model.named_parameters() if p.requires_grad}
    if set(state) != expected:
        raise ValueError(f"checkpoint does not fit the model: {len(set(state) ^ expected)} tensors differ, "
                         f"e.g. {sorted(set(state) ^ expected)[:3]}")
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name in state:
                p.copy_(state[name].to(p.device, p.dtype))


def save_trained(model: Any, tokenizer: Any, out_dir: Path, merge: bool) -> Path | None:
    """Adapter (LoRA) or full weights plus tokenizer into ``out_dir``; merged model into merged/."""
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)  # adapter_model.safetensors for LoRA, model*.safetensors for full
    _sort_target_modules(out_dir / "adapter_config.json")
    tokenizer.save_pretrained(out_dir)
    if not merge:
        return None
    merged_dir = out_dir / "merged"
    # Folding in place is safe here: the adapter is already saved and training is over.
    merged = model.merge_and_unload()
    merged.set_attn_implementation("sdpa")  # the packed kernel is for training batches only
    merged.save_pretrained(merged_dir)
    tokenizer.save_pretrained(merged_dir)
    return merged_dir


def _sort_target_modules(config_path: Path) -> None:
    """PEFT writes ``target_modules`` from a set, in hash order; sorted, the same run writes the same bytes."""
    if not config_path.exists():
        return
    config = json.loads(config_path.read_text())
    if isinstance(config.get("target_modules"), list):
        config["target_modules"] = sorted(config["target_modules"])
        config_path.write_text(json.dumps(config, indent=2, sort_keys=True))
