"""Checkpoints that let a crashed or cancelled run continue exactly where it stopped.

A checkpoint holds everything the next step depends on: the trainable weights
(adapter or full), optimizer and scheduler state, every RNG (LoRA dropout draws
from them), the step, and the run's history so far. Data position needs no
state of its own: step k always trains global batch k of the manifest.

Layout, one folder per step under the checkpoint root:

    step-000040/weights.safetensors  optimizer.pt  scheduler.pt  rng.pt  state.json

``state.json`` is written last, and the folder is renamed from a ``.partial``
name only when complete, so a crash mid-save never leaves a checkpoint that
looks whole. ``state.json`` also carries a run key (config, model, manifest):
resuming someone else's run fails loudly instead of mixing two runs.
"""

from __future__ import annotations

import json
import random
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from mixtune.train.model import load_trainable_state, trainable_state

STATE_FILE = "state.json"


@dataclass
class RunState:
    """What the loop has done so far; saved with every checkpoint, returned at the end."""

    run_key: str
    step: int = 0  # optimizer steps completed
    step_losses: list[float] = field(default_factory=list)  # mean token loss of each step
    tokens_per_source: dict[str, int] = field(default_factory=dict)  # real tokens seen
    supervised_tokens_per_source: dict[str, int] = field(default_factory=dict)
    samples_per_source: dict[str, int] = field(default_factory=dict)
    val_losses: dict[int, float] = field(default_factory=dict)  # step -> validation loss
    truncated_examples: int = 0


def _rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(root: Path, state: RunState, model: torch.nn.Module, optimizer: Any, scheduler: Any,
                    keep: int) -> Path:
    """Write step ``state.step`` atomically, then drop all but the newest ``keep``."""
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{state.step:06d}"
    partial = root / f"{final.name}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir()
    save_file(trainable_state(model), str(partial / "weights.safetensors"))
    torch.save(optimizer.state_dict(), partial / "optimizer.pt")
    torch.save(scheduler.state_dict(), partial / "scheduler.pt")
    torch.save(_rng_state(), partial / "rng.pt")
    (partial / STATE_FILE).write_text(json.dumps(asdict(state)))
    shutil.rmtree(final, ignore_errors=True)
    partial.rename(final)
    for old in list_checkpoints(root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    if not root.exists():
        return []
    done = [p for p in root.glob("step-*") if p.is_dir() and not p.name.endswith(".partial")
            and (p / STATE_FILE).exists()]
    return sorted(done, key=lambda p: int(p.name.split("-")[1]))


def load_latest(root: Path, run_key: str, model: torch.nn.Module, optimizer: Any,
                scheduler: Any) -> RunState | None:
    """Restore the newest checkpoint into model, optimizer, scheduler and RNGs; None if there is none."""
    checkpoints = list_checkpoints(root)
    if not checkpoints:
        return None
    latest = checkpoints[-1]
    raw = json.loads((latest / STATE_FILE).read_text())
    if raw["run_key"] != run_key:
        raise ValueError(f"{latest} belongs to another run (different config, model or manifest); "
                         "use a fresh checkpoint folder or delete this one")
    raw["val_losses"] = {int(k): v for k, v in raw["val_losses"].items()}  # JSON keys are strings
    load_trainable_state(model, load_file(str(latest / "weights.safetensors")))
    optimizer.load_state_dict(torch.load(latest / "optimizer.pt", weights_only=True))
    scheduler.load_state_dict(torch.load(latest / "scheduler.pt", weights_only=True))
    _set_rng_state(torch.load(latest / "rng.pt", weights_only=False))  # python/numpy states are tuples
    return RunState(**raw)
