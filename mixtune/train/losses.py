"""Token losses on supervised positions, and their per-source and per-category accounting.

Logits are computed only where a next token is supervised (``logits_to_keep``
with a boolean mask), never for prompt or system tokens: on chat data the
(tokens x vocab) projection is a large share of the step, and prompt logits
would be thrown away. Losses stay per token (no reduction) so every token can
be charged to the source its example came from.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from mixtune.train.packing import MicroBatch

log = logging.getLogger(__name__)


class TokenLoss:
    """``(losses, example_of_token)`` for a micro-batch: shape (kept,) each, kept = supervised targets."""

    def __init__(self, model: Any, liger: bool) -> None:
        self.fused = None
        if not liger:
            return
        causal_lm = model.get_base_model() if hasattr(model, "get_base_model") else model
        config = causal_lm.config
        if getattr(config, "logit_scale", None) or getattr(config, "logits_scaling", None):
            log.warning("liger fused cross-entropy skipped: %s scales its logits", config.model_type)
            return
        from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

        self.fused = LigerFusedLinearCrossEntropyLoss(
            reduction="none", softcap=getattr(config, "final_logit_softcapping", None))
        self.head = causal_lm.get_output_embeddings()
        self._hidden: dict[str, torch.Tensor] = {}
        # The decoder's output is the lm_head input; the model itself is asked for no logits at all.
        causal_lm.get_decoder().register_forward_hook(self._capture)

    def _capture(self, module: Any, inputs: Any, output: Any) -> None:
        self._hidden["last"] = output[0] if isinstance(output, tuple) else output.last_hidden_state

    def __call__(self, model: Any, batch: MicroBatch) -> tuple[torch.Tensor, torch.Tensor]:
        keep, targets = batch.shifted_targets()
        if self.fused is None:
            logits = model(**batch.model_inputs(), logits_to_keep=keep).logits  # (kept, vocab)
            losses = torch.nn.functional.cross_entropy(logits.float(), targets, reduction="none")
        else:
            model(**batch.model_inputs(), logits_to_keep=torch.zeros_like(keep))
            hidden = self._hidden.pop("last")[keep].to(self.head.weight.dtype)  # (kept, hidden)
            losses = self.fused(self.head.weight, hidden, targets, getattr(self.head, "bias", None))
        return losses, batch.example_index[keep]


class LossMeter:
    """Loss per source and per category over the steps since the last report.

    Each is (sum of token losses) / (supervised tokens) of that source or
    category, so a source with long answers weighs by its tokens, as it does
    in the training loss. Sources without tokens in the window are left out
    rather than reported as NaN.
    """

    def __init__(self, sources: list[str], categories: dict[str, str]) -> None:
        self.sources, self.categories = sources, categories
        self._loss = [0.0] * len(sources)
        self._tokens = [0.0] * len(sources)
        self.last: dict[str, float] = {}

    def add(self, loss_sums: list[float], token_counts: list[float]) -> None:
        for i, (loss, tokens) in enumerate(zip(loss_sums, token_counts)):
            self._loss[i] += loss
            self._tokens[i] += tokens

    def report(self) -> dict[str, float]:
        metrics: dict[str, float] = {}
        total_loss, total_tokens = sum(self._loss), sum(self._tokens)
        if total_tokens:
            metrics["train/loss"] = total_loss / total_tokens
        metrics["train/supervised_tokens"] = total_tokens
        by_category: dict[str, list[float]] = {}
        for source, loss, tokens in zip(self.sources, self._loss, self._tokens):
            if tokens:
                metrics[f"train/loss_source/{source}"] = loss / tokens
            category = self.categories.get(source)
            if category is not None:
                sums = by_category.setdefault(category, [0.0, 0.0])
                sums[0], sums[1] = sums[0] + loss, sums[1] + tokens
        for category, (loss, tokens) in sorted(by_category.items()):
            if tokens:
                metrics[f"train/loss_category/{category}"] = loss / tokens
        self._loss = [0.0] * len(self.sources)
        self._tokens = [0.0] * len(self.sources)
        self.last = metrics
        return metrics
