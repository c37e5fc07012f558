"""Sanitize: each rule's effect, hit counts per rule and column, and agreement with Python re."""

from __future__ import annotations

import re

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mixtune.prepare.sanitize import (
    escape_regex,
    find_reserved,
    reserved_strings,
    sanitize,
    special_tokens_of,
    text_columns_of,
)
from mixtune.sections import SanitizeConfig, SanitizeRule, SourceConfig

TOKENS = ["<unk>", "<s>", "</s>", "<pad>", "<|im_start|>", "<|im_end|>"]


def _run(texts: list[str | None], cfg: SanitizeConfig | None = None, tokens=TOKENS):
    frame = pl.DataFrame({"text": texts}, schema={"text": pl.String})
    return sanitize(frame, cfg or SanitizeConfig(), ["text"], tokens)


def test_role_prefix_gets_space_before_colon_in_any_case():
    result = _run(["User: hi", "assistant: ok", "SYSTEM: x", "bOt: y", "Thought: z", "a (User: b)"])
    assert result.frame["text"].to_list() == [
        "User : hi", "assistant : ok", "SYSTEM : x", "bOt : y", "Thought : z", "a (User : b)"]
    assert result.hits["role_prefixes"] == {"text": 6}


def test_role_prefix_only_as_whole_word_directly_before_colon():
    texts = ["Username: a", "superuser: b", "my_user: c", "User : d", "Users: e", "user:"]
    result = _run(texts)
    assert result.frame["text"].to_list() == texts[:5] + ["user :"]
    assert result.hits["role_prefixes"] == {"text": 1}


def test_reserved_literals_removed_case_sensitively():
    result = _run(["a[EOS]b", "<image> and <video>", "x<unk>y", "<IMAGE> stays", "[eos] stays"])
    assert result.frame["text"].to_list() == ["ab", " and ", "xy", "<IMAGE> stays", "[eos] stays"]
    assert result.hits["reserved_literals"] == {"text": 4}


def test_model_special_tokens_removed(tiny_tokenizer):
    tokens = special_tokens_of(tiny_tokenizer)
    assert {"<|im_start|>", "<|im_end|>", "<s>", "</s>", "<pad>", "<unk>"} <= set(tokens)
    result = _run(["<|im_start|>user\nhi<|im_end|>", "<s>text</s>", "a <unk> b"], tokens=tokens)
    assert result.frame["text"].to_list() == ["user\nhi", "text", "a  b"]
    # <unk> is also a reserved literal: counted there, whatever the model lists
    assert result.hits["model_special_tokens"] == {"text": 4}
    assert result.hits["reserved_literals"] == {"text": 1}


def test_special_tokens_kept_when_stripping_is_off():
    result = _run(["<|im_start|>x [EOS]"], SanitizeConfig(strip_model_special_tokens=False))
    assert result.frame["text"].to_list() == ["<|im_start|>x "]
    assert "model_special_tokens" not in result.hits


def test_hits_counted_per_rule_and_column():
    frame = pl.DataFrame({
        "q": ["User: a <unk>", "b <image><image>", None],
        "a": ["Bot: x", "assistant: y User: z", "</s>"],
        "n": [1, 2, 3],
    })
    result = sanitize(frame, SanitizeConfig(), ["q", "a", "n"], TOKENS)
    assert result.hits == {
        "model_special_tokens": {"q": 0, "a": 1},
        "reserved_literals": {"q": 3, "a": 0},
        "role_prefixes": {"q": 1, "a": 3},
    }
    assert result.total_hits() == 8
    assert result.frame["n"].to_list() == [1, 2, 3]


def test_extra_rules_run_first_in_config_order_then_builtins():
    cfg = SanitizeConfig(extra_rules=[
        SanitizeRule(name="price", pattern=r"(\d+) USD", replacement="$$${1}"),
        SanitizeRule(name="speaker", pattern="Q>", replacement="User:", literal=True),
        SanitizeRule(name="dots", pattern="a.b*(c)", literal=True),
    ])
    result = _run(["cost 5 USD", "Q> hello", "xa.b*(c)y axbc"], cfg)
    # the speaker rule's output is rewritten by role_prefixes, which runs after it
    assert result.frame["text"].to_list() == ["cost $5", "User : hello", "xy axbc"]
    assert list(result.hits) == ["price", "speaker", "dots", "model_special_tokens",
                                 "reserved_literals", "role_prefixes"]
    assert result.hits["price"] == {"text": 1}
    assert result.hits["speaker"] == {"text": 1}
    assert result.hits["dots"] == {"text": 1}
    assert result.hits["role_prefixes"] == {"text": 1}


def test_messages_content_sanitized_and_other_fields_kept():
    turn = pl.Struct({"role": pl.String, "content": pl.String, "name": pl.String})
    frame = pl.DataFrame({
        "_row_id": [0, 1, 2, 3],
        "messages": [
            [{"role": "user", "content": "User: hi <unk>", "name": "u"},
             {"role": "assistant", "content": "<|im_end|>ok", "name": None}],
            [],
            None,
            [{"role": "user", "content": "clean", "name": "v"}],
        ],
    }, schema={"_row_id": pl.Int64, "messages": pl.List(turn)})
    result = sanitize(frame, SanitizeConfig(), ["messages"], TOKENS)
    assert result.frame.schema == frame.schema
    assert result.frame["messages"].to_list() == [
        [{"role": "user", "content": "User : hi ", "name": "u"},
         {"role": "assistant", "content": "ok", "name": None}],
        [],
        None,
        [{"role": "user", "content": "clean", "name": "v"}],
    ]
    assert result.hits == {"model_special_tokens": {"messages": 1},
                           "reserved_literals": {"messages": 1}, "role_prefixes": {"messages": 1}}


def test_messages_as_json_text_are_sanitized_on_their_content_not_their_escapes():
    # In JSON text "\\nUser:" hides the word boundary before "User:"; contents are what trains.
    rows = ['[{"role": "user", "content": "Hi.\\nUser: again <unk>"}, {"role": "assistant", "content": "ok", '
            '"weight": 1.0}]',
            '[{"role": "user", "content": "clean"},  {"role": "assistant", "content": "x", "weight": 1.0}]',
            None]
    frame = pl.DataFrame({"conv": rows})
    result = sanitize(frame, SanitizeConfig(), ["conv"], TOKENS)
    assert result.frame["conv"].to_list() == [
        '[{"role": "user", "content": "Hi.\\nUser : again "}, {"role": "assistant", "content": "ok", '
        '"weight": 1.0}]',
        rows[1], None]  # an unchanged row is left byte for byte; numbers keep their written form
    assert result.hits["role_prefixes"] == {"conv": 1} and result.hits["reserved_literals"] == {"conv": 1}


def test_text_opening_with_a_bracket_is_still_plain_text():
    frame = pl.DataFrame({"q": ["[Note] User: hi", '[{"role": "user", "content": "User: x"}]']})
    result = sanitize(frame, SanitizeConfig(), ["q"], TOKENS)
    assert result.frame["q"].to_list() == ["[Note] User : hi", '[{"role": "user", "content": "User : x"}]']


def test_sanitize_keeps_every_row_in_order_and_skips_absent_columns():
    texts = [f"row {i} User: <unk>" if i % 3 == 0 else None if i % 7 == 0 else f"row {i}"
             for i in range(50)]
    frame = pl.DataFrame({"_row_id": list(range(50)), "text": texts})
    result = sanitize(frame, SanitizeConfig(), ["text", "not_there"], TOKENS)
    assert result.frame["_row_id"].to_list() == list(range(50))
    assert result.frame["text"].null_count() == frame["text"].null_count()
    assert "not_there" not in result.frame.columns
    assert result.hits["reserved_literals"] == {"text": 17}


FRAGMENTS = ["User:", "user :", "Username:", "ASSISTANT:", "bot:", "Thought:", "system:", "xSystem:",
             "<unk>", "[EOS]", "<image>", "<video>", "<|im_start|>", "<|im_end|>", "</s>", "<s>",
             "Us", "er:", ":", " ", "a", "é", "\n", "<", ">", "|"]


@settings(max_examples=150, deadline=None)
@given(st.lists(st.lists(st.sampled_from(FRAGMENTS), max_size=12).map("".join), min_size=1, max_size=8))
def test_matches_python_re_applied_rule_by_rule(texts):
    cfg = SanitizeConfig()
    result = _run(texts, cfg)
    expected, role_hits = [], 0
    removals = [t for t in TOKENS if t not in cfg.reserved_literals] + cfg.reserved_literals
    for text in texts:
        for literal in sorted(removals, key=lambda s: (-len(s), s)):
            text = text.replace(literal, "")
        pattern = re.compile(r"\b(" + "|".join(map(re.escape, cfg.role_prefixes)) + "):", re.IGNORECASE)
        role_hits += len(pattern.findall(text))
        expected.append(pattern.sub(r"\1 :", text))
    assert result.frame["text"].to_list() == expected
    assert result.hits["role_prefixes"]["text"] == role_hits


def test_find_reserved_reports_first_reserved_string():
    found = find_reserved(pl.Series(["a USER: b <unk>", "Username: x", None, "x</s>", "fine"]),
                          ["<unk>", "</s>", "<s>"], ["User", "System"])
    assert found.to_list() == ["USER:", None, None, "</s>", None]


def test_reserved_strings_include_special_tokens_even_when_not_stripped(tiny_tokenizer):
    cfg = SanitizeConfig(strip_model_special_tokens=False)
    assert reserved_strings(cfg, ["<s>", "<unk>"]) == sorted(["[EOS]", "<image>", "<video>", "<unk>", "<s>"])
    from_tokenizer = reserved_strings(cfg, tiny_tokenizer)
    assert set(from_tokenizer) == set(cfg.reserved_literals) | set(special_tokens_of(tiny_tokenizer))


def test_escape_regex_matches_text_literally():
    text = r"a.b+c*d?(e)[f]{g}^h$i|j\k#l&m-n~o"
    assert pl.Series([text, "aXb"]).str.contains("^" + escape_regex(text) + "$").to_list() == [True, False]


def test_text_columns_follow_the_mapping():
    def columns(**kw):
        return text_columns_of(SourceConfig(name="s", uri="x", **kw))

    assert columns() == ["question", "answer"]
    assert columns(columns={"kind": "instruction"}, system_column="sys") == ["instruction", "input", "output", "sys"]
    assert columns(columns={"kind": "instruction", "input": None}) == ["instruction", "output"]
    assert columns(columns={"kind": "messages", "messages": "conv"}) == ["conv"]
    assert columns(columns={"kind": "label"}) == ["text", "label"]


def test_config_rejects_python_backreference_and_look_around():
    with pytest.raises(ValueError, match=r"\$\{1\}"):
        SanitizeRule(name="r", pattern="(a)", replacement=r"\1")
    with pytest.raises(ValueError, match="look-around"):
        SanitizeRule(name="r", pattern="(?<=a)b")
    with pytest.raises(ValueError, match="unique"):
        SanitizeConfig(extra_rules=[{"name": "role_prefixes", "pattern": "x"}])
