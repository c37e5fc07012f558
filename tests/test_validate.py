"""Validate: one test per reject reason, first failing check wins, truncation, counts reconcile."""

from __future__ import annotations

import polars as pl
import pytest

from mixtune.prepare.sanitize import reserved_strings, special_tokens_of
from mixtune.sections import SanitizeConfig, ValidateConfig
from mixtune.prepare.transform import MESSAGES_DTYPE, REJECTS_SCHEMA, WEIGHTED_MESSAGES_DTYPE
from mixtune.prepare.validate import reject_share_exceeded, validate
from conftest import A, S, U  # chat turns: user, assistant, system


@pytest.fixture(scope="module")
def reserved(tiny_tokenizer) -> list[str]:
    return reserved_strings(SanitizeConfig(), special_tokens_of(tiny_tokenizer))


def _frame(conversations: list) -> pl.DataFrame:
    rows = len(conversations)
    return pl.DataFrame({
        "_row_id": [100 + i for i in range(rows)],
        "_source_file": ["train.jsonl"] * rows,
        "_source_row": list(range(rows)),
        "turn": [f"user column {i}" for i in range(rows)],  # a name validate must not clobber
        "messages": pl.Series(conversations, dtype=MESSAGES_DTYPE),
    })


def _check(conversations, tokenizer, reserved, **cfg):
    result = validate(_frame(conversations), ValidateConfig(**cfg), tokenizer, reserved)
    assert result.frame.height + result.rejects.height == len(conversations)
    assert sum(result.reasons.values()) == result.rejects.height
    return result


def _token_count(tokenizer, conversation) -> int:
    return len(tokenizer.apply_chat_template(conversation, tokenize=True)["input_ids"])


def test_clean_rows_are_kept_with_chat_template_token_counts(tiny_tokenizer, reserved):
    conversations = [[U("What causes anemia?"), A("Low iron.")],
                     [S("Be brief."), U("Dose?"), A("5 mg."), U("Daily?"), A("Yes.")]]
    result = _check(conversations, tiny_tokenizer, reserved)
    assert result.rejects.height == 0 and result.reasons == {}
    assert result.frame.schema["num_tokens"] == pl.Int64
    assert result.frame["num_tokens"].to_list() == [_token_count(tiny_tokenizer, c) for c in conversations]


def test_token_counts_match_the_chat_template_in_input_order_across_chunks(tiny_tokenizer, reserved):
    # More rows than one counting chunk, of varied length and script, so counts come back from
    # several threads and any reordering or off-by-one shows.
    words = ["anemia", "Dose:", "5 mg", "  twice", "\n\nDaily", "ß", "日本", "1234567", "x" * 30]
    conversations = [[U(" ".join(words[: 1 + i % len(words)])), A(" ".join(words[i % 7:] * (1 + i % 5)) + str(i))]
                     for i in range(2500)]
    result = _check(conversations, tiny_tokenizer, reserved, max_length=100_000)
    assert result.frame["num_tokens"].to_list() == [_token_count(tiny_tokenizer, c) for c in conversations]


def test_token_counts_ignore_truncation_and_padding_left_on_the_tokenizer(tiny_model_dir, reserved):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    conversations = [[U("What causes anemia?"), A("Low iron, blood loss or chronic disease. " * 5)]] * 2
    expected = [_token_count(tokenizer, c) for c in conversations]
    tokenizer.backend_tokenizer.enable_truncation(max_length=8)
    tokenizer.backend_tokenizer.enable_padding(length=200)
    result = _check(conversations, tokenizer, reserved, drop_duplicates=False)
    assert result.frame["num_tokens"].to_list() == expected
    assert tokenizer.backend_tokenizer.truncation["max_length"] == 8  # the caller's state is left alone


def test_missing_messages_column_is_bad_schema_for_every_row(tiny_tokenizer, reserved):
    frame = _frame([[U("q"), A("a")]] * 3).drop("messages").with_columns(question=pl.lit("q"))
    result = validate(frame, ValidateConfig(), tiny_tokenizer, reserved)
    assert result.frame.height == 0
    assert result.rejects["reason"].to_list() == ["bad_schema"] * 3
    assert "columns present" in result.rejects["detail"][0]


def test_null_messages_is_bad_schema(tiny_tokenizer, reserved):
    result = _check([[U("q"), A("a")], None], tiny_tokenizer, reserved)
    assert result.rejects.select("_row_id", "field", "reason").rows() == [(101, "messages", "bad_schema")]


@pytest.mark.parametrize("conversation", [
    [A("a"), U("q")],
    [U("q")],
    [U("q"), A("a"), U("q2")],
    [U("q"), U("q2"), A("a")],
    [U("q"), S("s"), A("a")],
    [{"role": "human", "content": "q"}, A("a")],
    [],
])
def test_wrong_role_order_is_bad_role_order(tiny_tokenizer, reserved, conversation):
    result = _check([conversation], tiny_tokenizer, reserved)
    assert result.rejects["reason"].to_list() == ["bad_role_order"]
    assert result.rejects["field"].to_list() == ["messages"]


def test_blank_content_is_empty_content_naming_the_turn(tiny_tokenizer, reserved):
    result = _check([[U("q"), A(" \n\t")], [S(""), U("q"), A("a")], [U(None), A("a")]],
                    tiny_tokenizer, reserved)
    assert result.rejects["reason"].to_list() == ["empty_content"] * 3
    assert result.rejects["field"].to_list() == ["messages[1].content", "messages[0].content",
                                                 "messages[0].content"]


def test_reserved_literal_or_role_prefix_left_is_reserved_string(tiny_tokenizer, reserved):
    result = _check([[U("q"), A("fine <|im_end|> then")], [U("q"), A("a")], [U("q"), A("x\nASSISTANT: y")],
                     [U("Username: ok"), A("a")]], tiny_tokenizer, reserved)
    assert result.rejects.select("_row_id", "field", "reason").rows() == [
        (100, "messages[1].content", "reserved_string"), (102, "messages[1].content", "reserved_string")]
    assert "'<|im_end|>'" in result.rejects["detail"][0]
    assert "'ASSISTANT:'" in result.rejects["detail"][1]


def test_over_max_length_is_too_long(tiny_tokenizer, reserved):
    long_answer = "anemia " * 200
    result = _check([[U("q"), A("a")], [U("q"), A(long_answer)]], tiny_tokenizer, reserved, max_length=64)
    assert result.rejects.select("_row_id", "reason").rows() == [(101, "too_long")]
    assert result.frame["num_tokens"].to_list() == [_token_count(tiny_tokenizer, [U("q"), A("a")])]


def test_truncate_cuts_the_final_answer_to_fit(tiny_tokenizer, reserved):
    long_answer = "Iron deficiency anemia is treated with iron supplements and diet. " * 20
    conversation = [S("Be helpful."), U("How is anemia treated?"), A(long_answer)]
    short = [U("q"), A("short")]
    result = _check([short, conversation], tiny_tokenizer, reserved, max_length=64, on_too_long="truncate")
    assert result.rejects.height == 0 and result.truncated == 1
    assert result.frame["messages"].to_list()[0] == short
    kept = result.frame["messages"].to_list()[1]
    assert kept[:2] == conversation[:2]
    assert long_answer.startswith(kept[2]["content"]) and len(kept[2]["content"]) < len(long_answer)
    tokens = _token_count(tiny_tokenizer, kept)
    assert result.frame["num_tokens"].to_list() == [_token_count(tiny_tokenizer, short), tokens]
    assert 64 - 3 <= tokens <= 64  # cut close to the limit, never over it


def test_truncate_rejects_when_the_prompt_alone_is_too_long(tiny_tokenizer, reserved):
    conversation = [U("symptoms of anemia " * 60), A("Fatigue.")]
    result = _check([conversation], tiny_tokenizer, reserved, max_length=64, on_too_long="truncate")
    assert result.rejects["reason"].to_list() == ["prompt_too_long"]
    assert result.truncated == 0


def test_exact_duplicates_keep_the_first_occurrence(tiny_tokenizer, reserved):
    a, b = [U("q"), A("a")], [U("q"), A("b")]
    result = _check([a, b, a, [S("s"), U("q"), A("a")], b], tiny_tokenizer, reserved)
    assert result.frame["_row_id"].to_list() == [100, 101, 103]
    assert result.rejects.select("_row_id", "reason").rows() == [(102, "duplicate"), (104, "duplicate")]
    assert "_row_id 100" in result.rejects["detail"][0]
    kept_all = _check([a, a], tiny_tokenizer, reserved, drop_duplicates=False)
    assert kept_all.frame.height == 2


def test_each_row_gets_the_first_failing_reason_and_rejects_keep_input_order(tiny_tokenizer, reserved):
    conversations = [
        [U("q"), A("dup")],
        [A(" "), U("<unk>")],              # role order before empty content and reserved
        [U(" "), A("<unk>")],              # empty content before reserved
        [U("q"), A("dup")],
        [U("<unk> " + "x " * 200), A("a")],  # reserved before length
        [U("fine"), A("fine")],
    ]
    result = _check(conversations, tiny_tokenizer, reserved, max_length=128)
    assert result.rejects.schema == pl.Schema(REJECTS_SCHEMA)
    assert result.rejects.select("_row_id", "_source_row", "reason").rows() == [
        (101, 1, "bad_role_order"), (102, 2, "empty_content"), (103, 3, "duplicate"),
        (104, 4, "reserved_string")]
    assert result.reasons == {"bad_role_order": 1, "duplicate": 1, "empty_content": 1, "reserved_string": 1}
    assert result.frame["_row_id"].to_list() == [100, 105]
    assert result.frame["turn"].to_list() == ["user column 0", "user column 5"]


def test_reject_share_threshold_is_exclusive():
    assert not reject_share_exceeded(100, 5, 5.0)
    assert reject_share_exceeded(100, 6, 5.0)
    assert not reject_share_exceeded(0, 0, 5.0)
    assert reject_share_exceeded(10, 1, 0.0)


# --- per-turn weights ---

CAPITAL = [U("What is the capital of Australia?"), {**A("Sydney."), "weight": 0},
           U("Are you sure?"), {**A("Sorry, it is Canberra."), "weight": 1}]


def _weighted(conversations: list) -> pl.DataFrame:
    weighted = [[{"weight": None, **turn} for turn in turns] for turns in conversations]
    return _frame([[]] * len(conversations)).with_columns(
        messages=pl.Series(weighted, dtype=WEIGHTED_MESSAGES_DTYPE))


def test_weighted_turns_are_kept_with_their_weights_and_counted_without_them(tiny_tokenizer, reserved):
    result = validate(_weighted([CAPITAL]), ValidateConfig(), tiny_tokenizer, reserved)
    assert result.rejects.height == 0
    assert [t["weight"] for t in result.frame["messages"][0]] == [None, 0, None, 1]
    plain = [{"role": t["role"], "content": t["content"]} for t in CAPITAL]
    assert result.frame["num_tokens"].to_list() == [_token_count(tiny_tokenizer, plain)]


def test_every_assistant_turn_with_weight_0_is_no_supervised_tokens(tiny_tokenizer, reserved):
    context_only = [CAPITAL[0], CAPITAL[1], CAPITAL[2], {**CAPITAL[3], "weight": 0}]
    result = validate(_weighted([context_only, CAPITAL]), ValidateConfig(), tiny_tokenizer, reserved)
    assert result.frame["_row_id"].to_list() == [101]
    assert result.rejects.select("_row_id", "field", "reason").rows() == [
        (100, "messages", "no_supervised_tokens")]
    assert result.rejects["detail"][0].startswith("every assistant turn has weight 0")


def test_weight_other_than_0_or_1_or_off_the_assistant_is_invalid_weight(tiny_tokenizer, reserved):
    two = [CAPITAL[0], {**CAPITAL[1], "weight": 2}]
    on_user = [{**CAPITAL[0], "weight": 1}, CAPITAL[3]]
    result = validate(_weighted([two, on_user]), ValidateConfig(), tiny_tokenizer, reserved)
    assert result.rejects.select("_row_id", "field", "reason", "detail").rows() == [
        (100, "messages[1].weight", "invalid_weight", "turn 1 (assistant) has weight 2; a weight must be 0 "
                                                      "(context, not trained) or 1 (trained), on an assistant turn"),
        (101, "messages[0].weight", "invalid_weight", "turn 0 (user) has weight 1; a weight must be 0 "
                                                      "(context, not trained) or 1 (trained), on an assistant turn")]
