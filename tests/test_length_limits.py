"""Training never cuts what validation passed; a cut is never silent and never trains on nothing.

The reported input: ``validate.max_length: 512`` with ``train.max_length: 48`` passed config check,
and training kept the first 48 tokens of a 95-token row, so none of its answer tokens was
supervised (or an answer was cut without its end-of-turn token, teaching the model not to stop).
"""

from __future__ import annotations

import logging

import polars as pl
import pytest
import yaml

from mixtune.cli import main
from mixtune.config import load_config, parse_config
from mixtune.errors import ConfigError, DataError
from mixtune.prepare.sanitize import reserved_strings, special_tokens_of
from mixtune.prepare.transform import MESSAGES_DTYPE
from mixtune.prepare.validate import validate
from mixtune.sections import SanitizeConfig, ValidateConfig
from mixtune.train.chat_tokens import supervised_text, tokenize_chat
from mixtune.train.config import TrainConfig
from mixtune.train.data import ExampleStore, fit_to_length
from mixtune.train.loop import train

from conftest import A, S, U

MINIMAL = {"data": {"sources": [{"name": "d", "uri": "d.jsonl"}]}}
# A long system prompt and question, then a short answer: the answer starts after token 48.
SYSTEM = ("You are a careful medical assistant. Answer in one short sentence, cite no sources, and say "
          "when a question needs a doctor.")
QUESTION = "What are the symptoms of iron deficiency anemia in adults, and how is it usually found?"
ANSWER = "Tiredness and pale skin; a blood test finds it."
LONG_ROW = [S(SYSTEM), U(QUESTION), A(ANSWER)]
TWO_ANSWERS = [U("What is anemia?"), A("Too few red blood cells."), U("And its treatment?"),
               A("Iron supplements, a better diet, and treating the cause of any blood loss.")]


# --- one limit governs both ---


def test_config_refuses_train_max_length_below_validate_max_length():
    with pytest.raises(ConfigError) as err:
        parse_config({**MINIMAL, "validate": {"max_length": 512}, "train": {"max_length": 48}})
    (problem,) = err.value.problems
    assert problem.startswith("train.max_length, validate.max_length: train.max_length (48) is below "
                              "validate.max_length (512)")
    assert "at least 512" in problem and "lower validate.max_length to 48" in problem


def test_train_max_length_follows_validate_max_length_unless_larger(tmp_path):
    cfg = parse_config({**MINIMAL, "validate": {"max_length": 512}})
    assert cfg.train.max_length == 512
    assert parse_config(cfg.dump()).train.max_length == 512  # the dump reloads as it ran
    assert parse_config({**MINIMAL, "validate": {"max_length": 512}, "train": {"max_length": 1024}}
                        ).train.max_length == 1024
    assert TrainConfig().max_length is None  # on its own: no limit, validation already bounded the rows


def test_check_data_refuses_a_config_whose_limits_disagree(tmp_path, capsys):
    data = tmp_path / "qa.jsonl"
    data.write_text('{"question": "q", "answer": "a"}\n')
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({**MINIMAL, "validate": {"max_length": 512}, "train": {"max_length": 48}}))
    assert main(["check-data", str(data), "--config", str(config), "--json"]) == 2
    assert "train.max_length, validate.max_length" in capsys.readouterr().out
    with pytest.raises(ConfigError):
        load_config(config)


# --- cutting, where a TrainConfig on its own still cuts ---


def test_cut_answer_is_not_supervised_and_earlier_answers_keep_their_end_token(tiny_tokenizer):
    full = tokenize_chat(tiny_tokenizer, TWO_ANSWERS)
    first_answer, second_answer = supervised_text(tiny_tokenizer, full)
    assert first_answer.endswith("<|im_end|>") and second_answer.endswith("<|im_end|>")
    cut = fit_to_length(full, full.num_tokens - 3)  # inside the second answer
    assert cut.truncated and cut.num_tokens == full.num_tokens - 3
    assert supervised_text(tiny_tokenizer, cut) == [first_answer]
    assert fit_to_length(full, full.num_tokens) is full and fit_to_length(full, None) is full


def test_row_cut_to_no_supervised_token_is_an_error_naming_it(tiny_tokenizer):
    full = tokenize_chat(tiny_tokenizer, LONG_ROW)
    answer_start = next(i for i, label in enumerate(full.labels) if label != -100)
    assert full.num_tokens > 48 and answer_start >= 48  # the reported shape: 48 tokens hold no answer
    frames = {"med": pl.DataFrame({"_row_id": [7], "messages": pl.Series([LONG_ROW], dtype=MESSAGES_DTYPE)})}
    examples = ExampleStore(frames, tiny_tokenizer, max_length=48)
    examples.load_rows([("med", 7)])
    with pytest.raises(DataError) as err:
        examples.get(("med", 7))
    assert str(err.value).startswith(f"source med row 7, field messages: {full.num_tokens} tokens; "
                                     f"train.max_length 48 leaves 0 of {full.num_supervised} answer tokens")
    assert ExampleStore(frames, tiny_tokenizer, max_length=None).max_length is None


def test_every_cut_is_counted_and_logged(tiny_model_dir, tiny_tokenizer, tmp_path, caplog):
    full = tokenize_chat(tiny_tokenizer, TWO_ANSWERS)
    frames = {"med": pl.DataFrame({"_row_id": [0, 1], "messages": pl.Series(
        [TWO_ANSWERS, [U("q"), A("a")]], dtype=MESSAGES_DTYPE)})}
    manifest = pl.DataFrame({"batch": [0, 0, 1, 1], "position": [0, 1, 0, 1], "source": ["med"] * 4,
                             "row_id": [0, 1, 0, 1]})
    cfg = TrainConfig(global_batch_size=2, per_device_batch_size=2, max_steps=2, max_length=full.num_tokens - 3,
                      checkpoint_every_steps=None, lora={"rank": 2, "alpha": 4})
    metrics: list[dict] = []
    with caplog.at_level(logging.WARNING, logger="mixtune"):
        result = train(str(tiny_model_dir), frames, manifest, cfg, tmp_path / "out",
                       log_metrics=lambda step, m: metrics.append(m))
    assert result.truncated_examples == 2  # row 0, once per step it is drawn
    assert metrics[-1]["train/truncated_examples"] == 2
    assert "2 examples were cut to train.max_length" in caplog.text
    assert "examples cut to max_length: 2" in (tmp_path / "out" / "README.md").read_text()


# --- validate's own truncation keeps the end-of-turn token, and training then cuts nothing ---


def test_validate_truncation_keeps_end_of_turn_and_training_cuts_nothing(tiny_tokenizer):
    long_answer = "Iron deficiency anemia is treated with iron supplements and diet. " * 20
    rows = [[U("How is anemia treated?"), A(long_answer)], [U("q"), A("short")]]
    frame = pl.DataFrame({"_row_id": [0, 1], "_source_file": ["f"] * 2, "_source_row": [0, 1],
                          "messages": pl.Series(rows, dtype=MESSAGES_DTYPE)})
    cfg = ValidateConfig(max_length=64, on_too_long="truncate")
    result = validate(frame, cfg, tiny_tokenizer, reserved_strings(SanitizeConfig(), special_tokens_of(tiny_tokenizer)))
    assert result.truncated == 1 and result.rejects.height == 0
    for messages, counted in zip(result.frame["messages"].to_list(), result.frame["num_tokens"].to_list()):
        chat = tokenize_chat(tiny_tokenizer, messages)
        assert chat.num_tokens == counted <= 64
        assert supervised_text(tiny_tokenizer, chat)[-1].endswith("<|im_end|>")  # the cut answer still stops
        assert not fit_to_length(chat, cfg.max_length).truncated  # one limit: training keeps it whole
