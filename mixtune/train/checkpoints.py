"""Checkpoints that let a crashed or cancelled run continue exactly where it stopped.

A checkpoint holds everything the next step depends on: the trainable weights
(adapter or full), optimizer and scheduler state, every RNG (LoRA dropout draws
from them), the step, and the run's history so far. Data position needs no
state of its own: step k always trains global batch k of the manifest.

Layout, one folder per step under the checkpoint root:

    step-000040/weights.safetensors  optimizer.pt  scheduler.pt  rng.pt  state.json  complete.json

A checkpoint counts only when complete: ``complete.json`` is written last and
lists every other file with its size and SHA-256. Sizes are checked whenever
checkpoints are listed, hashes before one is restored; a checkpoint that fails
either (a crash mid-save, an upload cut off by an outage, a truncated file) is
skipped with a warning and the previous one is used. Locally the folder is
also renamed from a ``.partial`` name only when whole; a remote copy
(``upload_checkpoints``) sends the files first and the marker last, and keeps
only the newest ``checkpoints_kept``. ``state.json`` also carries a run key
(config, model, manifest): resuming someone else's run fails loudly instead
of mixing two runs.
"""

from __future__ import annotations

import hashlib
import json
import logging
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
COMPLETE_FILE = "complete.json"  # written last: {file name: {"bytes": size, "sha256": hex digest}}

log = logging.getLogger(__name__)


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
    files = {f.name: {"bytes": f.stat().st_size, "sha256": _sha256(f)} for f in sorted(partial.iterdir())}
    (partial / COMPLETE_FILE).write_text(json.dumps(files, indent=2, sort_keys=True))
    shutil.rmtree(final, ignore_errors=True)
    partial.rename(final)
    for old in list_checkpoints(root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def checkpoint_problem(folder: Path, check_hashes: bool = False) -> str | None:
    """Why ``folder`` is not a complete checkpoint (marker missing, a file missing or of the wrong
    size or, with ``check_hashes``, content); None when it is whole."""
    try:
        files = json.loads((folder / COMPLETE_FILE).read_text())
    except FileNotFoundError:
        return f"no {COMPLETE_FILE} (the save or upload did not finish)"
    except ValueError:
        return f"{COMPLETE_FILE} does not parse"
    for name, expected in sorted(files.items()):
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != expected["bytes"]:
            return f"{name} has {path.stat().st_size} bytes, {expected['bytes']} expected"
        if check_hashes and _sha256(path) != expected["sha256"]:
            return f"{name} does not match its SHA-256"
    return None


def _step_folders(root: Path) -> list[Path]:
    folders = [p for p in root.glob("step-*") if p.is_dir() and not p.name.endswith(".partial")]
    return sorted(folders, key=lambda p: int(p.name.split("-")[1]))


def list_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints (marker present, every size right), oldest first."""
    if not root.exists():
        return []
    return [p for p in _step_folders(root) if checkpoint_problem(p) is None]


def load_latest(root: Path, run_key: str, model: torch.nn.Module, optimizer: Any,
                scheduler: Any) -> RunState | None:
    """Restore the newest whole checkpoint into model, optimizer, scheduler and RNGs; None if there is none.

    A newer folder that is not whole (sizes or hashes wrong) is skipped with a
    warning naming it and why, and the one before it is used.
    """
    latest = None
    for folder in reversed(_step_folders(root) if root.exists() else []):
        if (problem := checkpoint_problem(folder, check_hashes=True)) is None:
            latest = folder
            break
        log.warning("checkpoint %s is incomplete (%s); skipping it", folder, problem)
    if latest is None:
        return None
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


def upload_checkpoints(store: Any, local_root: Path, remote_uri: str, keep: int) -> None:
    """Copy the newest ``keep`` whole checkpoints to ``remote_uri``; prune the remote copies to them.

    ``store`` is an ``ArtifactStore``. Each folder goes file by file, its
    ``complete.json`` last, so an upload cut short (an S3 outage) leaves a
    folder without a marker, which ``list_checkpoints`` never picks. Folders
    already marked remotely are not sent again. Afterwards every remote
    ``step-*`` folder but the newest ``keep`` marked ones is removed.
    """
    def marked(name: str) -> bool:
        return store.exists(f"{remote_uri}/{name}/{COMPLETE_FILE}")

    for folder in list_checkpoints(local_root)[-keep:]:
        target = f"{remote_uri}/{folder.name}"
        if marked(folder.name):
            continue
        for file in sorted(folder.iterdir()):
            if file.name != COMPLETE_FILE:
                store.put_file(str(file), f"{target}/{file.name}")
        store.put_file(str(folder / COMPLETE_FILE), f"{target}/{COMPLETE_FILE}")
    remote = [name for name in store.list_names(remote_uri) if name.startswith("step-")]
    whole = sorted((name for name in remote if marked(name)), key=lambda n: int(n.split("-")[1].split(".")[0]))
    for name in set(remote) - set(whole[-keep:]):
        store.remove(f"{remote_uri}/{name}")
