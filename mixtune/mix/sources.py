"""What training draws from: every source's rows, and the run's size.

The manifest builder and the train job both read ``training_sources``, so a
row id the manifest plans is always a row the job has.
"""

from __future__ import annotations

from typing import Iterator

import polars as pl

from mixtune.mix.manifest import MixSource
from mixtune.mix.spec import DOMAIN
from mixtune.storage.artifacts import ArtifactRef, ArtifactStore, fingerprint
from mixtune.train.config import TrainConfig


def training_sources(store: ArtifactStore, split: ArtifactRef, categories: dict[str, list[ArtifactRef]],
                     columns: list[str]) -> Iterator[tuple[str, str, pl.DataFrame, str]]:
    """(name, category, rows, fingerprint) of every source training draws from.

    Each domain source's train split, and each category source whole, in a
    fixed order (domain sources by name, then categories by name).
    """
    train = store.read_table(split, "train").select("_source", *columns)
    for (name,), rows in sorted(train.partition_by("_source", as_dict=True).items()):
        yield name, DOMAIN, rows.drop("_source"), fingerprint(split.fingerprint, name)
    for category, refs in sorted(categories.items()):
        for ref in refs:
            yield ref.name, category, store.read_table(ref).select(columns), ref.fingerprint


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
