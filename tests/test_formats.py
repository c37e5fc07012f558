"""Data as written: what reaches the chat messages is exactly what the file says, in every format.

Each input is a reported one (issue 11, points 1 and 2), read by the real
download and transform, asserting the exact text of the turns.
"""

from __future__ import annotations

import decimal
import gzip
import json
from pathlib import Path

import polars as pl
import pytest

from mixtune.errors import DataError
from mixtune.prepare.download import download
from mixtune.prepare.transform import transform
from mixtune.sections import SourceConfig

QUESTIONS = ["What is 1 + 1?", "What is pi to two decimals?", "What is 2^53 + 1?", "What does it cost?"]
# The answers as a JSON file writes them (numbers) and as they must be trained on (that text).
ANSWER_TOKENS = ["2", "3.14", "9007199254740993", "19.90"]


def write(path: Path, data: str | bytes) -> Path:
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def source(path: Path | str, **kw) -> SourceConfig:
    return SourceConfig(name="qa", uri=str(path), **kw)


def chat(path: Path | str, **kw) -> list[list[dict]]:
    """The messages the file's rows become (download, then transform), all rows kept."""
    cfg = source(path, **kw)
    result = transform(download(cfg).frame, cfg)
    assert result.rejects.height == 0, result.rejects.to_dicts()
    return result.frame["messages"].to_list()


def pairs(messages: list[list[dict]]) -> list[tuple[str, str]]:
    return [(turns[0]["content"], turns[1]["content"]) for turns in messages]


# --- 1. TSV has no quoting ---


def test_tsv_quotes_are_data_at_the_start_of_a_value_and_around_it(tmp_path):
    path = write(tmp_path / "qa.tsv", 'question\tanswer\n'
                                      '"Quoted" at the start of a question?\tIt starts with a quote.\n'
                                      'Is this a sign?\t"Keep out"\n')
    assert pairs(chat(path)) == [('"Quoted" at the start of a question?', "It starts with a quote."),
                                 ("Is this a sign?", '"Keep out"')]


def test_tsv_keeps_quotes_and_commas_inside_values_and_reads_crlf(tmp_path):
    path = write(tmp_path / "qa.tsv.gz", gzip.compress(
        '\ufeffquestion\tanswer\r\nSay "hi", twice?\t"hi", "hi"\r\n'.encode()))
    assert pairs(chat(path)) == [('Say "hi", twice?', '"hi", "hi"')]


def test_csv_still_unquotes_quoted_values(tmp_path):
    path = write(tmp_path / "qa.csv", 'question,answer\n"Is this a sign?","""Keep out"""\n'
                                      '"One, two?","Yes,\nthree lines\nlater"\n')
    assert pairs(chat(path)) == [("Is this a sign?", '"Keep out"'), ("One, two?", "Yes,\nthree lines\nlater")]


# --- an unreadable line, in any format, is named by its line number ---


@pytest.mark.parametrize("name,content,line,says", [
    ("qa.jsonl", '{"question": "a", "answer": "b"}\n\n{"question": "c" "answer": "d"}\n',
     3, "not valid JSON: Expecting ',' delimiter"),
    ("qa.json", '[\n {"question": "a", "answer": "b"},\n {"question": "c", "answer": }\n]\n',
     3, "not valid JSON: Expecting value"),
    ("qa.json", '[\n {"question": "a", "answer": "b"},\n\n "c"\n]\n', 4, "element 1 is a string"),
    ("qa.csv", 'question,answer\na,b\nc,"d\n', 3, "not a readable CSV record: unexpected end of data"),
    ("qa.csv", 'question,answer\na,b\nc,"d"e\n', 3, "not a readable CSV record: ',' expected after"),
    ("qa.csv", 'question,answer\na,b\nc,d,e\n', 3, "3 fields, but the header has 2"),
    # A line break inside a TSV value splits the record: both halves are named, never trained on.
    ("qa.tsv", 'question\tanswer\nIs it long?\tFirst line\nsecond line\n', 3,
     "1 field, but the header has 2 (TSV has no quoting"),
    ("qa.tsv", 'question\tanswer\na\tb\tc\n', 2, "3 fields, but the header has 2"),
    ("qa.jsonl", '{"question": "a", "answer": "b", "answer": "c"}\n', 1, "key 'answer' appears twice"),
    ("qa.csv", 'question,answer,answer\na,b,c\n', 1, "column 'answer' appears twice in the header"),
])
def test_an_unreadable_line_is_named_by_its_line_number(tmp_path, name, content, line, says):
    path = write(tmp_path / name, content)
    with pytest.raises(DataError) as raised:
        download(source(path))
    assert raised.value.line == line
    assert str(raised.value).startswith(f"{path} line {line}")
    assert says in str(raised.value)


def test_a_field_that_is_text_in_one_record_and_nested_in_another_names_both_lines(tmp_path):
    path = write(tmp_path / "chat.jsonl", json.dumps({"messages": [{"role": "user", "content": "q"}]})
                 + "\n" + json.dumps({"messages": "q"}) + "\n")
    with pytest.raises(DataError, match=r"line 2, field messages: field 'messages' is a string on line 2 "
                                        r"but an array on line 1"):
        download(source(path))


# --- 2. Text is text ---


@pytest.mark.parametrize("fmt", ["jsonl", "json"])
def test_json_numbers_in_a_text_field_train_as_written(tmp_path, fmt):
    records = ",\n".join(f'{{"question": {json.dumps(q)}, "answer": {a}}}' for q, a in
                         zip(QUESTIONS, ANSWER_TOKENS))
    content = records.replace(",\n", "\n") + "\n" if fmt == "jsonl" else f"[\n{records}\n]\n"
    path = write(tmp_path / f"qa.{fmt}", content)
    assert pairs(chat(path)) == list(zip(QUESTIONS, ["2", "3.14", "9007199254740993", "19.90"]))


def test_json_true_false_and_negative_zero_stay_as_written(tmp_path):
    path = write(tmp_path / "labels.jsonl", '{"text": "a", "label": true}\n{"text": "b", "label": false}\n'
                                           '{"text": "c", "label": -0}\n{"text": "d", "label": 1e3}\n')
    messages = chat(path, columns={"kind": "label"})
    assert [m[1]["content"] for m in messages] == ["true", "false", "-0", "1e3"]


def test_csv_and_tsv_numbers_stay_as_written(tmp_path):
    lines = ["question\tanswer"] + [f"{q}\t{a}" for q, a in zip(QUESTIONS, ANSWER_TOKENS)]
    tsv = write(tmp_path / "qa.tsv", "\n".join(lines) + "\n")
    csv_path = write(tmp_path / "qa.csv", "\n".join(line.replace("\t", ",") for line in lines) + "\n")
    expected = list(zip(QUESTIONS, ["2", "3.14", "9007199254740993", "19.90"]))
    assert pairs(chat(tsv)) == expected and pairs(chat(csv_path)) == expected


def test_parquet_integer_decimal_and_boolean_text_fields_convert_exactly(tmp_path):
    frame = pl.DataFrame({
        "question": QUESTIONS[:3],
        "big": pl.Series([2, 9007199254740993, -1], dtype=pl.Int64),
        "price": pl.Series([decimal.Decimal("19.90"), decimal.Decimal("0.10"), decimal.Decimal("3.00")],
                           dtype=pl.Decimal(10, 2)),
        "flag": [True, False, True],
    })
    frame.write_parquet(tmp_path / "qa.parquet")
    path = tmp_path / "qa.parquet"
    assert [a for _, a in pairs(chat(path, columns={"kind": "prompt_response", "prompt": "question", "response": "big"}))] == [
        "2", "9007199254740993", "-1"]
    assert [a for _, a in pairs(chat(path, columns={"kind": "prompt_response", "prompt": "question", "response": "price"}))] == [
        "19.90", "0.10", "3.00"]
    assert [a for _, a in pairs(chat(path, columns={"kind": "prompt_response", "prompt": "question", "response": "flag"}))] == [
        "true", "false", "true"]


def test_parquet_float_text_field_fails_the_file_naming_the_column(tmp_path):
    pl.DataFrame({"question": QUESTIONS, "answer": [2.0, 3.14, 9007199254740993.0, 19.90]}).write_parquet(
        tmp_path / "qa.parquet")
    cfg = source(tmp_path / "qa.parquet")
    with pytest.raises(DataError, match=r"column 'answer' \(columns.response\) holds Float64 values, which "
                                        r"have no exact text") as raised:
        transform(download(cfg).frame, cfg)
    assert raised.value.field == "answer"


def test_hf_dataset_float_text_field_fails_rather_than_training_on_19_9(tmp_path, monkeypatch):
    # A local dataset folder, loaded by datasets' own JSON builder, which types the column as float.
    folder = tmp_path / "org" / "qa"
    folder.mkdir(parents=True)
    write(folder / "train.jsonl", "".join(f'{{"question": {json.dumps(q)}, "answer": {a}}}\n'
                                          for q, a in zip(QUESTIONS, ANSWER_TOKENS)))
    monkeypatch.chdir(tmp_path)
    cfg = source("hf://org/qa", split="train")
    with pytest.raises(DataError, match=r"hf://org/qa, field answer: column 'answer' \(columns.response\) "
                                        r"holds Float64 values"):
        transform(download(cfg).frame, cfg)


def test_a_turn_whose_content_is_a_number_rejects_its_row_only(tmp_path):
    rows = [[{"role": "user", "content": "What is 1 + 1?"}, {"role": "assistant", "content": 2}],
            [{"role": "user", "content": "And in words?"}, {"role": "assistant", "content": "two"}]]
    path = write(tmp_path / "chat.jsonl", "".join(json.dumps({"messages": r}) + "\n" for r in rows))
    cfg = source(path, columns={"kind": "messages"})
    result = transform(download(cfg).frame, cfg)
    assert result.frame["messages"].to_list() == [rows[1]]
    assert result.rejects.select("_source_row", "field", "reason", "detail").rows() == [
        (0, "messages[1].content", "not_a_string", "turn 1 (assistant) content is a number 2, expected text")]


def test_a_folder_whose_files_type_a_messages_column_differently_rejects_only_the_odd_row(tmp_path):
    turns = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    odd = [{"role": "user", "content": "q2"}, {"role": "assistant", "content": 2}]
    write(tmp_path / "a.jsonl", json.dumps({"messages": turns}) + "\n")
    write(tmp_path / "b.jsonl", json.dumps({"messages": odd}) + "\n" + json.dumps({"messages": turns}) + "\n")
    cfg = source(tmp_path, columns={"kind": "messages"})
    result = transform(download(cfg).frame, cfg)
    assert result.frame["messages"].to_list() == [turns, turns]
    assert result.rejects.select("_source_file", "_source_row", "reason").rows() == [
        (str(tmp_path / "b.jsonl"), 0, "not_a_string")]


def test_a_text_column_nested_in_another_file_fails_the_source(tmp_path):
    write(tmp_path / "a.jsonl", '{"question": "q", "answer": "text"}\n')
    write(tmp_path / "b.jsonl", '{"question": "q", "answer": {"text": "nested"}}\n')
    with pytest.raises(DataError, match=r"files do not form one table: column 'answer' holds String in "
                                        rf"{tmp_path / 'a.jsonl'} but Struct\(\{{'text': String\}}\) in "
                                        rf"{tmp_path / 'b.jsonl'}"):
        download(source(tmp_path))


def test_a_float_column_in_one_parquet_file_and_text_in_another_fails_the_source(tmp_path):
    pl.DataFrame({"question": ["q"], "answer": [19.90]}).write_parquet(tmp_path / "a.parquet")
    pl.DataFrame({"question": ["q"], "answer": ["19.90"]}).write_parquet(tmp_path / "b.parquet")
    with pytest.raises(DataError, match="column 'answer' holds Float64 in .*a.parquet but String in"):
        download(source(tmp_path))


def test_files_whose_turns_differ_in_weight_keep_every_weight(tmp_path):
    plain = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    weighted = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "weight": 0},
                {"role": "user", "content": "q2"}, {"role": "assistant", "content": "b", "weight": 1}]
    write(tmp_path / "a.jsonl", json.dumps({"messages": plain}) + "\n")
    write(tmp_path / "b.jsonl", json.dumps({"messages": weighted}) + "\n")
    assert chat(tmp_path, columns={"kind": "messages"}) == [
        [{"weight": None, **t} for t in plain], [{"weight": None, **t} for t in weighted]]
