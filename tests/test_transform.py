"""Transform: each column mapping to chat messages, system turns, row rejects, file errors."""

from __future__ import annotations

import json

import polars as pl
import pytest

from mixtune.errors import DataError
from mixtune.sections import SourceConfig
from mixtune.prepare.transform import MESSAGES_DTYPE, REJECTS_SCHEMA, WEIGHTED_MESSAGES_DTYPE, transform
from conftest import A, S, U  # chat turns: user, assistant, system


def _frame(**columns) -> pl.DataFrame:
    rows = len(next(iter(columns.values())))
    lineage = {"_row_id": list(range(rows)), "_source_file": ["train.jsonl"] * rows,
               "_source_row": list(range(rows))}
    return pl.DataFrame({**lineage, **columns})


def _source(**kw) -> SourceConfig:
    return SourceConfig(name="demo", uri="data/train.jsonl", **kw)


def test_prompt_response_builds_user_and_assistant_turns():
    result = transform(_frame(question=["q1", "q2"], answer=["a1", "a2"], topic=["x", "y"]), _source())
    assert result.frame.schema["messages"] == MESSAGES_DTYPE
    assert result.frame["messages"].to_list() == [[U("q1"), A("a1")], [U("q2"), A("a2")]]
    # every other column and the lineage stay for split and later stages
    assert result.frame.columns == ["_row_id", "_source_file", "_source_row", "question", "answer",
                                    "topic", "messages"]
    assert result.rejects.height == 0


def test_instruction_appends_input_only_when_it_has_text():
    frame = _frame(instruction=["Sum", "Say hi", "Name it"], input=["1 2", "  ", None],
                   output=["3", "hi", "it"])
    result = transform(frame, _source(columns={"kind": "instruction"}))
    assert [m[0]["content"] for m in result.frame["messages"].to_list()] == ["Sum\n\n1 2", "Say hi", "Name it"]
    assert result.rejects.height == 0


def test_label_mode_answers_the_label_as_text():
    frame = _frame(review=["great", "bad"], stars=[5, 1])
    source = _source(columns={"kind": "label", "text": "review", "label": "stars",
                              "instruction": "Rate the review."})
    result = transform(frame, source)
    assert result.frame["messages"].to_list() == [
        [U("Rate the review.\n\ngreat"), A("5")], [U("Rate the review.\n\nbad"), A("1")]]


def test_system_prompt_constant_goes_first():
    result = transform(_frame(question=["q"], answer=["a"]), _source(system_prompt="Be brief."))
    assert result.frame["messages"].to_list() == [[S("Be brief."), U("q"), A("a")]]


def test_system_column_per_row_and_blank_means_no_system_turn():
    frame = _frame(question=["q1", "q2", "q3"], answer=["a1", "a2", "a3"], persona=["Doctor.", " ", None])
    result = transform(frame, _source(system_column="persona"))
    assert result.frame["messages"].to_list() == [
        [S("Doctor."), U("q1"), A("a1")], [U("q2"), A("a2")], [U("q3"), A("a3")]]
    assert result.rejects.height == 0


def test_messages_column_multi_turn_keeps_system_turns_in_place():
    conversation = [U("hi"), A("hello"), S("switch to French"), U("bonjour?"), A("oui")]
    frame = _frame(messages=[conversation])
    result = transform(frame, _source(columns={"kind": "messages"}))
    assert result.frame.schema["messages"] == MESSAGES_DTYPE
    assert result.frame["messages"].to_list() == [conversation]


def test_turn_key_mixtune_does_not_train_on_rejects_the_row_naming_the_key():
    # A null key is as good as absent; a name or tool call would change what the model sees.
    named = pl.List(pl.Struct({"role": pl.String, "content": pl.String, "name": pl.String}))
    frame = _frame(messages=pl.Series([[{"role": "user", "content": "hi", "name": None}, A("hello")],
                                       [{"role": "user", "content": "hi", "name": "ann"}, A("hello")]],
                                      dtype=named))
    result = transform(frame, _source(columns={"kind": "messages"}))
    assert result.frame["_row_id"].to_list() == [0]
    assert result.frame["messages"].to_list() == [[U("hi"), A("hello")]]
    assert result.rejects.select("_row_id", "field", "reason").rows() == [
        (1, "messages[0].name", "unknown_message_key")]
    assert result.rejects["detail"][0].startswith("turn 0 (user) has key 'name' \"ann\"; ")


def test_messages_as_json_strings_parse_and_renamed_column_is_replaced():
    conversation = [S("own"), U("q"), {"role": "assistant", "content": "a", "weight": 1}]
    frame = _frame(conv=[json.dumps(conversation), json.dumps([U("q2"), A("a2")])])
    result = transform(frame, _source(columns={"kind": "messages", "messages": "conv"},
                                      system_prompt="Default."))
    # a row with its own system turn keeps it; others get the configured one. A source whose
    # turns carry a weight keeps it on every turn (null: the default, trained when assistant).
    assert result.frame.schema["messages"] == WEIGHTED_MESSAGES_DTYPE
    assert result.frame["messages"].to_list() == [
        [{**S("own"), "weight": None}, {**U("q"), "weight": None}, {**A("a"), "weight": 1}],
        [{**S("Default."), "weight": None}, {**U("q2"), "weight": None}, {**A("a2"), "weight": None}]]
    assert "conv" not in result.frame.columns


def test_bad_messages_rows_are_rejected_with_reason_and_field():
    frame = _frame(conv=['[{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]',
                         "{not json", '{"role": "user"}', '[{"content": "no role"}]', None])
    result = transform(frame, _source(columns={"kind": "messages", "messages": "conv"}))
    assert result.frame["_row_id"].to_list() == [0]
    assert result.rejects.schema == pl.Schema(REJECTS_SCHEMA)
    assert result.rejects["_source_row"].to_list() == [1, 2, 3, 4]
    assert result.rejects["reason"].to_list() == ["bad_messages"] * 3 + ["missing_value"]
    assert set(result.rejects["field"].to_list()) == {"conv"}
    assert result.rejects["detail"][0].startswith("not valid JSON")


def test_roleless_turn_in_struct_messages_is_bad_messages():
    frame = _frame(messages=[[U("q"), A("a")], [{"role": None, "content": "x"}, A("a")]])
    result = transform(frame, _source(columns={"kind": "messages"}))
    assert result.rejects.select("_row_id", "reason", "detail").rows() == [
        (1, "bad_messages", "turn 0 has no role")]


def test_null_in_mapped_column_rejects_the_row_as_missing_value():
    frame = _frame(question=["q1", None, "q3", "q4"], answer=["a1", "a2", None, ""])
    result = transform(frame, _source())
    assert result.frame["_row_id"].to_list() == [0, 3]  # empty text is for validate to judge
    assert result.rejects.select("_row_id", "_source_file", "field", "reason").rows() == [
        (1, "train.jsonl", "question", "missing_value"), (2, "train.jsonl", "answer", "missing_value")]
    assert result.frame.height + result.rejects.height == frame.height


def test_missing_column_names_the_file_the_column_and_the_columns_present():
    frame = _frame(prompt=["q"], completion=["a"])
    with pytest.raises(DataError) as raised:
        transform(frame, _source())
    message = str(raised.value)
    assert message.startswith("train.jsonl")
    assert "missing column 'question'" in message
    assert "columns present: prompt, completion" in message
    assert raised.value.field == "question"


def test_missing_optional_input_column_hints_to_set_it_null():
    with pytest.raises(DataError, match="set columns.input: null"):
        transform(_frame(instruction=["i"], output=["o"]), _source(columns={"kind": "instruction"}))
    result = transform(_frame(instruction=["i"], output=["o"]),
                       _source(columns={"kind": "instruction", "input": None}))
    assert result.frame["messages"].to_list() == [[U("i"), A("o")]]


def test_messages_turns_without_content_field_fail_the_file():
    frame = _frame(messages=[[{"from": "human", "value": "q"}]])
    with pytest.raises(DataError, match="expected text fields role and content"):
        transform(frame, _source(columns={"kind": "messages"}))


def test_typed_turns_reject_non_text_content_and_any_other_weight_naming_the_turn():
    # Parquet or hub columns: types come from the file, and each row is judged on its own.
    typed = pl.List(pl.Struct({"role": pl.String, "content": pl.Int64}))
    result = transform(_frame(messages=pl.Series([[{"role": "user", "content": 2}], None], dtype=typed)),
                       _source(columns={"kind": "messages"}))
    assert result.rejects.select("field", "reason", "detail").rows() == [
        ("messages[0].content", "not_a_string", "turn 0 (user) content is Int64 2, expected text"),
        ("messages", "missing_value", "column 'messages' is null")]

    rule = "a weight must be the number 0 (context, not trained) or 1 (trained), on an assistant turn"
    # Only numbers equal to 0 or 1 are weights: every text or boolean weight is rejected.
    for dtype, weights, rejected in [(pl.Float64, [0.0, 0.5], {1: "0.5"}),
                                     (pl.String, ["0", "1"], {0: '"0"', 1: '"1"'}),
                                     (pl.Boolean, [None, True], {1: "true"})]:
        turn = pl.Struct({"role": pl.String, "content": pl.String, "weight": dtype})
        rows = [[U("q"), {**A("a"), "weight": w}] for w in weights]
        result = transform(_frame(messages=pl.Series(rows, dtype=pl.List(turn))),
                           _source(columns={"kind": "messages"}))
        assert result.rejects.select("_row_id", "field", "reason", "detail").rows() == [
            (row, "messages[1].weight", "invalid_weight", f"turn 1 (assistant) has weight {shown}; {rule}")
            for row, shown in rejected.items()]
        assert result.frame.schema["messages"] == WEIGHTED_MESSAGES_DTYPE
