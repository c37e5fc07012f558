"""Supervised fine-tuning on the mix manifest: a plain torch loop, no Trainer.

    result = train(model_path, frames, manifest, TrainConfig(), "out/", log_metrics=cb)

Input: a base model (hub id or folder), each source's validated train frame
(``_row_id``, ``messages``), and the mix manifest, which is the training order.
Output: ``out/`` with the adapter (LoRA) or full weights, the tokenizer, a
model card, optionally ``merged/``; and a ``TrainResult``.

Invariants:
- step k trains global batch k of the manifest, rows in position order;
- the loss of a step is (sum of token losses) / (supervised tokens of the
  whole global batch), so micro-batching and devices never change it;
- only assistant tokens are supervised (``mixtune.train.chat_tokens``);
- with a checkpoint folder, a rerun after a crash continues from the newest
  checkpoint and reproduces the uninterrupted run.

Metrics go to ``log_metrics(step, metrics)`` every ``logging_steps``; the
caller decides where (MLflow in the pipeline). Per-source and per-category
losses cover the steps since the previous report.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import polars as pl
import torch

from mixtune.errors import MixtuneError
from mixtune.storage.artifacts import fingerprint
from mixtune.train.checkpoints import RunState, load_latest, save_checkpoint
from mixtune.train.model_card import write_model_card
from mixtune.train.result import TrainResult
from mixtune.train.packing import collate
from mixtune.train.config import TrainConfig
from mixtune.train.data import (ExampleStore, RowKey, Shard, manifest_fingerprint, micro_batches, plan_steps,
                                tokenize_frame)
from mixtune.train.losses import LossMeter, TokenLoss
from mixtune.train.model import (build_model, compute_dtype, liger_enabled, pick_device, save_trained,
                                 trainable_parameters)

log = logging.getLogger(__name__)

MetricsCallback = Callable[[int, dict[str, float]], None]


@dataclass
class StepReport:
    """One finished optimizer step, for ``on_step_end`` (progress, tests, early stop)."""

    step: int  # optimizer steps completed, 1-based
    loss: float  # mean token loss of the global batch
    rows: list[RowKey]  # the global batch in training order
    supervised_tokens: int


@dataclass(frozen=True)
class _Devices:
    shard: Shard
    device: torch.device

    @classmethod
    def from_env(cls) -> "_Devices":
        """torchrun/accelerate set RANK/WORLD_SIZE/LOCAL_RANK; a plain process is rank 0 of 1."""
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
        device = pick_device(local_rank)
        if world_size > 1 and not torch.distributed.is_initialized():
            if device.type == "cuda":
                torch.cuda.set_device(device)
            torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
        return cls(Shard(rank, world_size), device)

    @property
    def main(self) -> bool:
        return self.shard.rank == 0

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.shard.world_size > 1:
            torch.distributed.all_reduce(tensor)
        return tensor

    def barrier(self) -> None:
        if self.shard.world_size > 1:
            torch.distributed.barrier()


def run_key(cfg: TrainConfig, model_path: str, revision: str | None, manifest: pl.DataFrame) -> str:
    """What makes two runs the same run; reporting knobs may change between a crash and its resume."""
    reporting = {"logging_steps", "eval_every_steps", "val_rows", "checkpoint_every_steps", "checkpoints_kept",
                 "merge_adapter"}
    return fingerprint(cfg.model_dump(exclude=reporting), model_path, revision, manifest_fingerprint(manifest))


def train(model_path: str, train_frames: dict[str, pl.DataFrame], manifest: pl.DataFrame, cfg: TrainConfig,
          output_dir: str | Path, *, val_frame: pl.DataFrame | None = None,
          heldout_frames: dict[str, pl.DataFrame] | None = None,
          source_categories: dict[str, str] | None = None, checkpoint_dir: str | Path | None = None,
          log_metrics: MetricsCallback | None = None, on_step_end: Callable[[StepReport], None] | None = None,
          revision: str | None = None, trust_remote_code: bool = False,
          data_fingerprints: dict[str, str] | None = None) -> TrainResult:
    """Train ``model_path`` on the manifest's order; see the module docstring."""
    output_dir = Path(output_dir)
    checkpoint_root = Path(checkpoint_dir) if checkpoint_dir else output_dir / "checkpoints"
    devices = _Devices.from_env()
    steps = plan_steps(manifest, cfg.global_batch_size, cfg.max_steps)
    accumulation = cfg.gradient_accumulation_steps(devices.shard.world_size)
    # Model before optimizer (it owns the parameters), both before restoring a checkpoint into them.
    model, tokenizer = build_model(model_path, cfg, devices.device, revision=revision,
                                   trust_remote_code=trust_remote_code)
    optimizer = _optimizer(model, cfg)
    scheduler = _scheduler(optimizer, cfg, len(steps))
    key = run_key(cfg, model_path, revision, manifest)
    state = load_latest(checkpoint_root, key, model, optimizer, scheduler)
    resumed_from = state.step if state else None
    state = state or RunState(key)
    trainable, total = trainable_parameters(model)
    log.info("training %s: %d steps x %d examples, accumulation %d, %d of %d parameters trainable%s",
             cfg.method, len(steps), cfg.global_batch_size, accumulation, trainable, total,
             f", resuming after step {resumed_from}" if resumed_from else "")

    examples = ExampleStore(train_frames, tokenizer, cfg.max_length)
    examples.load_rows(row for rows in steps[state.step:] for row in rows)
    val_chats = tokenize_frame(val_frame, tokenizer, cfg.max_length) if val_frame is not None else None
    heldout_chats = {name: chats for name, frame in sorted((heldout_frames or {}).items())
                     if (chats := tokenize_frame(frame, tokenizer, cfg.max_length))}
    heldout_losses: dict[str, dict[int, float]] = {name: {} for name in heldout_chats}
    sources = sorted(train_frames)
    categories = source_categories or {}
    meter = LossMeter(sources, categories)
    token_loss = TokenLoss(model, liger_enabled(cfg, devices.device))
    forward_model = _wrap_distributed(model, devices)
    autocast = _autocast(cfg, devices.device)
    pad_id = tokenizer.pad_token_id
    timer = _Throughput()

    def measure_heldout(step: int) -> None:
        """Loss on every held-out set, logged as ``heldout/<set>/loss``: the forgetting curves."""
        measured = {name: evaluate_loss(forward_model, token_loss, chats, cfg, pad_id, devices.device, autocast)
                    for name, chats in heldout_chats.items()}
        for name, loss in measured.items():
            heldout_losses[name][step] = loss
        if measured and devices.main and log_metrics:
            log_metrics(step, {f"heldout/{name}/loss": loss for name, loss in measured.items()})

    if state.step == 0:
        measure_heldout(0)  # the base model's point: where every curve starts

    for step_index in range(state.step, len(steps)):
        rows = steps[step_index]
        timer.start()
        stats = _train_step(forward_model, token_loss, examples, devices.shard.take(rows), sources, cfg, pad_id,
                            devices, autocast, timer)
        grad_norm = _clip(model, cfg.max_grad_norm)
        lr_used = optimizer.param_groups[0]["lr"]
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        devices.sum(stats)
        timer.stop(devices)
        loss_sums, supervised, real_tokens, samples, truncated = stats.tolist()
        step_loss = sum(loss_sums) / sum(supervised) if sum(supervised) else float("nan")
        if sum(supervised) and not math.isfinite(step_loss):
            _diverged(step_index + 1, step_loss, grad_norm, lr_used, cfg)

        state.step = step_index + 1
        state.step_losses.append(step_loss)
        _count(state, sources, real_tokens, supervised, samples)
        state.truncated_examples += int(sum(truncated))
        meter.add(loss_sums, supervised)
        if val_chats and cfg.eval_every_steps and state.step % cfg.eval_every_steps == 0:
            state.val_losses[state.step] = evaluate_loss(forward_model, token_loss, val_chats, cfg, pad_id,
                                                         devices.device, autocast)
        if cfg.eval_every_steps and state.step % cfg.eval_every_steps == 0:
            measure_heldout(state.step)
        last = state.step == len(steps)
        if devices.main and (state.step % cfg.logging_steps == 0 or last):
            metrics = meter.report() | timer.report() | {
                "train/lr": scheduler.get_last_lr()[0], "train/grad_norm": grad_norm,
                "train/memory_mb": _memory_mb(devices.device),
                "train/truncated_examples": state.truncated_examples,  # cumulative; 0 when lengths agree
            }
            if state.step in state.val_losses:
                metrics["val/loss"] = state.val_losses[state.step]
            if log_metrics:
                log_metrics(state.step, metrics)
        if cfg.checkpoint_every_steps and (state.step % cfg.checkpoint_every_steps == 0 or last):
            if devices.main:
                save_checkpoint(checkpoint_root, state, model, optimizer, scheduler, cfg.checkpoints_kept)
            devices.barrier()
        if on_step_end:
            on_step_end(StepReport(state.step, step_loss, rows, int(sum(supervised))))

    if val_chats and state.step not in state.val_losses:
        state.val_losses[state.step] = evaluate_loss(forward_model, token_loss, val_chats, cfg, pad_id,
                                                     devices.device, autocast)
        if devices.main and log_metrics:
            log_metrics(state.step, {"val/loss": state.val_losses[state.step]})
    if heldout_chats and state.step not in next(iter(heldout_losses.values())):
        measure_heldout(state.step)
    if state.truncated_examples and devices.main:
        log.warning("%d examples were cut to train.max_length %s; cut answers were not supervised",
                    state.truncated_examples, cfg.max_length)
    result = TrainResult(
        output_dir=str(output_dir), final_step=state.step, step_losses=state.step_losses,
        val_loss=state.val_losses.get(state.step), val_losses=state.val_losses,
        tokens_per_source=state.tokens_per_source, supervised_tokens_per_source=state.supervised_tokens_per_source,
        samples_per_source=state.samples_per_source, resumed_from_step=resumed_from,
        trainable_parameters=trainable, total_parameters=total, tokens_per_s=timer.tokens_per_s(),
        real_token_share=timer.real_share(), truncated_examples=state.truncated_examples, metrics=meter.last,
        heldout_losses=heldout_losses,
    )
    if devices.main:
        merged = save_trained(model, tokenizer, output_dir, cfg.method == "lora" and cfg.merge_adapter)
        result.merged_dir = str(merged) if merged else None
        write_model_card(output_dir, base_model=model_path, revision=revision, cfg=cfg, result=result,
                         source_categories=categories, data_fingerprints=data_fingerprints or {})
    devices.barrier()
    return result


def _train_step(model: Any, token_loss: TokenLoss, examples: ExampleStore, rows: list[RowKey], sources: list[str],
                cfg: TrainConfig, pad_id: int, devices: _Devices, autocast: Any, timer: "_Throughput") -> torch.Tensor:
    """Forward and backward over this device's rows of one global batch; gradients are left in place.

    Returns per-source sums, shape (5, sources): token loss, supervised tokens,
    real tokens, samples, examples cut to max_length.
    """
    chats = [examples.get(key) for key in rows]
    batches = [collate(group, cfg.packing, pad_id) for group in micro_batches(chats, cfg.per_device_batch_size)]
    source_of_example = torch.tensor([sources.index(source) for source, _ in rows], device=devices.device)
    # The divisor is the whole global batch's supervised tokens, on every device, before any backward.
    supervised = devices.sum(torch.tensor(float(sum(int(b.shifted_targets()[0].sum()) for b in batches)),
                                          device=devices.device))
    stats = torch.zeros(5, len(sources), device=devices.device)
    for index, batch in enumerate(batches):
        batch = batch.to(devices.device)
        with _maybe_no_sync(model, sync=index == len(batches) - 1):
            with autocast:
                losses, example_of_token = token_loss(model, batch)
            if supervised > 0:
                # DDP averages gradients over devices; scaling by world size turns that back into a sum.
                (losses.sum() * devices.shard.world_size / supervised).backward()
        owners = source_of_example[index * cfg.per_device_batch_size + example_of_token]
        stats[0].index_add_(0, owners, losses.detach().float())
        stats[1].index_add_(0, owners, torch.ones_like(losses, dtype=torch.float))
        timer.count(batch.real_tokens, batch.processed_tokens)
    for chat, source in zip(chats, source_of_example.tolist()):
        stats[2:, source] += torch.tensor([chat.num_tokens, 1.0, float(chat.truncated)], device=devices.device)
    return stats


@torch.no_grad()
def evaluate_loss(model: Any, token_loss: "TokenLoss", chats: list, cfg: TrainConfig, pad_id: int,
                  device: torch.device, autocast: Any) -> float:
    """Mean loss per supervised token over ``chats``, in micro-batches like training."""
    was_training = model.training
    model.eval()  # no dropout: the number must not depend on RNG
    loss_sum, tokens = 0.0, 0
    for group in micro_batches(chats, cfg.per_device_batch_size):
        with autocast:
            losses, _ = token_loss(model, collate(group, cfg.packing, pad_id).to(device))
        loss_sum, tokens = loss_sum + float(losses.float().sum()), tokens + losses.numel()
    model.train(was_training)
    return loss_sum / tokens if tokens else float("nan")


def _diverged(step: int, loss: float, grad_norm: float, lr: float, cfg: TrainConfig) -> None:
    """Stop a run whose loss is no longer a number: every later step, and the saved model, would be garbage."""
    raise MixtuneError(
        f"training diverged at step {step}: the loss is {loss} (gradient norm {grad_norm:g}, learning rate "
        f"{lr:g} at this step, train.learning_rate {cfg.learning_rate:g}); nothing was saved after the last "
        "checkpoint. Lower train.learning_rate, add train.warmup_steps, or set train.max_grad_norm")


def _optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    # Decay matrices only: decaying norms and biases pulls them toward 0 for no benefit.
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": cfg.weight_decay},
              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.learning_rate)


def _scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig, total_steps: int) -> Any:
    from transformers import (get_constant_schedule_with_warmup, get_cosine_schedule_with_warmup,
                              get_linear_schedule_with_warmup)

    if cfg.scheduler == "constant":
        return get_constant_schedule_with_warmup(optimizer, cfg.warmup_steps)
    build = get_cosine_schedule_with_warmup if cfg.scheduler == "cosine" else get_linear_schedule_with_warmup
    return build(optimizer, cfg.warmup_steps, total_steps)


def _autocast(cfg: TrainConfig, device: torch.device) -> Any:
    dtype = compute_dtype(cfg, device)
    return torch.autocast(device_type=device.type, dtype=dtype, enabled=dtype != torch.float32)


def _wrap_distributed(model: torch.nn.Module, devices: _Devices) -> torch.nn.Module:
    if devices.shard.world_size == 1:
        return model
    ids = [devices.device.index] if devices.device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)


def _maybe_no_sync(model: torch.nn.Module, sync: bool) -> Any:
    # Gradients are all-reduced once per step, on the last micro-batch, not after each one.
    import contextlib

    return model.no_sync() if not sync and hasattr(model, "no_sync") else contextlib.nullcontext()


def _clip(model: torch.nn.Module, max_norm: float | None) -> float:
    params = [p for p in model.parameters() if p.grad is not None]
    if not params:
        return 0.0
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm else math.inf)
    return float(norm)


def _count(state: RunState, sources: list[str], real_tokens: list[float], supervised: list[float],
           samples: list[float]) -> None:
    for source, real, sup, n in zip(sources, real_tokens, supervised, samples):
        if n:
            state.samples_per_source[source] = state.samples_per_source.get(source, 0) + int(n)
            state.tokens_per_source[source] = state.tokens_per_source.get(source, 0) + int(real)
            state.supervised_tokens_per_source[source] = state.supervised_tokens_per_source.get(source, 0) + int(sup)


def _memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import psutil

    return psutil.Process().memory_info().rss / 2**20


class _Throughput:
    """Real tokens per second of step time, and the share of processed tokens that are real."""

    def __init__(self) -> None:
        self.seconds, self.real, self.processed = 0.0, 0, 0
        self.window_seconds, self.window_real = 0.0, 0
        self._started = 0.0

    def start(self) -> None:
        self._started = time.perf_counter()

    def count(self, real: int, processed: int) -> None:
        self.real += real
        self.processed += processed
        self.window_real += real

    def stop(self, devices: _Devices) -> None:
        if devices.device.type == "cuda":
            torch.cuda.synchronize(devices.device)  # kernels run async; time the work, not the launches
        elapsed = time.perf_counter() - self._started
        self.seconds += elapsed
        self.window_seconds += elapsed

    def tokens_per_s(self) -> float:
        return self.real / self.seconds if self.seconds else 0.0

    def real_share(self) -> float:
        return self.real / self.processed if self.processed else 1.0

    def report(self) -> dict[str, float]:
        rate = self.window_real / self.window_seconds if self.window_seconds else 0.0
        self.window_seconds, self.window_real = 0.0, 0
        return {"train/tokens_per_s": rate, "train/real_token_share": self.real_share()}
