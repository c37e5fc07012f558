"""split: seeded train/val/test assignment that never leaks a group or a prompt across splits.

Input: the validated frame (``_row_id``, ``messages`` ...). Output: three
frames with the input's columns, in input order, and an assignments table
(``_row_id``, ``split``, plus ``_source_file`` and ``_source_row`` when the
input has them) that records the split.

Invariants:
- Every row lands in exactly one split: train + val + test = rows in.
- Rows sharing a ``group_column`` value never span two splits (null is no
  group: such a row stands alone).
- Rows with identical prompts (the conversation without its final assistant
  turn) never span two splits.
- Deterministic from content and seed only: the same rows and seed give the
  same assignment on every run, in any row order, on any machine.
- With ``stratify_column`` the target fractions hold within each stratum.

How: rows are joined into units (connected components over shared prompt
and shared group, by union-find), so each unit must move as one. Units are
ordered by SHA-256 of (seed, unit key), the unit key being the smallest
prompt hash in the unit: unique per unit and independent of row order.
Walking that order, each unit goes to the split furthest below its target
row count (targets = fraction x rows, per stratum). Ties go to train, then
val, then test, so small data fills train first (at 0.8/0.1/0.1, 1-3 rows
all go to train, 4 rows give 3/1/0, 5 rows 4/1/0, 10 rows 8/1/1). A split with fraction 0
never receives rows. A unit's stratum is its most common stratify value
(ties: the smallest), so a unit that straddles strata stays whole.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Callable

import polars as pl

from mixtune.errors import DataError
from mixtune.sections import SplitConfig

SPLITS = ("train", "val", "test")
# Fractions become integer parts per million so every comparison is exact.
PARTS = 1_000_000

PromptOf = Callable[[pl.DataFrame], pl.Series]


@dataclass(frozen=True)
class SplitResult:
    train: pl.DataFrame
    val: pl.DataFrame
    test: pl.DataFrame
    # (_row_id, [_source_file, _source_row,] split), in input row order
    assignments: pl.DataFrame

    def counts(self) -> dict[str, int]:
        return {"train": self.train.height, "val": self.val.height, "test": self.test.height}


def conversation_prompts(frame: pl.DataFrame) -> pl.Series:
    """Each row's prompt: its ``messages`` without a final assistant turn, as one string."""
    _require_columns(frame, {"messages": "the prompt (messages column)"})
    if frame.height == 0:
        return pl.Series("prompt", [], dtype=pl.Utf8)
    messages = pl.col("messages")
    ends_with_assistant = messages.list.last().struct.field("role") == "assistant"
    prompt = (
        pl.when(ends_with_assistant)
        .then(messages.list.head(messages.list.len() - 1))
        .otherwise(messages)
    )
    # Plain string concatenation (not polars' JSON writer, whose escaping may
    # change between versions) so the text, and with it the split, is stable.
    # ASCII unit/record separators keep turns apart: "a"+"bc" != "ab"+"c".
    turn = pl.element().struct
    encoded = prompt.list.eval(
        turn.field("role").fill_null("") + "\x1f" + turn.field("content").fill_null("")
    ).list.join("\x1e")
    return frame.select(encoded.fill_null("").alias("prompt")).to_series()


def split(frame: pl.DataFrame, cfg: SplitConfig,
          prompt_of: PromptOf = conversation_prompts) -> SplitResult:
    """Assign every row to train, val or test (see the module docstring for the rules)."""
    _require_columns(frame, {"_row_id": "lineage",
                             cfg.group_column: "split.group_column",
                             cfg.stratify_column: "split.stratify_column"})
    rows = frame.height
    prompts = prompt_of(frame)
    if prompts.len() != rows:
        raise ValueError(f"prompt_of returned {prompts.len()} values for {rows} rows")
    prompt_hashes = [_sha(p or "") for p in prompts.cast(pl.Utf8).to_list()]
    groups = _column_as_text(frame, cfg.group_column)
    units = _units(prompt_hashes, groups)

    per_row = pl.DataFrame({
        "row": pl.int_range(0, rows, dtype=pl.Int64, eager=True),
        "unit": units,
        "prompt_hash": prompt_hashes,
        "stratum": _column_as_text(frame, cfg.stratify_column) or [""] * rows,
    }, schema={"row": pl.Int64, "unit": pl.Int64, "prompt_hash": pl.Utf8, "stratum": pl.Utf8})
    unit_table = _unit_table(per_row, cfg.seed)
    unit_split = _fill(unit_table, cfg)

    split_of_row = per_row.join(unit_split, on="unit", how="left").sort("row")["split"]
    # _row_id restarts per source, so the file and record index go along when present.
    lineage = [c for c in ("_row_id", "_source_file", "_source_row") if c in frame.columns]
    assignments = frame.select(lineage).with_columns(split_of_row.alias("split"))
    parts = {name: frame.filter(split_of_row == name) for name in SPLITS}
    return SplitResult(parts["train"], parts["val"], parts["test"], assignments)


# --- units: rows that must stay together ---


def _units(prompt_hashes: list[str], groups: list[str | None] | None) -> list[int]:
    """Union-find over rows: same prompt or same group -> same unit. Returns a root per row."""
    parent = list(range(len(prompt_hashes)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]  # path halving keeps chains short
            i = parent[i]
        return i

    def union_by_key(keys: list) -> None:
        first_row_of: dict = {}
        for row, key in enumerate(keys):
            if key is None:
                continue
            first = first_row_of.setdefault(key, row)
            a, b = find(row), find(first)
            if a != b:
                parent[max(a, b)] = min(a, b)

    union_by_key(prompt_hashes)
    if groups is not None:
        union_by_key(groups)
    return [find(i) for i in range(len(parent))]


def _unit_table(per_row: pl.DataFrame, seed: int) -> pl.DataFrame:
    """One row per unit: size, stratum, and its seeded position."""
    stratum_votes = (
        per_row.group_by("unit", "stratum").len("votes")
        .sort(["unit", "votes", "stratum"], descending=[False, True, False])
        .unique("unit", keep="first")
        .select("unit", "stratum")
    )
    units = (
        per_row.group_by("unit")
        .agg(pl.len().alias("rows"), pl.col("prompt_hash").min().alias("unit_key"))
        .join(stratum_votes, on="unit")
    )
    order_keys = [_sha(f"{seed}:{key}") for key in units["unit_key"].to_list()]
    return units.with_columns(pl.Series("order_key", order_keys)).sort("order_key")


def _fill(units: pl.DataFrame, cfg: SplitConfig) -> pl.DataFrame:
    """Walk units in seeded order; each goes to the split furthest below its target."""
    weights = [round(getattr(cfg, name) * PARTS) for name in SPLITS]
    open_splits = [i for i, w in enumerate(weights) if w > 0]
    stratum_rows = dict(units.group_by("stratum").agg(pl.col("rows").sum()).iter_rows())
    assigned: dict[str, list[int]] = {s: [0, 0, 0] for s in stratum_rows}
    chosen: list[str] = []
    for stratum, unit_rows in units.select("stratum", "rows").iter_rows():
        total, done = stratum_rows[stratum], assigned[stratum]
        # deficit x PARTS: target rows minus rows given, in exact integers.
        best = max(open_splits, key=lambda i: (weights[i] * total - done[i] * PARTS, -i))
        done[best] += unit_rows
        chosen.append(SPLITS[best])
    return units.select("unit").with_columns(pl.Series("split", chosen, dtype=pl.Utf8))


# --- helpers ---


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _column_as_text(frame: pl.DataFrame, column: str | None) -> list[str | None] | None:
    if column is None:
        return None
    series = frame[column]
    if series.dtype != pl.Utf8:
        # Nested values (lists, structs) compare by their JSON text.
        nested = isinstance(series.dtype, (pl.List, pl.Array, pl.Struct))
        series = (frame.select(pl.col(column).cast(pl.Utf8) if not nested else
                               pl.struct(pl.col(column)).struct.json_encode()).to_series())
    return series.to_list()


def _require_columns(frame: pl.DataFrame, needed: dict[str | None, str]) -> None:
    for column, role in needed.items():
        if column is not None and column not in frame.columns:
            raise DataError(
                "split input", f"{role} column {column!r} not found; columns present: "
                f"{', '.join(frame.columns)}", field=column,
            )
