"""Precision on a CPU: ``auto`` stays fp32; ``bf16`` trains a LoRA in bf16 where the CPU has it natively."""

from __future__ import annotations

import json
import math

import polars as pl
import pytest
import torch

from mixtune.models import native_bf16
from mixtune.train.chat_tokens import tokenize_chat
from mixtune.train.config import TrainConfig
from mixtune.train.loop import evaluate_loss, train
from mixtune.train.losses import TokenLoss
from mixtune.train.model import build_model, compute_dtype

from conftest import DEMO_CORPUS

CPU = torch.device("cpu")
STEPS, BATCH = 6, 4


def _cfg(**overrides) -> TrainConfig:
    settings = dict(global_batch_size=BATCH, per_device_batch_size=2, max_length=256, learning_rate=5e-3,
                    max_steps=STEPS, logging_steps=1, checkpoint_every_steps=None,
                    lora={"rank": 4, "alpha": 8, "dropout": 0.0})
    return TrainConfig(**(settings | overrides))


def test_auto_precision_keeps_a_cpu_in_fp32():
    assert compute_dtype(_cfg(), CPU) == torch.float32
    assert compute_dtype(_cfg(precision="fp32"), CPU) == torch.float32
    assert compute_dtype(_cfg(precision="bf16"), CPU) == (torch.bfloat16 if native_bf16("cpu") else torch.float32)


@pytest.mark.skipif(not native_bf16("cpu"), reason="this CPU has no native bf16 (AVX512-BF16 or AMX)")
def test_bf16_lora_trains_on_a_cpu_with_native_bf16(tiny_model_dir, tmp_path):
    with open(DEMO_CORPUS, encoding="utf-8") as f:
        rows = [json.loads(next(f)) for _ in range(BATCH)]
    messages = [[{"role": "user", "content": r["question"]}, {"role": "assistant", "content": r["answer"][:240]}]
                for r in rows]
    frame = pl.DataFrame({"_row_id": list(range(BATCH)), "messages": messages})
    manifest = pl.DataFrame({"batch": [b for b in range(STEPS) for _ in range(BATCH)],
                             "position": list(range(BATCH)) * STEPS, "source": ["med"] * (STEPS * BATCH),
                             "row_id": list(range(BATCH)) * STEPS})
    cfg = _cfg(precision="bf16")
    model, tokenizer = build_model(str(tiny_model_dir), cfg, CPU)
    assert {p.dtype for p in model.parameters() if not p.requires_grad} == {torch.bfloat16}  # frozen base
    assert {p.dtype for p in model.parameters() if p.requires_grad} == {torch.float32}       # LoRA weights

    result = train(str(tiny_model_dir), {"med": frame}, manifest, cfg, tmp_path, source_categories={"med": "domain"})
    assert result.final_step == STEPS and all(math.isfinite(loss) for loss in result.step_losses)
    assert result.step_losses[-1] < result.step_losses[0]  # every step trains the same rows
    # Step 1 runs before any update (LoRA B starts at 0): the base model's loss, which an fp32
    # forward gives independently; bf16 rounding stays well within 2%.
    fp32, _ = build_model(str(tiny_model_dir), _cfg(precision="fp32"), CPU)
    chats = [tokenize_chat(tokenizer, m) for m in messages]
    fp32_loss = evaluate_loss(fp32, TokenLoss(fp32, liger=False), chats, cfg, tokenizer.pad_token_id, CPU,
                              torch.autocast("cpu", enabled=False))
    assert result.step_losses[0] == pytest.approx(fp32_loss, rel=0.02)
