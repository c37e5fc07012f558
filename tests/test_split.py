"""split: fractions, groups, prompts, strata, determinism, and small data."""

from __future__ import annotations

import random

import polars as pl
import pytest

from mixtune.errors import DataError
from mixtune.sections import SplitConfig
from mixtune.prepare.split import SPLITS, conversation_prompts, split


MESSAGES = pl.List(pl.Struct({"role": pl.Utf8, "content": pl.Utf8}))


def chat(prompt: str, answer: str, system: str | None = None) -> list[dict]:
    turns = [{"role": "system", "content": system}] if system else []
    return turns + [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]


def frame_of(conversations: list[list[dict]], **columns: list) -> pl.DataFrame:
    rows = len(conversations)
    return pl.DataFrame({
        "_row_id": list(range(rows)),
        "_source_file": ["data.jsonl"] * rows,
        "_source_row": list(range(rows)),
        "messages": conversations,
        **columns,
    }, schema_overrides={"_row_id": pl.Int64, "_source_row": pl.Int64, "messages": MESSAGES})


def unique_rows(rows: int, **columns: list) -> pl.DataFrame:
    return frame_of([chat(f"question {i}?", f"answer {i}.") for i in range(rows)], **columns)


def split_of(result) -> dict[int, str]:
    return dict(result.assignments.select("_row_id", "split").iter_rows())


def splits_holding(frame: pl.DataFrame, assignment: dict[int, str], column: str) -> dict:
    """column value -> the set of splits its rows landed in."""
    seen: dict = {}
    for row_id, value in frame.select("_row_id", column).iter_rows():
        seen.setdefault(value, set()).add(assignment[row_id])
    return seen


# --- fractions and bookkeeping ---


@pytest.mark.parametrize("fractions", [(0.8, 0.1, 0.1), (0.7, 0.2, 0.1), (0.5, 0.25, 0.25)])
def test_split_hits_the_target_fractions(fractions):
    rows = 2000
    cfg = SplitConfig(train=fractions[0], val=fractions[1], test=fractions[2])
    counts = split(unique_rows(rows), cfg).counts()
    for name, fraction in zip(SPLITS, fractions):
        assert abs(counts[name] - fraction * rows) <= 1, (name, counts)


def test_split_counts_reconcile_and_columns_are_kept():
    frame = unique_rows(503, label=[f"l{i % 3}" for i in range(503)])
    result = split(frame, SplitConfig())
    parts = [result.train, result.val, result.test]

    assert sum(p.height for p in parts) == frame.height
    ids = [i for p in parts for i in p["_row_id"].to_list()]
    assert sorted(ids) == frame["_row_id"].to_list()  # each row exactly once
    for part in parts:
        assert part.schema == frame.schema
    assert result.assignments.columns == ["_row_id", "_source_file", "_source_row", "split"]
    assert result.assignments["_row_id"].to_list() == frame["_row_id"].to_list()
    for name, part in zip(SPLITS, parts):
        assert set(part["_row_id"]) == {i for i, s in split_of(result).items() if s == name}


def test_split_gives_no_rows_to_a_zero_fraction_split():
    result = split(unique_rows(101), SplitConfig(train=0.9, val=0.0, test=0.1))
    assert result.val.height == 0
    assert result.train.height + result.test.height == 101


# --- what must never cross splits ---


def test_split_keeps_each_group_on_one_side():
    rng = random.Random(7)
    groups = [f"patient-{rng.randrange(120)}" for _ in range(1500)]
    frame = unique_rows(1500, patient=groups)
    result = split(frame, SplitConfig(group_column="patient"))

    assert all(len(s) == 1 for s in splits_holding(frame, split_of(result), "patient").values())
    counts = result.counts()
    assert abs(counts["train"] / 1500 - 0.8) < 0.05 and counts["val"] > 0 and counts["test"] > 0


def test_split_rows_without_a_group_stand_alone():
    # A null group is no group: 1000 null rows must not become one giant unit.
    frame = unique_rows(1000, patient=[None] * 1000)
    counts = split(frame, SplitConfig(group_column="patient")).counts()
    assert counts == {"train": 800, "val": 100, "test": 100}


def test_split_never_puts_an_identical_prompt_in_two_splits():
    rng = random.Random(3)
    conversations = []
    for prompt_id in range(400):
        for answer_id in range(rng.randint(1, 4)):  # same question, different answers
            conversations.append(chat(f"question {prompt_id}?", f"answer {answer_id}"))
    frame = frame_of(conversations).with_columns(
        prompt=pl.col("messages").list.first().struct.field("content"))
    result = split(frame, SplitConfig())

    assert all(len(s) == 1 for s in splits_holding(frame, split_of(result), "prompt").values())
    assert min(result.counts().values()) > 0


def test_split_prompt_includes_system_and_earlier_turns_but_not_the_last_answer():
    conversations = [
        chat("Q?", "A1"),
        chat("Q?", "A2"),                      # same prompt as row 0
        chat("Q?", "A1", system="Be brief."),  # different prompt: system turn differs
        chat("Q?", "A1") + [{"role": "user", "content": "More?"}],  # ends with a user turn
    ]
    prompts = conversation_prompts(frame_of(conversations)).to_list()
    assert prompts[0] == prompts[1]
    assert len({prompts[0], prompts[2], prompts[3]}) == 3
    assert "A1" not in prompts[0] and "A1" in prompts[3]


def test_split_chains_groups_and_prompts_into_one_unit():
    # Row pairs share a prompt across groups, and groups share rows: every chain
    # (g0 -p- g1 -p- g2 ...) must land whole in one split.
    conversations, groups, chains = [], [], []
    for chain in range(60):
        for link in range(4):
            conversations.append(chat(f"chain {chain} link {link}", "a"))
            groups.append(f"c{chain}-g{link}")
            conversations.append(chat(f"chain {chain} link {link}", "b"))
            groups.append(f"c{chain}-g{link + 1}")
            chains += [chain, chain]
    frame = frame_of(conversations, group=groups, chain=chains)
    result = split(frame, SplitConfig(group_column="group"))

    assert all(len(s) == 1 for s in splits_holding(frame, split_of(result), "chain").values())
    assert min(result.counts().values()) > 0


# --- strata ---


def test_split_holds_the_fractions_within_each_stratum():
    labels = ["common"] * 600 + ["middle"] * 300 + ["rare"] * 100
    random.Random(1).shuffle(labels)
    frame = unique_rows(1000, label=labels)
    result = split(frame, SplitConfig(train=0.7, val=0.2, test=0.1, stratify_column="label"))

    by_label = (result.assignments.join(frame.select("_row_id", "label"), on="_row_id")
                .group_by("label", "split").len())
    for label, total in (("common", 600), ("middle", 300), ("rare", 100)):
        for name, fraction in (("train", 0.7), ("val", 0.2), ("test", 0.1)):
            got = by_label.filter((pl.col("label") == label) & (pl.col("split") == name))["len"]
            assert abs(got.sum() - fraction * total) <= 1, (label, name, got.sum())


def test_split_stratified_with_groups_keeps_groups_whole():
    rng = random.Random(5)
    groups = [f"g{rng.randrange(80)}" for _ in range(800)]
    labels = [rng.choice(["yes", "no"]) for _ in range(800)]
    frame = unique_rows(800, group=groups, label=labels)
    result = split(frame, SplitConfig(group_column="group", stratify_column="label"))
    assert all(len(s) == 1 for s in splits_holding(frame, split_of(result), "group").values())
    assert result.train.height + result.val.height + result.test.height == 800


# --- determinism ---


def test_split_is_stable_across_runs_and_row_orders():
    rng = random.Random(11)
    frame = unique_rows(700, group=[f"g{rng.randrange(200)}" for _ in range(700)],
                        label=[rng.choice("abc") for _ in range(700)])
    cfg = SplitConfig(seed=42, group_column="group", stratify_column="label")
    first = split_of(split(frame, cfg))

    assert split_of(split(frame, cfg)) == first
    for shuffle_seed in (1, 2):
        shuffled = frame.sample(fraction=1.0, shuffle=True, seed=shuffle_seed)
        assert shuffled["_row_id"].to_list() != frame["_row_id"].to_list()
        assert split_of(split(shuffled, cfg)) == first


def test_split_changes_with_the_seed():
    frame = unique_rows(500)
    by_seed = [split_of(split(frame, SplitConfig(seed=seed))) for seed in (0, 1)]
    moved = sum(by_seed[0][i] != by_seed[1][i] for i in by_seed[0])
    assert moved > 50
    assert split(frame, SplitConfig(seed=1)).counts() == split(frame, SplitConfig(seed=0)).counts()


# --- small data and bad config ---


@pytest.mark.parametrize("rows,expected", [
    (0, (0, 0, 0)), (1, (1, 0, 0)), (2, (2, 0, 0)), (3, (3, 0, 0)),
    (4, (3, 1, 0)), (5, (4, 1, 0)), (10, (8, 1, 1)),
])
def test_split_small_data_fills_train_first(rows, expected):
    # The documented rule: each unit goes to the split furthest below its target,
    # ties to train, then val, then test.
    counts = split(unique_rows(rows), SplitConfig()).counts()
    assert (counts["train"], counts["val"], counts["test"]) == expected


@pytest.mark.parametrize("option", ["group_column", "stratify_column"])
def test_split_missing_column_names_it_and_the_columns_present(option):
    frame = unique_rows(10)
    with pytest.raises(DataError) as err:
        split(frame, SplitConfig(**{option: "patient"}))
    message = str(err.value)
    assert err.value.field == "patient"
    assert f"split.{option} column 'patient' not found" in message
    assert "columns present: _row_id, _source_file, _source_row, messages" in message
