"""The train loop on the tiny model: manifest order, exact loss normalisation, resume, outputs."""

from __future__ import annotations

import json

import polars as pl
import pytest
import torch
from pydantic import ValidationError
from safetensors.torch import load_file

from mixtune.errors import ConfigError, DataError
from mixtune.train.launch import build_launch
from mixtune.train.config import TrainConfig
from mixtune.train.loop import train
from mixtune.train.model import build_model, liger_enabled, trainable_parameters

from conftest import DEMO_CORPUS

STEPS, BATCH = 4, 4


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """The tiny model's ops are too small to split; on a shared 2-core machine threads only contend."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _frame(rows: list[dict], system: str | None) -> pl.DataFrame:
    messages = []
    for row in rows:
        turns = [{"role": "user", "content": row["question"]}, {"role": "assistant", "content": row["answer"][:240]}]
        messages.append(([{"role": "system", "content": system}] if system else []) + turns)
    return pl.DataFrame({"_row_id": list(range(100, 100 + len(rows))), "messages": messages,
                         "num_tokens": [0] * len(rows)})


@pytest.fixture(scope="module")
def frames() -> dict[str, pl.DataFrame]:
    with open(DEMO_CORPUS, encoding="utf-8") as f:
        rows = [json.loads(next(f)) for _ in range(24)]
    return {"med": _frame(rows[:12], "You answer medical questions."), "chat": _frame(rows[12:], None)}


@pytest.fixture(scope="module")
def manifest() -> pl.DataFrame:
    """Odd positions from chat, even from med; row ids deliberately out of frame order."""
    records = [(b, p, "med" if p % 2 == 0 else "chat", 100 + (7 * b + 5 * p) % 12)
               for b in range(STEPS) for p in range(BATCH)]
    frame = pl.DataFrame(records, schema=["batch", "position", "source", "row_id"], orient="row")
    return frame.sample(fraction=1.0, shuffle=True, seed=3)  # file order must not matter, only (batch, position)


def _cfg(**overrides) -> TrainConfig:
    settings = dict(global_batch_size=BATCH, per_device_batch_size=2, max_length=256, learning_rate=5e-3,
                    max_steps=STEPS, logging_steps=1, checkpoint_every_steps=None,
                    lora={"rank": 4, "alpha": 8, "dropout": 0.1})
    return TrainConfig(**(settings | overrides))


def _run(model, frames, manifest, out, cfg, **kwargs):
    return train(str(model), frames, manifest, cfg, out, source_categories={"med": "domain", "chat": "chat"}, **kwargs)


def test_steps_follow_the_manifest_exactly(tiny_model_dir, frames, manifest, tmp_path):
    seen: list[list[tuple[str, int]]] = []
    metrics: list[tuple[int, dict]] = []
    result = _run(tiny_model_dir, frames, manifest, tmp_path, _cfg(),
                  on_step_end=lambda report: seen.append(report.rows),
                  log_metrics=lambda step, m: metrics.append((step, m)), val_frame=frames["med"].head(3))
    ordered = manifest.sort("batch", "position")
    expected = [list(zip(b["source"].to_list(), b["row_id"].to_list()))
                for b in ordered.partition_by("batch", maintain_order=True)]

    assert seen == expected
    assert result.samples_per_source == {"med": 8, "chat": 8} and result.final_step == STEPS
    train_metrics = [m for _, m in metrics if "train/loss" in m]
    assert [step for step, m in metrics if "train/loss" in m] == [1, 2, 3, 4]
    for m in train_metrics:
        keys = {"train/loss_source/med", "train/loss_source/chat", "train/loss_category/domain",
                "train/loss_category/chat", "train/lr", "train/tokens_per_s", "train/memory_mb"}
        assert keys <= set(m) and all(torch.isfinite(torch.tensor(m[k])) for k in keys)
    assert result.val_loss is not None and result.val_loss > 0


def test_gradient_accumulation_is_derived_and_must_be_whole():
    cfg = TrainConfig(global_batch_size=16, per_device_batch_size=2)
    assert (cfg.gradient_accumulation_steps(), cfg.gradient_accumulation_steps(devices=4)) == (8, 2)
    with pytest.raises(ConfigError, match="16 is not a multiple of per_device_batch_size 2 x 3"):
        cfg.gradient_accumulation_steps(devices=3)
    with pytest.raises(ValidationError, match="use global_batch_size 9 or 12"):
        TrainConfig(global_batch_size=10, per_device_batch_size=3)


def test_run_length_is_max_steps_or_epochs_never_both():
    assert (TrainConfig().max_steps, TrainConfig(epochs=2).max_steps, TrainConfig(epochs=2).epochs) == (100, None, 2)
    with pytest.raises(ValidationError, match="set max_steps or epochs, not both"):
        TrainConfig(max_steps=10, epochs=1)


def test_step_loss_does_not_depend_on_micro_batching(tiny_model_dir, frames, manifest, tmp_path):
    # Normalising by the global batch's supervised tokens makes 4x1, 2x2, 1x4 and padded batches one step.
    runs = {}
    for name, overrides in {"packed_1x4": dict(per_device_batch_size=4), "packed_4x1": dict(per_device_batch_size=1),
                            "padded_2x2": dict(per_device_batch_size=2, packing=False)}.items():
        out = tmp_path / name
        runs[name] = _run(tiny_model_dir, frames, manifest, out, _cfg(max_steps=2, lora={"rank": 4, "dropout": 0.0},
                                                                      **overrides))
        runs[name].adapter = load_file(str(out / "adapter_model.safetensors"))
    reference = runs.pop("packed_1x4")
    for result in runs.values():
        assert result.step_losses == pytest.approx(reference.step_losses, rel=1e-5)
        for key, tensor in reference.adapter.items():
            torch.testing.assert_close(result.adapter[key], tensor, rtol=1e-4, atol=1e-6)


def test_interrupted_run_resumes_at_the_same_manifest_position(tiny_model_dir, frames, manifest, tmp_path):
    whole = _run(tiny_model_dir, frames, manifest, tmp_path / "whole", _cfg())

    class Crash(Exception):
        pass

    def crash_after_step_3(report):
        if report.step == 3:
            raise Crash
    checkpoints = tmp_path / "checkpoints"
    with pytest.raises(Crash):  # step 3 finished but was never checkpointed: it must be redone
        _run(tiny_model_dir, frames, manifest, tmp_path / "resumed", _cfg(checkpoint_every_steps=2),
             checkpoint_dir=checkpoints, on_step_end=crash_after_step_3)
    rows_after_resume: list = []
    resumed = _run(tiny_model_dir, frames, manifest, tmp_path / "resumed", _cfg(checkpoint_every_steps=2),
                   checkpoint_dir=checkpoints, on_step_end=lambda r: rows_after_resume.append((r.step, r.rows)))

    assert resumed.resumed_from_step == 2 and [step for step, _ in rows_after_resume] == [3, 4]
    assert resumed.step_losses == pytest.approx(whole.step_losses, rel=1e-5)
    assert resumed.samples_per_source == whole.samples_per_source
    expected = load_file(str(tmp_path / "whole" / "adapter_model.safetensors"))
    got = load_file(str(tmp_path / "resumed" / "adapter_model.safetensors"))
    assert expected.keys() == got.keys()
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=1e-5, atol=1e-7)


def test_resume_refuses_a_checkpoint_of_another_run(tiny_model_dir, frames, manifest, tmp_path):
    _run(tiny_model_dir, frames, manifest, tmp_path / "a", _cfg(max_steps=1, checkpoint_every_steps=1),
         checkpoint_dir=tmp_path / "ck")
    with pytest.raises(ValueError, match="belongs to another run"):
        _run(tiny_model_dir, frames, manifest, tmp_path / "b",
             _cfg(max_steps=1, checkpoint_every_steps=1, learning_rate=1e-3), checkpoint_dir=tmp_path / "ck")


def test_lora_and_full_train_the_expected_parameters(tiny_model_dir):
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(tiny_model_dir)
    hidden, rank = config.hidden_size, 4
    kv = config.num_key_value_heads * (hidden // config.num_attention_heads)
    # Each adapted Linear(in, out) adds rank x (in + out): q and o are hidden->hidden, k and v hidden->kv.
    per_layer = rank * ((hidden + hidden) * 2 + (hidden + kv) * 2)
    lora, _ = build_model(str(tiny_model_dir), _cfg(), torch.device("cpu"))
    full, _ = build_model(str(tiny_model_dir), _cfg(method="full"), torch.device("cpu"))

    assert trainable_parameters(lora)[0] == per_layer * config.num_hidden_layers
    trainable, total = trainable_parameters(full)
    assert trainable == total == sum(p.numel() for p in full.parameters())
    with_mlp = _cfg(lora={"rank": 4, "include_mlp": True})
    assert with_mlp.lora_targets("llama") == ["q_proj", "k_proj", "v_proj", "o_proj",
                                              "gate_proj", "up_proj", "down_proj"]
    assert with_mlp.lora_targets("phi3") == ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"]


def test_merged_model_matches_the_adapter_and_card_records_the_mix(tiny_model_dir, frames, manifest, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out = tmp_path / "out"
    _run(tiny_model_dir, frames, manifest, out, _cfg(max_steps=2, merge_adapter=True),
         data_fingerprints={"med": "abc123"})
    merged = AutoModelForCausalLM.from_pretrained(out / "merged").eval()
    adapted = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), out).eval()
    input_ids = torch.tensor([[4, 20, 31, 42, 57, 63, 5]])
    with torch.no_grad():
        torch.testing.assert_close(merged(input_ids).logits, adapted(input_ids).logits, rtol=1e-4, atol=1e-5)
    adapter_delta = max(float(v.abs().max()) for k, v in load_file(str(out / "adapter_model.safetensors")).items()
                        if "lora_B" in k)
    assert adapter_delta > 0  # the adapter actually moved, so the comparison means something
    card = (out / "README.md").read_text()
    assert "| med | domain | 4 | 50.0%" in card and "| chat | chat | 4 | 50.0%" in card and "abc123" in card
    assert (out / "tokenizer.json").exists() and (out / "chat_template.jinja").exists()


def test_manifest_naming_a_missing_row_fails_before_training(tiny_model_dir, frames, manifest, tmp_path):
    broken = manifest.with_columns(pl.when(pl.col("batch") == 1).then(999).otherwise(pl.col("row_id")).alias("row_id"))
    with pytest.raises(DataError, match="row_ids not in the train split: \\[999\\]"):
        _run(tiny_model_dir, frames, broken, tmp_path, _cfg())
    with pytest.raises(DataError, match="not whole global batches of 4"):
        _run(tiny_model_dir, frames, manifest.head(6), tmp_path, _cfg())


def test_liger_is_off_on_cpu():
    assert liger_enabled(TrainConfig(liger="auto"), torch.device("cpu")) is False


def test_launch_command_for_two_gpus():
    accelerate = build_launch("mixtune.train_entry", ["--spec", "run.json"], processes_per_node=2)
    torchrun = build_launch("mixtune.train_entry", ["--spec", "run.json"], processes_per_node=2, launcher="torchrun")
    two_nodes = build_launch("mixtune.train_entry", [], processes_per_node=2, num_nodes=2, node_rank=1,
                             main_address="10.0.0.1", launcher="torchrun")

    assert accelerate.argv == ["accelerate", "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                               "--machine_rank", "0", "--main_process_port", "29500", "--mixed_precision", "no",
                               "--module", "mixtune.train_entry", "--spec", "run.json"]
    assert torchrun.argv == ["torchrun", "--nproc_per_node", "2", "--nnodes", "1", "--node_rank", "0",
                             "--master_port", "29500", "-m", "mixtune.train_entry", "--spec", "run.json"]
    assert (accelerate.in_process, accelerate.world_size, two_nodes.world_size) == (False, 2, 4)
    assert two_nodes.argv[-4:] == ["--master_addr", "10.0.0.1", "-m", "mixtune.train_entry"]
    assert build_launch("mixtune.train_entry", processes_per_node=1).in_process


_DISTRIBUTED_ENTRY = """
import json, sys, polars as pl, torch
from mixtune.train.config import TrainConfig
from mixtune.train.loop import train
model, data, out = sys.argv[1:4]
frames = {name: pl.read_parquet(f"{data}/{name}.parquet") for name in ("med", "chat")}
cfg = TrainConfig.model_validate_json(open(f"{data}/cfg.json").read())
result = train(model, frames, pl.read_parquet(f"{data}/manifest.parquet"), cfg, out)
if torch.distributed.get_rank() == 0:
    json.dump(result.step_losses, open(f"{out}/losses.json", "w"))
"""


@pytest.mark.slow
def test_two_processes_train_like_one(tiny_model_dir, frames, manifest, tmp_path):
    # gloo on CPU stands in for NCCL: same sharding, accumulation and gradient sum as on GPUs.
    import subprocess
    import sys

    cfg = _cfg(per_device_batch_size=1, lora={"rank": 4, "dropout": 0.0}, max_steps=2)
    single = _run(tiny_model_dir, frames, manifest, tmp_path / "single", cfg)
    for name, frame in frames.items():
        frame.write_parquet(tmp_path / f"{name}.parquet")
    manifest.write_parquet(tmp_path / "manifest.parquet")
    (tmp_path / "cfg.json").write_text(cfg.model_dump_json())
    (tmp_path / "ddp_entry.py").write_text(_DISTRIBUTED_ENTRY)
    plan = build_launch("ddp_entry", [str(tiny_model_dir), str(tmp_path), str(tmp_path / "two")],
                        processes_per_node=2, launcher="torchrun", main_port=29517)
    # the venv's torchrun, run as a module; "-m ddp_entry" finds the entry in the working folder
    argv = [sys.executable, "-m", "torch.distributed.run", *plan.argv[1:]]
    subprocess.run(argv, check=True, cwd=tmp_path, timeout=240, capture_output=True)

    two = json.loads((tmp_path / "two" / "losses.json").read_text())
    assert two == pytest.approx(single.step_losses, rel=1e-5)


def test_a_non_finite_loss_stops_the_run_naming_the_step_and_learning_rate(tiny_model_dir, frames, manifest,
                                                                          tmp_path):
    from mixtune.errors import MixtuneError

    # config check refuses such a rate; a run handed one anyway (an API caller, a deployment) must stop.
    cfg = _cfg(checkpoint_every_steps=1).model_copy(update={"learning_rate": 1e30})
    steps: list[float] = []
    with pytest.raises(MixtuneError, match=r"training diverged at step 2: the loss is (nan|inf).*learning rate"):
        _run(tiny_model_dir, frames, manifest, tmp_path / "out", cfg, checkpoint_dir=tmp_path / "ck",
             on_step_end=lambda r: steps.append(r.loss))
    assert len(steps) == 1  # step 1 (finite) finished; nothing after it
    assert not (tmp_path / "out" / "adapter_model.safetensors").exists()
