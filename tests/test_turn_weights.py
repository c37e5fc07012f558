"""Per-turn weights from an OpenAI-format JSONL file, through every prepare stage, into the loss mask.

The reported conversation (issue 11, point 3): only the second answer may be
supervised. Real reader, real stages, the tiny model's real chat template.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mixtune.prepare.download import download
from mixtune.prepare.sanitize import reserved_strings, sanitize, special_tokens_of, text_columns_of
from mixtune.prepare.transform import transform
from mixtune.prepare.validate import validate
from mixtune.sections import SanitizeConfig, SourceConfig, ValidateConfig
from mixtune.train.chat_tokens import supervised_text, tokenize_chat

CAPITAL = [
    {"role": "user", "content": "What is the capital of Australia?"},
    {"role": "assistant", "content": "Sydney.", "weight": 0},
    {"role": "user", "content": "Are you sure?"},
    {"role": "assistant", "content": "Sorry, it is Canberra.", "weight": 1},
]


def prepare(path: Path, tokenizer):
    """download -> sanitize -> transform -> validate, as the prepare flow runs them."""
    source = SourceConfig(name="chat", uri=str(path), columns={"kind": "messages"})
    special = special_tokens_of(tokenizer)
    clean = sanitize(download(source).frame, SanitizeConfig(), text_columns_of(source), special).frame
    transformed = transform(clean, source)
    validated = validate(transformed.frame, ValidateConfig(), tokenizer,
                         reserved_strings(SanitizeConfig(), special))
    return transformed, validated


def write_jsonl(path: Path, conversations: list[list[dict]]) -> Path:
    path.write_text("".join(json.dumps({"messages": c}) + "\n" for c in conversations))
    return path


def test_only_the_weight_1_answer_is_supervised_after_every_stage(tmp_path, tiny_tokenizer):
    path = write_jsonl(tmp_path / "chat.jsonl", [CAPITAL])
    transformed, validated = prepare(path, tiny_tokenizer)
    assert validated.rejects.height == 0
    messages = validated.frame["messages"].to_list()[0]
    assert messages == [{"weight": None, **m} for m in CAPITAL]

    chat = tokenize_chat(tiny_tokenizer, messages)
    assert supervised_text(tiny_tokenizer, chat) == ["Sorry, it is Canberra.<|im_end|>"]
    assert validated.frame["num_tokens"].to_list() == [chat.num_tokens]


@pytest.mark.parametrize("weight,shown", [(0.5, "0.5"), ("1", '"1"'), (True, "true"), (2, "2.0"),
                                          (-1, "-1.0")])
def test_any_other_weight_rejects_the_row_as_invalid_weight(tmp_path, tiny_tokenizer, weight, shown):
    bad = [CAPITAL[0], {**CAPITAL[1], "weight": weight}]
    good = [CAPITAL[2], {**CAPITAL[3], "weight": 1.0}]  # 1.0 is the number 1
    transformed, validated = prepare(write_jsonl(tmp_path / "chat.jsonl", [bad, good]), tiny_tokenizer)
    assert transformed.rejects.select("_source_row", "field", "reason").rows() == [
        (0, "messages[1].weight", "invalid_weight")]
    # 2 beside 1.0 is read as the float 2.0 (one JSON number type per field, exact)
    assert transformed.rejects["detail"][0] == (
        f"turn 1 (assistant) has weight {shown}; a weight must be the number 0 (context, not trained) "
        "or 1 (trained), on an assistant turn")
    assert validated.frame["messages"].to_list() == [[{**CAPITAL[2], "weight": None},
                                                      {**CAPITAL[3], "weight": 1}]]


def test_a_weight_on_a_user_turn_is_invalid_weight(tmp_path, tiny_tokenizer):
    on_user = [{**CAPITAL[0], "weight": 1}, CAPITAL[3]]
    transformed, _ = prepare(write_jsonl(tmp_path / "chat.jsonl", [on_user]), tiny_tokenizer)
    assert transformed.rejects.select("field", "reason").rows() == [("messages[0].weight", "invalid_weight")]


def test_a_row_whose_every_answer_has_weight_0_is_no_supervised_tokens(tmp_path, tiny_tokenizer):
    context_only = [CAPITAL[0], CAPITAL[1], CAPITAL[2], {**CAPITAL[3], "weight": 0}]
    transformed, validated = prepare(write_jsonl(tmp_path / "chat.jsonl", [context_only, CAPITAL]),
                                     tiny_tokenizer)
    assert transformed.rejects.height == 0
    assert validated.rejects.select("_source_row", "field", "reason").rows() == [
        (0, "messages", "no_supervised_tokens")]
    assert validated.frame["_source_row"].to_list() == [1]
