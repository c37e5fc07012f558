"""On a CUDA device (marker gpu; skipped without one): bf16 LoRA training on the tiny model.

benchmarks/gpu_check.sh runs these on a GPU machine: ``pytest -m gpu``.
"""

from __future__ import annotations

import json
import math

import polars as pl
import pytest
import torch

from mixtune.train.chat_tokens import tokenize_chat
from mixtune.train.config import TrainConfig
from mixtune.train.loop import evaluate_loss, train
from mixtune.train.losses import TokenLoss
from mixtune.train.model import build_model, compute_dtype

from conftest import DEMO_CORPUS

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

STEPS, BATCH = 6, 4


def _messages() -> list[list[dict]]:
    with open(DEMO_CORPUS, encoding="utf-8") as f:
        rows = [json.loads(next(f)) for _ in range(BATCH)]
    return [[{"role": "user", "content": row["question"]}, {"role": "assistant", "content": row["answer"][:240]}]
            for row in rows]


def _cfg(**overrides) -> TrainConfig:
    settings = dict(global_batch_size=BATCH, per_device_batch_size=2, max_length=256, learning_rate=5e-3,
                    max_steps=STEPS, logging_steps=1, checkpoint_every_steps=None,
                    lora={"rank": 4, "alpha": 8, "dropout": 0.0})
    return TrainConfig(**(settings | overrides))


def test_lora_steps_train_in_bf16_on_cuda_and_match_the_cpu_loss(tiny_model_dir, tmp_path):
    messages = _messages()
    frame = pl.DataFrame({"_row_id": list(range(BATCH)), "messages": messages})
    # Every step trains the same rows, so the loss must fall.
    manifest = pl.DataFrame({"batch": [b for b in range(STEPS) for _ in range(BATCH)],
                             "position": list(range(BATCH)) * STEPS, "source": ["med"] * (STEPS * BATCH),
                             "row_id": list(range(BATCH)) * STEPS})
    cfg = _cfg()
    cuda = torch.device("cuda")
    assert compute_dtype(cfg, cuda) == (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32)

    torch.cuda.reset_peak_memory_stats()
    result = train(str(tiny_model_dir), {"med": frame}, manifest, cfg, tmp_path, source_categories={"med": "domain"})

    assert result.final_step == STEPS and all(math.isfinite(loss) for loss in result.step_losses)
    assert result.step_losses[-1] < result.step_losses[0]
    assert result.tokens_per_s > 0 and torch.cuda.max_memory_allocated() > 0
    assert (tmp_path / "adapter_model.safetensors").is_file()

    # Step 1 runs before any update and LoRA's B starts at 0: its loss is the base model's,
    # which a CPU fp32 forward gives independently (bf16 rounding stays well within 2%).
    model, tokenizer = build_model(str(tiny_model_dir), _cfg(precision="fp32"), torch.device("cpu"))
    chats = [tokenize_chat(tokenizer, m) for m in messages]
    cpu_loss = evaluate_loss(model, TokenLoss(model, liger=False), chats, cfg, tokenizer.pad_token_id,
                             torch.device("cpu"), torch.autocast("cpu", enabled=False))
    assert result.step_losses[0] == pytest.approx(cpu_loss, rel=0.02)


def test_base_weights_live_in_bf16_on_cuda_for_lora(tiny_model_dir):
    if not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16")
    model, _ = build_model(str(tiny_model_dir), _cfg(), torch.device("cuda"))
    frozen = {p.dtype for p in model.parameters() if not p.requires_grad}
    assert frozen == {torch.bfloat16}
    assert all(p.device.type == "cuda" for p in model.parameters())
