"""What training draws from: every source's rows, and the run's size; what it never sees.

The manifest builder and the train job both read ``training_sources``, so a
row id the manifest plans is always a row the job has.

Held out for the forgetting curves (``heldout_sources``): a few rows of every
category source never train, so their loss during training shows a general
skill fading while it happens, without a benchmark; the domain's are the
first rows of its validation split. The held-out rows are those with the
smallest SHA-256 of ``"<source>:<row id>"``: fixed for a source's content,
whatever the seed, the mix or the storage root.
"""

from __future__ import annotations

import hashlib
from typing import Iterator

import polars as pl

from mixtune.mix.manifest import MixSource
from mixtune.mix.spec import DOMAIN
from mixtune.storage.artifacts import ArtifactRef, ArtifactStore, fingerprint
from mixtune.train.config import TrainConfig


HELDOUT_ROWS = 4  # rows per category source (and of the domain val split) kept for the forgetting curves
_MIN_ROWS_TO_HOLD_OUT = 5 * HELDOUT_ROWS  # smaller sources keep every row for training


def _heldout_mask(name: str, rows: pl.DataFrame) -> pl.Series:
    """True for the rows of category source ``name`` kept out of training (none when it is small)."""
    if rows.height < _MIN_ROWS_TO_HOLD_OUT:
        return pl.Series([False] * rows.height, dtype=pl.Boolean)
    digests = [hashlib.sha256(f"{name}:{row_id}".encode()).hexdigest() for row_id in rows["_row_id"].to_list()]
    chosen = set(sorted(digests)[:HELDOUT_ROWS])
    return pl.Series([d in chosen for d in digests], dtype=pl.Boolean)


def training_sources(store: ArtifactStore, split: ArtifactRef, categories: dict[str, list[ArtifactRef]],
                     columns: list[str]) -> Iterator[tuple[str, str, pl.DataFrame, str]]:
    """(name, category, rows, fingerprint) of every source training draws from.

    Each domain source's train split, and each category source less its
    held-out rows, in a fixed order (domain sources by name, then categories
    by name).
    """
    train = store.read_table(split, "train").select("_source", *columns)
    for (name,), rows in sorted(train.partition_by("_source", as_dict=True).items()):
        yield name, DOMAIN, rows.drop("_source"), fingerprint(split.fingerprint, name)
    for category, refs in sorted(categories.items()):
        for ref in refs:
            rows = store.read_table(ref).select(sorted({"_row_id", *columns}))
            yield ref.name, category, rows.filter(~_heldout_mask(ref.name, rows)).select(columns), ref.fingerprint


def heldout_sources(store: ArtifactStore, split: ArtifactRef, categories: dict[str, list[ArtifactRef]],
                    columns: list[str]) -> dict[str, pl.DataFrame]:
    """Rows no training run sees, by set: ``"domain"`` (first val rows) and each category name.

    Categories whose sources are all too small to spare rows are left out.
    """
    sets = {DOMAIN: store.read_table(split, "val").select(columns).head(HELDOUT_ROWS)}
    for category, refs in sorted(categories.items()):
        frames = []
        for ref in refs:
            rows = store.read_table(ref).select(sorted({"_row_id", *columns}))
            frames.append(rows.filter(_heldout_mask(ref.name, rows)).select(columns))
        if sum(f.height for f in frames):
            sets[category] = pl.concat(frames)
    return {name: rows for name, rows in sets.items() if rows.height}


def mix_sources(store: ArtifactStore, split: ArtifactRef,
                categories: dict[str, list[ArtifactRef]]) -> list[MixSource]:
    """Every training source's row ids and token counts, as the manifest builder takes them."""
    return [MixSource(name=name, category=category, frame=rows, fingerprint=fp)
            for name, category, rows, fp in training_sources(store, split, categories, ["_row_id", "num_tokens"])]


def run_size(train: TrainConfig) -> dict[str, float | int | None]:
    """max_steps x global batch, else epochs over the domain train rows (default one)."""
    if train.max_steps is not None:
        return {"global_batch_size": train.global_batch_size, "max_steps": train.max_steps, "epochs": None}
    return {"global_batch_size": train.global_batch_size, "max_steps": None, "epochs": train.epochs or 1.0}
