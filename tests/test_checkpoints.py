"""Checkpoints count only when whole: a marker written last, sizes and hashes checked, remote copies pruned."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mixtune.sections import StorageConfig
from mixtune.storage.artifacts import ArtifactStore
from mixtune.train.checkpoints import (COMPLETE_FILE, RunState, list_checkpoints, load_latest, save_checkpoint,
                                       upload_checkpoints)
from s3_server import create_bucket, s3_endpoint  # noqa: F401  (fixture)


def _parts(seed: int = 0):
    torch.manual_seed(seed)
    model = torch.nn.Linear(8, 8)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    return model, optimizer, scheduler


def _save_steps(root: Path, steps: int, keep: int = 10) -> dict[int, torch.Tensor]:
    """Train a few real optimizer steps, checkpointing each; the weights after each step."""
    model, optimizer, scheduler = _parts()
    weights = {}
    for step in range(1, steps + 1):
        model(torch.randn(4, 8)).pow(2).mean().backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
        save_checkpoint(root, RunState("run", step=step), model, optimizer, scheduler, keep)
        weights[step] = model.weight.detach().clone()
    return weights


def _resume(root: Path):
    model, optimizer, scheduler = _parts(seed=1)
    return load_latest(root, "run", model, optimizer, scheduler), model


@pytest.mark.parametrize("damage", ["truncated", "missing"])
def test_damaged_newest_checkpoint_is_skipped_and_the_previous_one_resumed(tmp_path, caplog, damage):
    weights = _save_steps(tmp_path, 3)
    newest = tmp_path / "step-000003" / "weights.safetensors"
    if damage == "truncated":
        newest.write_bytes(newest.read_bytes()[:-40])
    else:
        newest.unlink()
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-000001", "step-000002"]
    with caplog.at_level("WARNING", logger="mixtune.train.checkpoints"):
        state, model = _resume(tmp_path)
    assert state.step == 2
    torch.testing.assert_close(model.weight, weights[2], rtol=0, atol=0)
    assert "step-000003" in caplog.text and "weights.safetensors" in caplog.text


def test_same_size_corruption_is_caught_by_the_hash(tmp_path, caplog):
    weights = _save_steps(tmp_path, 2)
    newest = tmp_path / "step-000002" / "weights.safetensors"
    data = bytearray(newest.read_bytes())
    data[-1] ^= 0xFF
    newest.write_bytes(bytes(data))
    with caplog.at_level("WARNING", logger="mixtune.train.checkpoints"):
        state, model = _resume(tmp_path)
    assert state.step == 1 and "SHA-256" in caplog.text
    torch.testing.assert_close(model.weight, weights[1], rtol=0, atol=0)


def test_checkpoint_without_its_marker_does_not_count(tmp_path):
    _save_steps(tmp_path, 2)
    (tmp_path / "step-000002" / COMPLETE_FILE).unlink()  # state.json is there, the marker is not
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-000001"]


def test_remote_checkpoints_are_marked_last_pruned_and_a_torn_upload_is_never_resumed(s3_endpoint, tmp_path):
    create_bucket(s3_endpoint, "ckpt")
    store = ArtifactStore(StorageConfig(root="s3://ckpt/root", endpoint_url=s3_endpoint))
    remote = store.uri("checkpoints", "run")
    weights = _save_steps(tmp_path / "local", 4)
    upload_checkpoints(store, tmp_path / "local", remote, keep=2)
    assert store.list_names(remote) == ["step-000003", "step-000004"]
    # An outage cut the next upload short: state.json landed, weights and marker did not.
    store.put_file(str(tmp_path / "local" / "step-000004" / "state.json"), f"{remote}/step-000005/state.json")
    fetched = tmp_path / "fetched"
    store.get_dir(remote, str(fetched))
    assert [p.name for p in list_checkpoints(fetched)] == ["step-000003", "step-000004"]
    state, model = _resume(fetched)
    assert state.step == 4
    torch.testing.assert_close(model.weight, weights[4], rtol=0, atol=0)
    # The next sync removes the torn folder with the old ones: the remote never grows past `keep`.
    _save_steps(tmp_path / "local", 5)
    upload_checkpoints(store, tmp_path / "local", remote, keep=2)
    assert store.list_names(remote) == ["step-000004", "step-000005"]
    assert store.exists(f"{remote}/step-000005/{COMPLETE_FILE}")
