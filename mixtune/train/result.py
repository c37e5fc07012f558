"""What a training run reports: where the weights are, losses, the realized mix, throughput."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class TrainResult:
    output_dir: str
    final_step: int
    step_losses: list[float]
    val_loss: float | None
    val_losses: dict[int, float]
    tokens_per_source: dict[str, int]  # real tokens processed, prompts included
    supervised_tokens_per_source: dict[str, int]
    samples_per_source: dict[str, int]
    resumed_from_step: int | None
    trainable_parameters: int
    total_parameters: int
    tokens_per_s: float  # real tokens per second of step time in this run, this device
    real_token_share: float  # real / processed tokens (1.0 when packed)
    truncated_examples: int
    merged_dir: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)  # the last report
    # held-out set -> {optimizer step: mean loss per supervised token}; step 0 is the base model
    heldout_losses: dict[str, dict[int, float]] = field(default_factory=dict)
