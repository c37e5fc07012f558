"""The offline demo model: deterministic, a normal HF folder, cached in the storage root."""

from __future__ import annotations

from pathlib import Path

from transformers import AutoModelForCausalLM, AutoTokenizer

from conftest import tiny_model_config
from mixtune.storage.artifacts import ArtifactStore
from mixtune.sections import TINY_MODEL, ModelConfig, StorageConfig
from mixtune.models.tiny import build_tiny_model, resolve_model


def test_tiny_model_is_byte_identical_when_rebuilt(tiny_model_dir, tmp_path):
    again = build_tiny_model(tiny_model_config(), tmp_path / "again")
    for f in sorted(Path(tiny_model_dir).iterdir()):
        assert f.read_bytes() == (again / f.name).read_bytes(), f.name


def test_tiny_model_loads_like_a_hub_model_with_chat_template(tiny_model_dir):
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    text = tok.apply_chat_template([{"role": "user", "content": "What is anemia?"}], tokenize=False,
                                   add_generation_prompt=True)
    assert text == "<|im_start|>user\nWhat is anemia?<|im_end|>\n<|im_start|>assistant\n"
    assert model.config.vocab_size == len(tok)
    assert tok.decode(tok("Hereditary spherocytosis", add_special_tokens=False)["input_ids"]) == "Hereditary spherocytosis"


def test_resolve_model_builds_once_into_storage_root(tmp_path):
    store = ArtifactStore(StorageConfig(root=str(tmp_path / "store")))
    model = ModelConfig(name_or_path=TINY_MODEL, tiny=tiny_model_config())
    first = Path(resolve_model(model, store))
    assert first.parent == tmp_path / "store" / "models" and (first / "config.json").exists()
    mtime = (first / "model.safetensors").stat().st_mtime_ns
    assert Path(resolve_model(model, store)) == first
    assert (first / "model.safetensors").stat().st_mtime_ns == mtime  # not rebuilt


def test_resolve_model_passes_hub_ids_through(tmp_path):
    store = ArtifactStore(StorageConfig(root=str(tmp_path)))
    assert resolve_model(ModelConfig(name_or_path="Qwen/Qwen2.5-0.5B"), store) == "Qwen/Qwen2.5-0.5B"
