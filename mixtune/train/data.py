"""The training order: global batches read from the mix manifest, rows tokenized on demand.

The manifest (columns batch, position, source, row_id) IS the order: global
batch b is the rows with batch == b in position order, and nothing here
shuffles. Because the order is a pure function of the manifest, a resumed run
continues at step k with exactly the rows an uninterrupted run would use.

Length: a run config makes ``train.max_length`` at least ``validate.max_length``
(``mixtune.config``), so rows that passed validation are never cut here. A
``TrainConfig`` used on its own may still cut; ``fit_to_length`` then keeps a
cut answer out of the loss (it has lost its end-of-turn token, and learning
it would teach the model not to stop), every cut is counted, and a row left
with no supervised token is an error naming it, never a silent no-op.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np
import polars as pl

from mixtune.train.chat_tokens import IGNORE_INDEX, TokenizedChat, tokenize_chat
from mixtune.errors import DataError

MANIFEST_COLUMNS = ("batch", "position", "source", "row_id")

RowKey = tuple[str, int]  # (source name, _row_id in that source's frame)
log = logging.getLogger(__name__)


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

    def __init__(self, frames: dict[str, pl.DataFrame], tokenizer: Any, max_length: int | None) -> None:
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
        """The row's tokens and labels, fitted to ``max_length``; DataError if no supervised token is left."""
        full = tokenize_chat(self.tokenizer, self._messages[key])
        chat = fit_to_length(full, self.max_length)
        if chat.truncated:
            self.truncated_examples += 1
            if self.truncated_examples == 1:
                log.warning("source %s row_id %d: %d tokens cut to train.max_length %d (%d of %d supervised "
                            "tokens kept); every cut is counted in the train result", key[0], key[1],
                            full.num_tokens, self.max_length, chat.num_supervised, full.num_supervised)
        if chat.num_supervised == 0:  # it would cost a forward pass and teach nothing
            source, row_id = key
            why = (f"{full.num_tokens} tokens; train.max_length {self.max_length} leaves 0 of "
                   f"{full.num_supervised} answer tokens supervised, so the row would train on nothing. "
                   "Make train.max_length at least validate.max_length (a run config does this), or lower "
                   "validate.max_length so validation rejects or truncates such rows") if chat.truncated else \
                "no token of this row is supervised, so it would train on nothing"
            raise DataError(f"source {source}", why, row=row_id, field="messages")
        return chat


def fit_to_length(chat: TokenizedChat, max_length: int | None) -> TokenizedChat:
    """The first ``max_length`` tokens; an answer the cut runs through is not supervised.

    Shapes: ``input_ids`` and ``labels`` both (min(tokens, max_length),). A
    supervised run that the cut ends early has lost its end-of-turn token, so
    its labels become IGNORE_INDEX; complete answers before it keep theirs.
    ``truncated`` is set whenever a token was dropped. None: no limit.
    """
    if max_length is None or chat.num_tokens <= max_length:
        return chat
    input_ids, labels = chat.input_ids[:max_length], chat.labels[:max_length]
    if chat.labels[max_length] != IGNORE_INDEX:  # the cut lands inside an answer
        start = max_length
        while start > 0 and labels[start - 1] != IGNORE_INDEX:
            start -= 1
        labels = labels[:start] + [IGNORE_INDEX] * (max_length - start)
    return dataclasses.replace(chat, input_ids=input_ids, labels=labels, truncated=True)


def tokenize_frame(frame: pl.DataFrame, tokenizer: Any, max_length: int | None) -> list[TokenizedChat]:
    """Every row of a frame with ``messages``, in frame order (for validation loss), fitted to ``max_length``."""
    return [fit_to_length(tokenize_chat(tokenizer, messages), max_length) for messages in frame["messages"].to_list()]


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
