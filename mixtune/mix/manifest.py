"""The mix-manifest stage: the exact training order, batch by batch.

Input: every taking-part source's train rows (``_row_id``, ``num_tokens``) with
its category and data fingerprint, a ``MixSpec``, and the run's size (max_steps
x global batch, or epochs over the domain rows). Output: the schedule, one row
per training sample (``batch``, ``position``, ``source``, ``row_id``), plus the
realized mix (``mixtune.mix.summary.summarize``). The semantics are on ``MixSpec``.

How the rounding keeps every prefix exact. Shares are integers out of
``SHARE_SCALE`` so the arithmetic is exact. In sample units source i is owed
q_i = share_i x batch_size rows per batch; after b batches it must hold
floor(q_i b) or ceil(q_i b) rows (within 1 of its exact share) and may never
give a row back. Each row k of source i is thus a job that may run from batch
floor((k-1)/q_i)+1 and must run by batch ceil(k/q_i); every batch runs exactly
batch_size jobs, picking earliest deadline first (ties: largest remainder).
Earliest-deadline-first is optimal for unit jobs with release times and
deadlines, and a schedule within 1 at every prefix exists (Tijdeman 1980, the
"chairman assignment problem"), so it never misses: no Alabama paradox, which
plain largest-remainder rounding of the running totals can produce. The loop
runs once per batch over the sources (numpy), not once per sample.

In token units the same idea runs sample by sample on token time (WF2Q,
Bennett & Zhang 1996): among sources whose next row would already have started
under exact proportional sharing, take the one that would finish first. Each
source's tokens then stay within one row's tokens of its exact share.

Order within a source: whole seeded epochs, each a permutation drawn from a
generator seeded by (seed, source name, data fingerprint); a longer run extends
the manifest without changing its prefix.
"""

from __future__ import annotations

import hashlib
import heapq
import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import polars as pl

from mixtune.mix.summary import MixRepeatWarning, MixUnsampledWarning, summarize  # noqa: F401 (re-exported)
from mixtune.mix.spec import DOMAIN, MixSpec, source_fractions

SHARE_SCALE = 1 << 30  # shares are integers out of this; products stay well inside int64
MAX_PLANNED_SAMPLES = 1 << 31  # keeps every product below inside int64
_BLOCK_BATCHES = 4096  # batches whose floors are computed at once (bounds memory)
_EPOCH_DRAW_ROWS = 1 << 16  # a small source draws this many rows of epochs per call


@dataclass(frozen=True)
class MixSource:
    """One source's train rows as the mix sees them."""

    name: str
    category: str  # a catalog category, or "domain"
    frame: pl.DataFrame  # `_row_id` (Int64) and `num_tokens` (Int64), one row per train row
    fingerprint: str  # content fingerprint of the artifact the rows come from


@dataclass
class MixManifest:
    """The training order and what it realizes."""

    schedule: pl.DataFrame  # batch, position, source (Enum of source names), row_id
    summary: pl.DataFrame  # per source and per category: planned vs realized
    warnings: list[str]
    totals: dict[str, Any] = field(default_factory=dict)


def build_manifest(
    spec: MixSpec,
    sources: Sequence[MixSource],
    *,
    global_batch_size: int,
    max_steps: int | None = None,
    epochs: float | None = None,
) -> MixManifest:
    """Build the schedule: exactly ``global_batch_size`` rows per batch, in training order.

    Give ``max_steps`` (planned samples = max_steps x global_batch_size) or
    ``epochs``: enough batches that the domain sources together get at
    least that many passes over their train rows (in token units: their tokens).
    Sources of categories the spec leaves out are ignored. Raises ValueError
    naming the source or category at fault; warns (MixRepeatWarning, and in
    ``.warnings``) for each source repeated more than ``spec.warn_repeat_factor``,
    and (MixUnsampledWarning) for a category or source asked for that gets no sample.
    """
    if global_batch_size < 1:
        raise ValueError(f"global_batch_size must be >= 1, got {global_batch_size}")
    if (max_steps is None) == (epochs is None):
        raise ValueError("give exactly one of max_steps or epochs")
    if (max_steps is not None and max_steps < 1) or (epochs is not None and not epochs > 0):
        raise ValueError(f"max_steps must be >= 1 and epochs > 0, got {max_steps=}, {epochs=}")
    tables = {s.name: _checked_table(s) for s in sources}
    if len(tables) != len(sources):
        raise ValueError("source names must be unique")
    by_name = {s.name: s for s in sources}
    # A source's size in the mix's unit: its share within its group follows it.
    sizes = {s.name: (s.category, float(tables[s.name][1].sum() if spec.unit == "tokens"
                                        else len(tables[s.name][0]))) for s in sources}
    fractions = source_fractions(spec, sizes)
    names = list(fractions)  # sorted by name: the order every tie is broken in
    units = share_units(np.array([fractions[n] for n in names]))
    rngs = [source_rng(spec.seed, n, by_name[n].fingerprint) for n in names]
    row_ids = [tables[n][0] for n in names]
    tokens = [tables[n][1] for n in names]
    is_domain = np.array([by_name[n].category == DOMAIN for n in names])

    if spec.unit == "samples":
        if max_steps is None:  # each source gets at least floor(its exact share): one row of slack each
            domain_rows = sum(len(r) for r, d in zip(row_ids, is_domain) if d)
            domain_share = units[is_domain].sum() / SHARE_SCALE
            max_steps = math.ceil((epochs * domain_rows + is_domain.sum())
                                  / (domain_share * global_batch_size))
        _check_size(max_steps, global_batch_size)
        counts = stratified_counts(units, global_batch_size, max_steps)
        positions = [source_order(len(r), int(c), rng) for r, c, rng in zip(row_ids, counts.sum(0), rngs)]
    else:
        domain_target = None
        if epochs is not None:
            domain_target = epochs * sum(int(t.sum()) for t, d in zip(tokens, is_domain) if d)
        slot_source, positions = token_order(
            units, tokens, rngs, global_batch_size, max_steps, domain_target, is_domain
        )
    realized_tokens = [int(t[p].sum()) for t, p in zip(tokens, positions)]
    taken = [r[p] for r, p in zip(row_ids, positions)]  # each source's row ids in order of use
    del positions
    if spec.unit == "samples":
        slot_source, row_id = _interleave(counts, taken)
    else:
        row_id = _row_ids_of_slots(slot_source, taken)
    schedule = _schedule_frame(names, slot_source, row_id, global_batch_size)
    summary, notes, totals = summarize(
        spec=spec, names=names, categories=[by_name[n].category for n in names],
        fractions=units / SHARE_SCALE, rows=[len(r) for r in row_ids],
        realized_samples=[len(t) for t in taken], realized_tokens=realized_tokens,
        available_tokens=[int(t.sum()) for t in tokens],
        global_batch_size=global_batch_size,
    )
    for category, note in notes:
        warnings.warn(note, category, stacklevel=2)
    return MixManifest(schedule=schedule, summary=summary, warnings=[n for _, n in notes], totals=totals)


def _checked_table(source: MixSource) -> tuple[np.ndarray, np.ndarray]:
    """Row ids and token counts sorted by row id, so the input's row order never matters."""
    missing = {"_row_id", "num_tokens"} - set(source.frame.columns)
    if missing:
        raise ValueError(f"source {source.name!r}: missing column(s) {sorted(missing)}; "
                         f"has {source.frame.columns}")
    if source.frame.select(pl.sum_horizontal(pl.col("_row_id", "num_tokens").null_count())).item():
        raise ValueError(f"source {source.name!r}: null _row_id or num_tokens")
    row_ids = source.frame["_row_id"].cast(pl.Int64).to_numpy()
    tokens = source.frame["num_tokens"].cast(pl.Int64).to_numpy()
    steps = np.diff(row_ids)
    if (steps <= 0).any():
        order = np.argsort(row_ids, kind="stable")
        row_ids, tokens = row_ids[order], tokens[order]
        if (np.diff(row_ids) == 0).any():
            raise ValueError(f"source {source.name!r}: repeated _row_id")
    if (tokens < 0).any():
        raise ValueError(f"source {source.name!r}: negative num_tokens")
    return row_ids, tokens


def _check_size(steps: int, batch_size: int) -> None:
    if steps * batch_size > MAX_PLANNED_SAMPLES:
        raise ValueError(f"{steps} x {batch_size} samples is more than one manifest holds "
                         f"({MAX_PLANNED_SAMPLES}); split the run")


def share_units(fractions: np.ndarray) -> np.ndarray:
    """Fractions as integers summing to SHARE_SCALE exactly (largest remainder), each >= 1."""
    exact = np.asarray(fractions, dtype=np.float64) * SHARE_SCALE / fractions.sum()
    units = np.floor(exact).astype(np.int64)
    short = SHARE_SCALE - int(units.sum())
    order = np.lexsort((np.arange(len(units)), -(exact - units)))  # largest remainder, then index
    units[order[:short]] += 1
    while (units < 1).any():  # a share under 1e-9 still gets its row now and then
        units[np.argmin(units)] += 1
        units[np.argmax(units)] -= 1
    return units


def stratified_counts(units: np.ndarray, batch_size: int, num_batches: int) -> np.ndarray:
    """Rows per batch per source, (num_batches, sources): each row sums to batch_size.

    After any b batches source i holds floor(q_i b) or ceil(q_i b) rows, q_i =
    units_i x batch_size / SHARE_SCALE: earliest deadline first (module docstring).
    Everything not depending on earlier choices is computed a block of batches
    at a time; the choice itself walks each batch's priority order on bitmasks.
    """
    units = np.asarray(units, dtype=np.int64)
    num_sources = len(units)
    per_batch = units * batch_size  # q_i, scaled by SHARE_SCALE
    counts = np.empty((num_batches, num_sources), dtype=np.int64)
    held = np.zeros(num_sources, dtype=np.int64)  # rows per source after the previous batch
    floor_prev = np.zeros(num_sources, dtype=np.int64)
    ahead = 0  # bitmask: sources holding ceil, not floor, of their exact share
    for start in range(0, num_batches, _BLOCK_BATCHES):
        batch_no = np.arange(start + 1, min(start + _BLOCK_BATCHES, num_batches) + 1, dtype=np.int64)
        floors, remainders = np.divmod(per_batch[None, :] * batch_no[:, None], SHARE_SCALE)
        spare = (batch_size * batch_no - floors.sum(axis=1)).tolist()  # rows left after the floors
        unchanged = _masks(floors == np.vstack([floor_prev, floors[:-1]]))
        fractional = _masks(remainders > 0)
        # Deadline of each source's next row: the first batch whose floor includes it.
        deadline = ((floors + 1) * SHARE_SCALE + per_batch - 1) // per_batch
        # Capped past any run's end (tiny shares), independently of num_batches: prefix-stable.
        np.minimum(deadline, MAX_PLANNED_SAMPLES + 1, out=deadline)
        priority = np.argsort(deadline * SHARE_SCALE + (SHARE_SCALE - 1 - remainders), axis=1,
                              kind="stable").tolist()  # earliest deadline, then largest remainder
        chosen = []
        for t, order in enumerate(priority):
            ahead &= unchanged[t]  # a row given early cannot be taken back
            need = spare[t] - ahead.bit_count()
            free = fractional[t] & ~ahead
            if need < 0 or need > free.bit_count():
                raise AssertionError(f"stratified rounding infeasible at batch {batch_no[t]}")
            for i in order:
                if not need:
                    break
                if free >> i & 1:
                    ahead |= 1 << i
                    need -= 1
            chosen.append(ahead)
        now = floors + _bits(chosen, num_sources)
        counts[start:start + len(batch_no)] = np.diff(np.vstack([held, now]), axis=0)
        held, floor_prev = now[-1], floors[-1]
    return counts


def _masks(flags: np.ndarray) -> list[int]:
    """(batches, sources) booleans -> one int bitmask per batch (bit i = source i)."""
    if flags.shape[1] <= 62:
        return (flags.astype(np.int64) << np.arange(flags.shape[1], dtype=np.int64)).sum(axis=1).tolist()
    return [sum(1 << int(i) for i in np.flatnonzero(row)) for row in flags]


def _bits(masks: list[int], num_sources: int) -> np.ndarray:
    """One bitmask per batch -> (batches, sources) 0/1."""
    if num_sources <= 62:
        return (np.array(masks, dtype=np.int64)[:, None] >> np.arange(num_sources, dtype=np.int64)) & 1
    return np.array([[m >> i & 1 for i in range(num_sources)] for m in masks], dtype=np.int64)


def source_rng(seed: int, name: str, fingerprint: str) -> np.random.Generator:
    """The generator for one source's row order: same seed, name and data, same order."""
    digest = hashlib.sha256(f"mixtune-mix\0{seed}\0{name}\0{fingerprint}".encode()).digest()
    return np.random.Generator(np.random.PCG64(int.from_bytes(digest[:16], "little")))


def source_order(num_rows: int, count: int, rng: np.random.Generator) -> np.ndarray:
    """Positions of ``count`` rows: whole seeded epochs, then a seeded partial epoch."""
    parts, have = [], 0
    for epoch in _epochs(num_rows, rng):
        if have >= count:
            break
        parts.append(epoch[: count - have])
        have += len(parts[-1])
    return np.concatenate(parts) if parts else np.empty(0, dtype=np.int64)


def _epochs(num_rows: int, rng: np.random.Generator):
    """Endless seeded permutations of range(num_rows), one per epoch.

    Small sources draw many epochs per call (a per-call cost would dominate);
    how many depends on num_rows only, so the sequence never depends on how
    much of it is used: a longer run extends the manifest, its prefix unchanged.
    """
    per_draw = max(1, _EPOCH_DRAW_ROWS // num_rows)
    while True:
        if per_draw == 1:
            yield rng.permutation(num_rows)
        else:
            yield from rng.permuted(np.broadcast_to(np.arange(num_rows), (per_draw, num_rows)), axis=1)


def _interleave(counts: np.ndarray, taken: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Sample units: per sample in training order, its source index and row id.

    Within a batch the sources are interleaved by when each row is due, (j +
    0.5) / count for the j-th of a source's count rows in that batch, so any
    contiguous slice of a batch (a micro-batch) carries the batch's mix.
    """
    num_batches, num_sources = counts.shape
    flat = counts.reshape(-1)  # one group per (batch, source), in that order
    group_start = np.cumsum(flat) - flat
    within = np.arange(int(flat.sum()), dtype=np.int64) - np.repeat(group_start, flat)
    due = within.astype(np.float64)
    due += 0.5
    due /= np.repeat(flat.astype(np.float64), flat)
    due += np.repeat(np.arange(num_batches, dtype=np.float64), counts.sum(axis=1))
    order = np.argsort(due, kind="stable")  # rows arrive batch by batch in runs: fast; ties by source
    del due
    # Index of each sample in the concatenation of every source's used rows.
    offsets = np.cumsum([0] + [len(t) for t in taken[:-1]]).astype(np.int64)
    used_before = (np.cumsum(counts, axis=0) - counts + offsets[None, :]).reshape(-1)
    within += np.repeat(used_before, flat)
    slot_source = np.repeat(np.tile(np.arange(num_sources, dtype=np.uint32), num_batches), flat)[order]
    row_id = np.concatenate(taken)[within[order]]
    return slot_source, row_id


def _row_ids_of_slots(slot_source: np.ndarray, taken: list[np.ndarray]) -> np.ndarray:
    """Token units: the row id of each sample, each source's rows used in order."""
    row_id = np.empty(len(slot_source), dtype=np.int64)
    for i, rows in enumerate(taken):
        row_id[slot_source == i] = rows
    return row_id


def token_order(
    units: np.ndarray,
    tokens: list[np.ndarray],
    rngs: list[np.random.Generator],
    batch_size: int,
    max_steps: int | None,
    domain_target_tokens: float | None,
    is_domain: np.ndarray,
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Token units, sample by sample (WF2Q on token time): each sample's source, each source's rows.

    A source is eligible once its next row would already have started under
    exact sharing (served x SCALE <= share x total, exact integers); among the
    eligible, the row that would finish first goes next. The loop is plain
    Python (about a microsecond a sample), so it is written flat.
    """
    shares = [int(u) for u in units]
    epoch_iters = [_epochs(len(t), rng) for t, rng in zip(tokens, rngs)]
    used = [[next(it)] for it in epoch_iters]  # each source's epochs drawn so far
    lengths = [tokens[i][used[i][0]].tolist() for i in range(len(shares))]  # current epoch's tokens
    cursor = [0] * len(shares)
    taken = [0] * len(shares)
    served = [0] * len(shares)  # tokens per source so far
    total = 0
    scale = SHARE_SCALE
    eligible = [(lengths[i][0] * scale / shares[i], i) for i in range(len(shares))]  # (finish, i)
    heapq.heapify(eligible)
    waiting: list[tuple[float, int]] = []  # (start, i)
    push, pop = heapq.heappush, heapq.heappop
    slot_source: list[int] = []
    emit = slot_source.append
    domain = [i for i in range(len(shares)) if is_domain[i]]
    steps = 0
    while max_steps is None or steps < max_steps:
        for _ in range(batch_size):
            while waiting and served[waiting[0][1]] * scale <= shares[waiting[0][1]] * total:
                i = pop(waiting)[1]
                push(eligible, ((served[i] + lengths[i][cursor[i]]) * scale / shares[i], i))
            i = pop(eligible)[1]
            emit(i)
            row_tokens = lengths[i][cursor[i]]
            served[i] += row_tokens
            total += row_tokens
            taken[i] += 1
            cursor[i] += 1
            if cursor[i] == len(lengths[i]):  # next epoch: a fresh seeded permutation
                used[i].append(next(epoch_iters[i]))
                lengths[i] = tokens[i][used[i][-1]].tolist()
                cursor[i] = 0
            if served[i] * scale <= shares[i] * total:
                push(eligible, ((served[i] + lengths[i][cursor[i]]) * scale / shares[i], i))
            else:
                push(waiting, (served[i] * scale / shares[i], i))
        steps += 1
        _check_size(steps, batch_size)
        if domain_target_tokens is not None and sum(served[i] for i in domain) >= domain_target_tokens:
            break
    positions = [np.concatenate(u)[:n] for u, n in zip(used, taken)]
    return np.array(slot_source, dtype=np.uint32), positions


def _schedule_frame(
    names: list[str], slot_source: np.ndarray, row_id: np.ndarray, batch_size: int
) -> pl.DataFrame:
    """The schedule table. ``source`` is an Enum over the sorted names: 1 byte a row up to 255
    sources (Utf8 would take ~10x that), and fixed codes, so the bytes never depend on a
    process-wide string cache."""
    index = np.arange(len(slot_source), dtype=np.int64)
    codes = pl.Series(slot_source.astype(np.uint32, copy=False))
    return pl.DataFrame({
        "batch": index // batch_size,
        "position": index % batch_size,
        "source": pl.Series(names, dtype=pl.Enum(names)).gather(codes),
        "row_id": row_id.astype(np.int64, copy=False),
    })
