"""The model card (README.md) written beside trained weights.

A reader of the folder, months later, must be able to tell what it is and how
to make it again: the base model and its revision, LoRA or full training, every
hyperparameter, the mix the model actually saw (samples and tokens per source,
not the planned percentages) and the fingerprints of the data it came from.
The front matter follows the Hugging Face hub's model card metadata.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mixtune.models import gguf
from mixtune.train.config import TrainConfig
from mixtune.train.result import TrainResult


def _share(part: int, whole: int) -> str:
    return f"{100.0 * part / whole:.1f}%" if whole else "-"


def _flatten(prefix: str, value: Any) -> list[tuple[str, Any]]:
    if isinstance(value, dict):
        return [item for key, sub in value.items() for item in _flatten(f"{prefix}.{key}" if prefix else key, sub)]
    return [(prefix, value)]


def render_model_card(*, base_model: str, revision: str | None, cfg: TrainConfig, result: TrainResult,
                      source_categories: dict[str, str], data_fingerprints: dict[str, str]) -> str:
    from huggingface_hub import ModelCardData

    method = "LoRA adapter" if cfg.method == "lora" else "full fine-tune"
    source = gguf.source_info(base_model)
    # Hub metadata (the model card spec): base_model names the released model when one is known.
    metadata = ModelCardData(
        base_model=(source or {}).get("release") or base_model,
        library_name="peft" if cfg.method == "lora" else "transformers", pipeline_tag="text-generation",
        tags=["mixtune", "sft", "lora" if cfg.method == "lora" else "full-fine-tune"])
    lines = [
        "---",
        metadata.to_yaml(),
        "---",
        "",
        f"# {method} of `{base_model}`, trained by mixtune",
        "",
        "Supervised fine-tuning on domain data blended with general-capability data by category, "
        "in the order given by the mix manifest. Loss on assistant tokens only.",
        "",
        "## Base model",
        "",
        f"- model: `{base_model}`",
        *([f"- converted from GGUF: {gguf.describe(source)}"] if source else []),
        f"- revision: `{revision or 'not pinned'}`",
        f"- method: {cfg.method}"
        + (f" (rank {cfg.lora.rank}, alpha {cfg.lora.alpha:g})" if cfg.method == "lora" else ""),
        f"- trainable parameters: {result.trainable_parameters:,} of {result.total_parameters:,}",
        "",
        "## Training",
        "",
        f"- optimizer steps: {result.final_step}",
        f"- final training loss: {result.step_losses[-1]:.4f}" if result.step_losses else "- no steps run",
        f"- validation loss: {result.val_loss:.4f}" if result.val_loss is not None
        else "- validation loss: not measured",
        f"- examples cut to max_length: {result.truncated_examples}",
        "",
        "## Realized mix",
        "",
        "| source | category | samples | share | tokens | share | supervised tokens |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    samples_total = sum(result.samples_per_source.values())
    tokens_total = sum(result.tokens_per_source.values())
    for source in sorted(result.samples_per_source):
        samples, tokens = result.samples_per_source[source], result.tokens_per_source.get(source, 0)
        lines.append(
            f"| {source} | {source_categories.get(source, '-')} | {samples:,} | {_share(samples, samples_total)} "
            f"| {tokens:,} | {_share(tokens, tokens_total)} | {result.supervised_tokens_per_source.get(source, 0):,} |"
        )
    lines += ["", "## Data fingerprints", ""]
    lines += [f"- {name}: `{value}`" for name, value in sorted(data_fingerprints.items())] or ["- not recorded"]
    lines += ["", "## Hyperparameters", "", "| key | value |", "| --- | --- |"]
    lines += [f"| {key} | {value} |" for key, value in _flatten("", cfg.model_dump(mode="json"))]
    lines += ["", "## How to load", "", "```python"]
    if cfg.method == "lora":
        lines += ["from peft import AutoPeftModelForCausalLM",
                  "model = AutoPeftModelForCausalLM.from_pretrained(\"<this folder>\")"]
    else:
        lines += ["from transformers import AutoModelForCausalLM",
                  "model = AutoModelForCausalLM.from_pretrained(\"<this folder>\")"]
    lines += ["```", ""]
    return "\n".join(lines)


def write_model_card(out_dir: str | Path, **facts: Any) -> Path:
    """Write README.md into ``out_dir`` (replacing peft's generic card) and return its path."""
    path = Path(out_dir) / "README.md"
    path.write_text(render_model_card(**facts), encoding="utf-8")
    return path
