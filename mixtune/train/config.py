"""The ``train`` config section: method, optimizer, batch shape, precision, checkpoints.

Batch arithmetic, stated once: a global batch (one optimizer step) holds
``global_batch_size`` examples, in the order the mix manifest gives. Each
device processes them ``per_device_batch_size`` at a time (a micro-batch,
packed into one row by default), so

    gradient_accumulation_steps = global_batch_size / (per_device_batch_size x devices)

and it must come out whole. The loss of a step is the mean over every
supervised token of the global batch, however the examples are split.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from mixtune.errors import ConfigError
from mixtune.sections import StrictModel, seed_field

DEFAULT_MAX_STEPS = 100
# Upper bounds that keep the manifest (one row per planned sample) in memory and on disk:
# 100 million samples is ~1.6 GB of manifest, far beyond any fine-tuning run this tool is for.
MAX_STEPS = 10_000_000
MAX_PLANNED_SAMPLES = 100_000_000
MAX_EPOCHS = 10_000

# LoRA targets per model_type: attention projections first, then the MLP ones
# (used with lora.include_mlp). Fused projections (phi3, gpt_neox, falcon) name the fused module.
_ATTENTION_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]
_GATED_MLP_TARGETS = ["gate_proj", "up_proj", "down_proj"]
LORA_TARGETS: dict[str, tuple[list[str], list[str]]] = {
    **{name: (_ATTENTION_TARGETS, _GATED_MLP_TARGETS) for name in (
        "llama", "mistral", "mixtral", "qwen2", "qwen2_moe", "qwen3", "qwen3_moe", "gemma", "gemma2",
        "gemma3", "gemma3_text", "olmo", "olmo2", "granite", "smollm3", "cohere",
    )},
    "phi": (["q_proj", "k_proj", "v_proj", "dense"], ["fc1", "fc2"]),
    "phi3": (["qkv_proj", "o_proj"], ["gate_up_proj", "down_proj"]),
    "starcoder2": (_ATTENTION_TARGETS, ["c_fc", "c_proj"]),
    "gpt2": (["c_attn", "c_proj"], ["c_fc"]),
    "gpt_neox": (["query_key_value", "dense"], ["dense_h_to_4h", "dense_4h_to_h"]),
    "falcon": (["query_key_value", "dense"], ["dense_h_to_4h", "dense_4h_to_h"]),
}


class LoraSettings(StrictModel):
    rank: int = Field(16, gt=0, le=65_536, description="LoRA rank r (dimensions of the low-rank update), "
                      "in [1, 65536]")
    alpha: float = Field(32.0, gt=0, le=1e6, description="LoRA scaling numerator; the update is scaled by "
                         "alpha / rank; in (0, 1e6]")
    dropout: float = Field(0.05, ge=0, lt=1, description="dropout probability on the LoRA input, in [0, 1)")
    target_modules: list[str] | None = Field(
        None, description="module names to adapt; null: the defaults for the model's architecture"
    )
    include_mlp: bool = Field(
        False, description="with default targets, also adapt the MLP projections (more parameters, often better)"
    )


class TrainConfig(StrictModel):
    method: Literal["lora", "full"] = Field("lora", description="lora: train an adapter; full: every weight")
    lora: LoraSettings = Field(default_factory=LoraSettings)
    learning_rate: float = Field(2e-4, gt=0, le=1, description="peak AdamW learning rate (per optimizer step), "
                                 "in (0, 1]")
    warmup_steps: int = Field(0, ge=0, le=MAX_STEPS, description=f"optimizer steps of linear warmup from 0 to "
                              f"the peak, in [0, {MAX_STEPS:,}]")
    scheduler: Literal["linear", "cosine", "constant"] = Field(
        "cosine", description="learning-rate decay after warmup, to 0 at the last step (constant: none)"
    )
    weight_decay: float = Field(0.0, ge=0, le=10, description="AdamW decoupled weight decay per step "
                                "(fraction, times the learning rate), in [0, 10]")
    max_grad_norm: float | None = Field(1.0, gt=0, le=1e6, description="clip the global gradient L2 norm, "
                                        "in (0, 1e6]; null: no clipping")
    global_batch_size: int = Field(16, gt=0, le=1_048_576, description="examples per optimizer step, all "
                                   "devices together, in [1, 2**20]")
    per_device_batch_size: int = Field(4, gt=0, le=1_048_576, description="examples per forward pass on one "
                                       "device, in [1, 2**20]")
    max_length: int | None = Field(
        None, gt=0, le=1_048_576, description="tokens per example, in [1, 2**20]; null: validate.max_length, the limit rows were checked "
        "against (a run config fills it in and refuses a smaller value); a longer example is cut, counted, and "
        "its cut answer not supervised"
    )
    max_steps: int | None = Field(
        None, gt=0, le=MAX_STEPS, description=f"optimizer steps (the manifest holds this many global batches), "
        f"in [1, {MAX_STEPS:,}], and max_steps x global_batch_size at most {MAX_PLANNED_SAMPLES:,} samples; "
        f"{DEFAULT_MAX_STEPS} when neither max_steps nor epochs is set"
    )
    epochs: float | None = Field(
        None, gt=0, le=MAX_EPOCHS, description=f"passes over the domain train split, instead of max_steps, in "
        f"(0, {MAX_EPOCHS:g}]; the manifest is sized to it and training runs every batch of the manifest"
    )
    seed: int = seed_field("LoRA init, dropout and any other randomness")
    precision: Literal["auto", "bf16", "fp32"] = Field(
        "auto", description="auto: bf16 on a CUDA device that supports it, fp32 otherwise (always on CPU); "
                            "bf16: also on a CPU with AVX512-BF16 or AMX (fp32 with a warning elsewhere)"
    )
    packing: bool = Field(True, description="pack each micro-batch into one row without padding")
    attention: Literal["auto", "packed_sdpa", "sdpa", "eager", "flash_attention_2"] = Field(
        "auto", description="auto: flash_attention_2 on CUDA if installed, else packed_sdpa (packing) or sdpa"
    )
    logging_steps: int = Field(10, gt=0, le=MAX_STEPS, description="optimizer steps between metric reports, "
                               f"in [1, {MAX_STEPS:,}]")
    eval_every_steps: int | None = Field(
        None, gt=0, le=MAX_STEPS, description=f"optimizer steps between validation and held-out losses (the "
        f"forgetting curves), in [1, {MAX_STEPS:,}]; null: only before the first and after the last step"
    )
    val_rows: int | None = Field(
        64, gt=0, le=1_000_000, description="rows of the domain validation split whose loss is logged (the first "
        "ones); null: all. Each measurement costs a forward pass over them"
    )
    checkpoint_every_steps: int | None = Field(
        100, gt=0, le=MAX_STEPS, description=f"optimizer steps between checkpoints, in [1, {MAX_STEPS:,}]; "
        "null: no checkpoints (no resume)"
    )
    checkpoints_kept: int = Field(2, gt=0, le=1000, description="newest checkpoints kept, in [1, 1000], on disk "
                                  "and on a remote root; older ones are removed")
    merge_adapter: bool = Field(False, description="also save base + adapter merged into merged/ (LoRA only)")
    liger: Literal["auto", "off"] = Field(
        "auto", description="Liger fused linear cross-entropy: auto = on with CUDA and liger-kernel installed, "
        "off on CPU"
    )

    @model_validator(mode="before")
    @classmethod
    def _default_length(cls, data: Any) -> Any:
        # One of the two sizes the run; a config that names neither trains a fixed number of steps.
        if isinstance(data, dict) and data.get("max_steps") is None and data.get("epochs") is None:
            data = {**data, "max_steps": DEFAULT_MAX_STEPS}
        return data

    @model_validator(mode="after")
    def _checks(self) -> "TrainConfig":
        problems = []
        if self.max_steps is not None and self.epochs is not None:
            problems.append("set max_steps or epochs, not both")
        if self.global_batch_size % self.per_device_batch_size:
            problems.append(_accumulation_problem(self.global_batch_size, self.per_device_batch_size, 1))
        if self.max_steps is not None and self.max_steps * self.global_batch_size > MAX_PLANNED_SAMPLES:
            problems.append(
                f"max_steps x global_batch_size = {self.max_steps:,} x {self.global_batch_size:,} = "
                f"{self.max_steps * self.global_batch_size:,} planned samples, above the limit of "
                f"{MAX_PLANNED_SAMPLES:,} (the manifest holds one row per sample); lower max_steps")
        if self.method == "full" and self.merge_adapter:
            problems.append("merge_adapter applies to method 'lora' only (full training saves full weights)")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def gradient_accumulation_steps(self, devices: int = 1) -> int:
        """Micro-batches per optimizer step on each device; raises ConfigError if not whole."""
        per_step = self.per_device_batch_size * devices
        if self.global_batch_size % per_step:
            raise ConfigError([
                "train.global_batch_size: " + _accumulation_problem(
                    self.global_batch_size, self.per_device_batch_size, devices)
            ])
        return self.global_batch_size // per_step

    def lora_targets(self, model_type: str) -> list[str] | str:
        """Modules to adapt: the configured list, the architecture defaults, or every linear layer."""
        if self.lora.target_modules:
            return list(self.lora.target_modules)
        if model_type in LORA_TARGETS:
            attention, mlp = LORA_TARGETS[model_type]
            return attention + (mlp if self.lora.include_mlp else [])
        return "all-linear"  # peft's catch-all for architectures we have no defaults for


def _accumulation_problem(global_batch: int, per_device: int, devices: int) -> str:
    per_step = per_device * devices
    lower = max(per_step, global_batch - global_batch % per_step)
    return (
        f"global_batch_size {global_batch} is not a multiple of per_device_batch_size {per_device} "
        f"x {devices} device(s) = {per_step}; use global_batch_size {lower} or {lower + per_step}, "
        f"or a per_device_batch_size that divides {global_batch}"
    )
