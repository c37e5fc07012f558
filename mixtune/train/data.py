"""The training order: global batches read from the mix manifest, rows tokenized on demand.

The manifest (columns batch, position, source, row_id) IS the order: global
batch b is the rows with batch == b in position order, and nothing here
shuffles. Because the order is a pure function of the manifest, a resumed run
continues at step k with exactly the rows an uninterrupted run would use.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np
import polars as pl

from mixtune.train.chat_tokens import TokenizedChat, tokenize_chat
from mixtune.errors import DataError

MANIFEST_COLUMNS = ("batch", "position", "source", "row_id")

RowKey = tuple[str, int]  # (source name, _row_id in that source's frame)


def plan_steps(manifest: pl.DataFrame, global_batch_size: int, max_steps: int | None) -> list[list[RowKey]]:
    """One list of rows per optimizer step, in manifest order.

    Raises DataError when the manifest is not whole batches of
    ``global_batch_size`` numbered 0.. with positions 0..size-1, or holds
    fewer batches than ``max_steps`` asks for.
    """
    missing = [c for c in MANIFEST_COLUMNS if c not in manifest.columns]
    if missing:
        raise DataError("mix manifest", f"missing columns {missing}")
    ordered = manifest.sort(["batch", "position"])
    rows = ordered.height
    if rows == 0 or rows % global_batch_size:
        raise DataError("mix manifest", f"{rows} rows are not whole global batches of {global_batch_size}; "
                        "was it built with another global_batch_size?")
    index = np.arange(rows)
    # Every batch must be complete and numbered without gaps, or steps would silently shift.
    if not (np.array_equal(ordered["batch"].to_numpy(), index // global_batch_size)
            and np.array_equal(ordered["position"].to_numpy(), index % global_batch_size)):
        raise DataError("mix manifest", f"batches must be numbered 0.. with positions 0..{global_batch_size - 1}, "
                        "each exactly once")
    batches = rows // global_batch_size
    steps = batches if max_steps is None else max_steps
    if steps > batches:
        raise DataError("mix manifest", f"holds {batches} global batches but train.max_steps is {steps}")
    keys = list(zip(ordered["source"].to_list(), ordered["row_id"].to_list()))
    return [keys[s * global_batch_size:(s + 1) * global_batch_size] for s in range(steps)]


def manifest_fingerprint(manifest: pl.DataFrame) -> str:
    """Content hash of the order (not of file bytes), so a re-written manifest still matches."""
    ordered = manifest.sort(["batch", "position"])
    digest = hashlib.sha256()
    for column in ("batch", "position", "row_id"):
        digest.update(ordered[column].cast(pl.Int64).to_numpy().tobytes())
    digest.update("\n".join(ordered["source"].to_list()).encode())
    return digest.hexdigest()


class ExampleStore:
    """Examples by (source, row_id): messages fetched once, tokenized when a step needs them.

    Token ids are not kept between steps: as Python lists they take ~30x the
    memory of the text, and tokenizing a step's rows costs far less than
    training on them.
    """

    def __init__(self, frames: dict[str, pl.DataFrame], tokenizer: Any, max_length: int) -> None:
        self.frames, self.tokenizer, self.max_length = frames, tokenizer, max_length
        self._messages: dict[RowKey, list[dict]] = {}
        self.truncated_examples = 0  # occurrences: a repeated row cut twice counts twice

    def load_rows(self, keys: Iterable[RowKey]) -> None:
        """Fetch the messages of every key up front; fails on a source or row that is not there."""
        wanted: dict[str, set[int]] = {}
        for source, row_id in keys:
            if (source, row_id) not in self._messages:
                wanted.setdefault(source, set()).add(row_id)
        for source, row_ids in wanted.items():
            if source not in self.frames:
                raise DataError("mix manifest", f"names source {source!r}, which has no training frame")
            found = (self.frames[source].lazy().filter(pl.col("_row_id").is_in(sorted(row_ids)))
                     .select("_row_id", "messages").collect())
            for row_id, messages in zip(found["_row_id"].to_list(), found["messages"].to_list()):
                self._messages[(source, row_id)] = messages
            absent = row_ids - set(found["_row_id"].to_list())
            if absent:
                raise DataError(f"source {source}", f"manifest row_ids not in the train split: {sorted(absent)[:5]}",
                                field="_row_id")

    def get(self, key: RowKey) -> TokenizedChat:
        chat = tokenize_chat(self.tokenizer, self._messages[key], self.max_length)
        self.truncated_examples += chat.truncated
        return chat


def tokenize_frame(frame: pl.DataFrame, tokenizer: Any, max_length: int) -> list[TokenizedChat]:
    """Every row of a frame with ``messages``, in frame order (for validation loss)."""
    return [tokenize_chat(tokenizer, messages, max_length) for messages in frame["messages"].to_list()]


@dataclass(frozen=True)
class Shard:
    """This process's part of a global batch when several devices train together."""

    rank: int = 0
    world_size: int = 1

    def take(self, rows: list[RowKey]) -> list[RowKey]:
        # Contiguous slices keep each device's micro-batches in manifest order.
        per_rank = len(rows) // self.world_size
        return rows[self.rank * per_rank:(self.rank + 1) * per_rank]


def micro_batches(rows: list[Any], per_device_batch_size: int) -> list[list[Any]]:
    return [rows[i:i + per_device_batch_size] for i in range(0, len(rows), per_device_batch_size)]
