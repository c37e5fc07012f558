"""The default model, SmolLM2-135M-Instruct, on its real tokenizer and chat template.

Fast tests need no training: they check what the tiny model's template cannot
show (a template that injects a default system prompt, real special tokens,
a real end-of-turn stop). One slow test trains a few LoRA steps of the real model.
"""

from __future__ import annotations

import json

import polars as pl
import pytest

from mixtune.eval.domain import generate_answers, load_eval_model
from mixtune.models import describe_model, end_of_turn_ids, gguf, model_identity
from mixtune.prepare.sanitize import special_tokens_of
from mixtune.sections import ModelConfig, StorageConfig
from mixtune.train.chat_tokens import supervised_text, tokenize_chat

from conftest import A, S, U

DEFAULT_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"


def test_real_model_folder_records_its_gguf_source(real_model_dir):
    source = gguf.source_info(real_model_dir)
    assert source["quantization"] == "Q4_1" and source["bytes"] == 98_362_432
    assert source["sha256"] == model_identity(ModelConfig())
    config = json.loads((real_model_dir / "config.json").read_text())
    assert "quantization_config" not in config and config["num_hidden_layers"] == 30
    line = describe_model(ModelConfig(), StorageConfig(root=str(real_model_dir.parents[1])))
    assert "SmolLM2-135M-Instruct.Q4_1.gguf" in line and source["sha256"][:12] in line and "Q4_1" in line


def test_real_template_renders_the_default_system_prompt_but_never_supervises_it(real_tokenizer):
    chat = tokenize_chat(real_tokenizer, [U("What causes anemia?"), A("Low iron, among others.")])
    text = real_tokenizer.decode(chat.input_ids)
    assert DEFAULT_SYSTEM in text  # the template adds it when the conversation has no system turn
    assert supervised_text(real_tokenizer, chat) == ["Low iron, among others.<|im_end|>"]


def test_real_template_supervises_every_assistant_turn_and_only_those(real_tokenizer):
    messages = [S("Be brief."), U("Capital of France?"), A("Paris."), U("And of Italy?"), A("Rome.")]
    chat = tokenize_chat(real_tokenizer, messages)
    assert supervised_text(real_tokenizer, chat) == ["Paris.<|im_end|>", "Rome.<|im_end|>"]
    assert DEFAULT_SYSTEM not in real_tokenizer.decode(chat.input_ids)  # a given system prompt replaces it


def test_sanitize_takes_the_real_special_tokens(real_tokenizer):
    specials = special_tokens_of(real_tokenizer)
    assert {"<|im_start|>", "<|im_end|>", "<|endoftext|>"} <= set(specials)


def test_real_end_of_turn_is_im_end(real_tokenizer):
    assert real_tokenizer.convert_ids_to_tokens(end_of_turn_ids(real_tokenizer)) == ["<|im_end|>"]


def test_real_generation_stops_at_im_end(real_model_dir):
    model, tokenizer = load_eval_model(str(real_model_dir), dtype="float32", device="cpu")
    prompt = [U("What is the capital of France? Answer in one word.")]
    answers, rendered = generate_answers(model, tokenizer, [prompt], max_new_tokens=40, batch_size=1)
    assert "Paris" in answers[0]
    assert "<|im_start|>" not in answers[0] and "user" not in answers[0].lower()
    # Stopped by the end-of-turn token, well before the budget: the answer is one short sentence.
    assert len(tokenizer(answers[0])["input_ids"]) < 20


@pytest.mark.slow
def test_real_model_trains_a_few_lora_steps(real_model_dir, tmp_path):
    from mixtune.train.config import TrainConfig
    from mixtune.train.loop import train

    rows = [(f"What is condition {i}?", f"Condition {i} is a rare disorder of the blood.") for i in range(8)]
    frame = pl.DataFrame({"_row_id": list(range(8)),
                          "messages": [[U(q), A(a)] for q, a in rows], "num_tokens": [0] * 8})
    steps = 3
    manifest = pl.DataFrame([(b, p, "med", (2 * b + p) % 8) for b in range(steps) for p in range(2)],
                            schema=["batch", "position", "source", "row_id"], orient="row")
    cfg = TrainConfig(global_batch_size=2, per_device_batch_size=2, max_length=128, learning_rate=1e-3,
                      max_steps=steps, logging_steps=1, checkpoint_every_steps=None, lora={"rank": 8, "alpha": 16})
    result = train(str(real_model_dir), {"med": frame}, manifest, cfg, tmp_path, source_categories={"med": "domain"})
    assert result.final_step == steps and len(result.step_losses) == steps
    assert result.step_losses[-1] < result.step_losses[0]  # the same 8 rows: the loss must fall
    assert (tmp_path / "adapter_config.json").exists() and (tmp_path / "adapter_model.safetensors").exists()
    card = (tmp_path / "README.md").read_text()
    sha256 = gguf.source_info(real_model_dir)["sha256"]
    assert "base_model: HuggingFaceTB/SmolLM2-135M-Instruct" in card  # hub metadata names the release
    assert "SmolLM2-135M-Instruct.Q4_1.gguf" in card and sha256[:12] in card and "Q4_1 quantization" in card


def test_check_data_loads_the_default_models_tokenizer_from_its_gguf(real_model_dir):
    # check-data without --model or --config counts with the default model: converted from its GGUF
    # file (here already, into the test store), never looked up on the hub.
    from mixtune.prepare.check import _load_tokenizer

    tokenizer = _load_tokenizer(ModelConfig(), StorageConfig(root=str(real_model_dir.parents[1])))
    assert tokenizer.convert_ids_to_tokens(end_of_turn_ids(tokenizer)) == ["<|im_end|>"]


def test_heldout_split_of_an_empty_category_source_is_empty_not_an_error():
    from mixtune.mix.sources import _heldout_mask

    assert _heldout_mask("empty", pl.DataFrame({"_row_id": []}, schema={"_row_id": pl.Int64})).to_list() == []
