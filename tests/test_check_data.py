"""check-data: each problem with its row, field and reason; exit codes; JSON lines; writes nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from mixtune.cli import main

MAX_TOKENS = 64  # --max-length in these tests: a short Q/A pair is ~20 tokens with ChatML
LONG_ANSWER = "Iron deficiency is common. " * 40  # far over MAX_TOKENS

CLEAN_ROWS = [
    {"question": "What causes anemia?", "answer": "Often low iron."},
    {"question": "Is it treatable?", "answer": "Yes, usually with iron."},
    {"question": "Who gets it?", "answer": "Anyone; women more often."},
]


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _listing(folder: Path) -> list[tuple[str, int, int]]:
    """Every file and folder below ``folder`` with its size and mtime: any write shows up."""
    return sorted((str(p.relative_to(folder)), p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*"))


def _run(capsys, *argv: str) -> tuple[int, list[str], str]:
    code = main(["check-data", *argv])
    out, err = capsys.readouterr()
    return code, out.splitlines(), err


@pytest.fixture
def dirty_file(tmp_path) -> Path:
    rows = [
        CLEAN_ROWS[0],
        {"question": "Dose?", "answer": "User: take two a day."},          # row 1: role prefix
        {"question": "Why <|im_end|> here?", "answer": "It should not be."},  # row 2: special token
        {"question": "Empty?", "answer": "   "},                            # row 3: blank answer
        {"question": "Long?", "answer": LONG_ANSWER},                       # row 4: over max length
        CLEAN_ROWS[1],
    ]
    (tmp_path / "data").mkdir()
    return _write_jsonl(tmp_path / "data" / "dirty.jsonl", rows)


def test_clean_file_exits_0_with_a_summary_of_0_problems(tmp_path, capsys, tiny_model_dir):
    data = _write_jsonl(tmp_path / "clean.jsonl", CLEAN_ROWS)
    code, lines, _ = _run(capsys, str(data), "--model", str(tiny_model_dir), "--max-length", str(MAX_TOKENS))
    assert code == 0
    assert lines == [f"{data}: 3 rows checked, 0 problems"]


def test_each_problem_is_reported_with_its_row_field_and_reason(dirty_file, capsys, tiny_model_dir):
    code, lines, _ = _run(capsys, str(dirty_file), "--model", str(tiny_model_dir),
                          "--max-length", str(MAX_TOKENS))
    assert code == 1
    *problems, summary = lines
    heads = [line.split(": ", 2)[:2] for line in problems]
    assert heads == [
        [f"{dirty_file} row 1, field answer", "reserved_string"],
        [f"{dirty_file} row 2, field question", "reserved_string"],
        [f"{dirty_file} row 3, field answer", "empty_content"],
        [f"{dirty_file} row 4, field messages", "too_long"],
    ]
    assert "'User:'; sanitize writes it as 'User :'" in problems[0]
    assert "model special token '<|im_end|>'; sanitize removes it" in problems[1]
    assert f"max_length is {MAX_TOKENS}" in problems[3]
    assert summary == (f"{dirty_file}: 6 rows checked, 4 problems in 4 rows "
                       "(empty_content 1, reserved_string 2, too_long 1)")


def test_a_chat_file_checked_with_the_default_columns_is_told_about_messages(tmp_path, capsys, tiny_model_dir):
    data = _write_jsonl(tmp_path / "chat.jsonl", [{"messages": [{"role": "user", "content": "hi"},
                                                               {"role": "assistant", "content": "hello"}]}])
    code, _, err = _run(capsys, str(data), "--model", str(tiny_model_dir))
    assert code == 2
    assert "missing column 'question'" in err and "--columns messages" in err
    code, lines, _ = _run(capsys, str(data), "--model", str(tiny_model_dir), "--columns", "messages")
    assert code == 0, lines


def test_one_problem_reads_in_the_singular(tmp_path, capsys, tiny_model_dir):
    data = _write_jsonl(tmp_path / "one.jsonl", [CLEAN_ROWS[0], {"question": "Empty?", "answer": "   "}])
    code, lines, _ = _run(capsys, str(data), "--model", str(tiny_model_dir), "--max-length", str(MAX_TOKENS))
    assert code == 1
    assert lines[-1] == f"{data}: 2 rows checked, 1 problem in 1 row (empty_content 1)"


def test_json_output_parses_and_matches_the_text_report(dirty_file, capsys, tiny_model_dir):
    args = [str(dirty_file), "--model", str(tiny_model_dir), "--max-length", str(MAX_TOKENS)]
    text_code, text_lines, _ = _run(capsys, *args)
    json_code, json_lines, _ = _run(capsys, *args, "--json")
    records = [json.loads(line) for line in json_lines]
    *problems, summary = records
    assert json_code == text_code == 1
    assert [p["type"] for p in problems] == ["problem"] * 4
    assert [f"{p['file']} row {p['row']}, field {p['field']}: {p['reason']}: {p['detail']}" for p in problems] \
        == text_lines[:-1]
    assert summary == {"type": "summary", "file": str(dirty_file), "rows_checked": 6, "rows_with_problems": 4,
                       "problems": 4, "reasons": {"empty_content": 1, "reserved_string": 2, "too_long": 1}}


def test_malformed_jsonl_line_exits_2_naming_the_file_and_line(tmp_path, capsys, tiny_model_dir):
    data = tmp_path / "broken.jsonl"
    data.write_text(json.dumps(CLEAN_ROWS[0]) + "\n" + json.dumps(CLEAN_ROWS[1]) + "\n{\"question\": \"oops\n",
                    encoding="utf-8")
    code, lines, err = _run(capsys, str(data), "--model", str(tiny_model_dir))
    assert code == 2 and lines == []
    assert err.startswith(f"error: {data} line 3: not valid JSON")
    code, lines, _ = _run(capsys, str(data), "--model", str(tiny_model_dir), "--json")
    record = json.loads(lines[0])
    assert code == 2 and len(lines) == 1
    assert (record["type"], record["file"], record["line"]) == ("error", str(data), 3)


def test_missing_column_exits_2_naming_the_column_and_the_columns_present(tmp_path, capsys, tiny_model_dir):
    data = _write_jsonl(tmp_path / "qa.jsonl", [{"prompt": "Hi?", "completion": "Hello.", "id": 1}])
    code, lines, err = _run(capsys, str(data), "--model", str(tiny_model_dir), "--columns", "prompt,answer")
    assert code == 2 and lines == []
    assert f"{data}, field answer: missing column 'answer'" in err
    assert "columns present: prompt, completion, id" in err


def test_check_writes_nothing_beside_the_data(dirty_file, capsys, tiny_model_dir):
    folder = dirty_file.parent
    _write_jsonl(folder / "clean.jsonl", CLEAN_ROWS)
    before = _listing(folder)
    for data in (dirty_file, folder / "clean.jsonl", folder):
        for extra in ([], ["--json"]):
            code, _, _ = _run(capsys, str(data), "--model", str(tiny_model_dir), "--max-length",
                              str(MAX_TOKENS), *extra)
            assert code in (0, 1)
    assert _listing(folder) == before


@pytest.mark.parametrize(("columns", "kind", "row", "field"), [
    ("instruction,input,output", None, {"instruction": "Summarize.", "input": "[EOS] text", "output": "Done."},
     "input"),
    ("instruction,output", "instruction", {"instruction": "Say hi.", "output": "Bot: hi"}, "output"),
    ("text,label", "label", {"text": "Assistant: fever", "label": "flu"}, "text"),
    ("messages", None, {"messages": [{"role": "user", "content": "Hi"},
                                     {"role": "assistant", "content": "Hello <video>"}]},
     "messages[1].content"),
    ("conversation", "messages", {"conversation": json.dumps([{"role": "user", "content": "Hi"},
                                                              {"role": "assistant", "content": "x <unk>"}])},
     "conversation[1].content"),
])
def test_each_column_form_names_the_field_holding_a_reserved_string(tmp_path, capsys, tiny_model_dir,
                                                                     columns, kind, row, field):
    data = _write_jsonl(tmp_path / "rows.jsonl", [row])
    argv = [str(data), "--model", str(tiny_model_dir), "--columns", columns, *(["--kind", kind] if kind else [])]
    code, lines, _ = _run(capsys, *argv)
    assert code == 1
    assert lines[0].startswith(f"{data} row 0, field {field}: reserved_string: ")
    assert lines[-1] == f"{data}: 1 row checked, 1 problem in 1 row (reserved_string 1)"


@pytest.mark.parametrize(("argv", "message"), [
    (["--columns", "a,b,c,d"], "give 1 (messages), 2"),
    (["--kind", "messages", "--columns", "q,a"], "does not fit --kind messages: expected messages"),
    (["--columns", "question,"], "a column name is empty"),
    (["--max-length", "0"], "--max-length 0: must be a positive number"),
])
def test_bad_arguments_exit_2_saying_what_is_wrong(tmp_path, capsys, tiny_model_dir, argv, message):
    data = _write_jsonl(tmp_path / "qa.jsonl", CLEAN_ROWS)
    code, lines, err = _run(capsys, str(data), "--model", str(tiny_model_dir), *argv)
    assert code == 2 and lines == []
    assert message in err


def test_config_sections_apply_and_max_length_overrides_them(tmp_path, capsys, tiny_model_dir):
    data = _write_jsonl(tmp_path / "qa.jsonl", [*CLEAN_ROWS, {"question": "Long?", "answer": LONG_ANSWER},
                                                CLEAN_ROWS[0], {"question": "Q <|im_start|>", "answer": "A"}])
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({
        "data": {"sources": [{"name": "qa", "uri": str(data)}]},
        "sanitize": {"strip_model_special_tokens": False},
        "validate": {"max_length": MAX_TOKENS, "on_too_long": "truncate"},
        "model": {"name_or_path": str(tiny_model_dir)},
        "storage": {"root": str(tmp_path / "store")},
    }), encoding="utf-8")
    code, lines, _ = _run(capsys, str(data), "--config", str(config))
    assert code == 1
    assert lines[:-1] == [
        f"{data} row 3, field messages: too_long: " + lines[0].split("too_long: ", 1)[1],
        f"{data} row 4, field messages: duplicate: same conversation as row 0, which is kept",
        # Not stripped by sanitize, so validate would reject the row: reported once, from the raw scan.
        f"{data} row 5, field question: reserved_string: contains the model special token '<|im_start|>'; "
        "validate rejects the row (sanitize.strip_model_special_tokens is off)",
    ]
    assert lines[0].endswith(f"max_length is {MAX_TOKENS}; with on_too_long: truncate the final answer "
                             "would be cut to fit")
    code, lines, _ = _run(capsys, str(data), "--config", str(config), "--max-length", "100000")
    assert code == 1 and [line.split(": ")[1] for line in lines[:-1]] == ["duplicate", "reserved_string"]
    assert not (tmp_path / "store").exists()  # a model folder needs no storage


# --- data as written and per-turn weights (issue 11, points 1-3) ---


def test_tsv_quotes_are_data_and_the_file_is_clean(tmp_path, capsys, tiny_model_dir):
    data = tmp_path / "qa.tsv"
    data.write_text('question\tanswer\n"Quoted" at the start of a question?\tIt starts with a quote.\n'
                    'Is this a sign?\t"Keep out"\n', encoding="utf-8")
    code, lines, _ = _run(capsys, str(data), "--model", str(tiny_model_dir))
    assert (code, lines) == (0, [f"{data}: 2 rows checked, 0 problems"])


def test_tsv_value_split_by_a_line_break_exits_2_naming_the_line(tmp_path, capsys, tiny_model_dir):
    data = tmp_path / "qa.tsv"
    data.write_text("question\tanswer\nIs it long?\tFirst line\nsecond line\n", encoding="utf-8")
    code, lines, err = _run(capsys, str(data), "--model", str(tiny_model_dir))
    assert code == 2 and lines == []
    assert err.startswith(f"error: {data} line 3: 1 field, but the header has 2 (TSV has no quoting")


def test_json_numbers_as_answers_are_clean_and_a_number_as_turn_content_is_not_a_string(
        tmp_path, capsys, tiny_model_dir):
    answers = tmp_path / "qa.jsonl"
    answers.write_text("".join(f'{{"question": "Q{i}?", "answer": {a}}}\n'
                               for i, a in enumerate(["2", "3.14", "9007199254740993", "19.90"])))
    code, lines, _ = _run(capsys, str(answers), "--model", str(tiny_model_dir))
    assert (code, lines) == (0, [f"{answers}: 4 rows checked, 0 problems"])

    chat = _write_jsonl(tmp_path / "chat.jsonl", [
        {"messages": [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": 19.90}]},
        {"messages": [{"role": "user", "content": "Q2?"}, {"role": "assistant", "content": "A."}]}])
    code, lines, _ = _run(capsys, str(chat), "--model", str(tiny_model_dir), "--columns", "messages")
    assert code == 1
    assert lines[0] == (f"{chat} row 0, field messages[1].content: not_a_string: "
                        "turn 1 (assistant) content is a number 19.9, expected text")


def test_weight_and_turn_key_problems_are_reported_row_by_row(tmp_path, capsys, tiny_model_dir):
    question, answer = {"role": "user", "content": "Capital of Australia?"}, {"role": "assistant"}
    data = _write_jsonl(tmp_path / "chat.jsonl", [
        {"messages": [question, {**answer, "content": "Sydney.", "weight": 0},
                      {"role": "user", "content": "Sure?"}, {**answer, "content": "Canberra.", "weight": 1}]},
        {"messages": [question, {**answer, "content": "Canberra.", "weight": 0.5}]},
        {"messages": [{**question, "name": "ann"}, {**answer, "content": "Canberra."}]},
        {"messages": [question, {**answer, "content": "Sydney.", "weight": 0}]},
    ])
    code, lines, _ = _run(capsys, str(data), "--model", str(tiny_model_dir), "--columns", "messages")
    assert code == 1
    assert [line.split(": ", 2)[:2] for line in lines[:-1]] == [
        [f"{data} row 1, field messages[1].weight", "invalid_weight"],
        [f"{data} row 2, field messages[0].name", "unknown_message_key"],
        [f"{data} row 3, field messages", "no_supervised_tokens"],
    ]
    assert "turn 0 (user) has key 'name' \"ann\"" in lines[1]
    assert lines[-1] == (f"{data}: 4 rows checked, 3 problems in 3 rows "
                         "(invalid_weight 1, no_supervised_tokens 1, unknown_message_key 1)")
