"""The mix manifest: exact batch composition, the prefix bound, repeats, determinism."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mixtune.storage.artifacts import ArtifactStore
from mixtune.mix.manifest import (
    SHARE_SCALE,
    MixRepeatWarning,
    MixSource,
    MixUnsampledWarning,
    build_manifest,
    share_units,
    stratified_counts,
)
from mixtune.mix.plan import MixPlan, plan_mix
from mixtune.mix.spec import MixSpec
from mixtune.sections import StorageConfig

REPO = Path(__file__).resolve().parents[1]
FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def make_source(name: str, category: str, rows: int, seed: int = 0, max_tokens: int = 300,
                first_id: int = 0) -> MixSource:
    rng = np.random.default_rng(seed)
    frame = pl.DataFrame({
        "_row_id": np.arange(first_id, first_id + rows, dtype=np.int64),
        "num_tokens": rng.integers(1, max_tokens + 1, rows),
    })
    return MixSource(name, category, frame, fingerprint=f"sha-{name}-{rows}")


def demo_sources() -> list[MixSource]:
    return [make_source("med", "domain", 400, 1), make_source("gsm", "math", 120, 2),
            make_source("mbpp", "code", 30, 3), make_source("gpt-code", "code", 90, 4)]


def build(spec, sources, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MixRepeatWarning)
        warnings.simplefilter("ignore", MixUnsampledWarning)
        return build_manifest(spec, sources, **kw)


def cumulative_counts(schedule: pl.DataFrame, names: list[str]) -> np.ndarray:
    """(batches, sources) rows of each source after each batch."""
    per_batch = (schedule.with_columns(pl.col("source").cast(pl.Utf8))
                 .group_by("batch", "source").len()
                 .pivot(on="source", index="batch", values="len").sort("batch").fill_null(0))
    cols = [per_batch[n].to_numpy() if n in per_batch.columns else np.zeros(per_batch.height, int)
            for n in names]
    return np.cumsum(np.stack(cols, axis=1), axis=0)


def source_shares(manifest) -> tuple[list[str], np.ndarray]:
    rows = manifest.summary.filter(pl.col("level") == "source").sort("source")
    return rows["source"].to_list(), rows["share"].to_numpy()


# --- the rounding itself, on random integer shares ---


@FAST
@given(st.lists(st.integers(1, 10**6), min_size=1, max_size=12), st.integers(1, 96), st.integers(1, 150))
def test_mix_prefix_within_one_of_exact_share(weights, batch_size, num_batches):
    units = share_units(np.array(weights, dtype=np.float64))
    assert units.sum() == SHARE_SCALE and (units >= 1).all()
    counts = stratified_counts(units, batch_size, num_batches)
    assert (counts >= 0).all() and (counts.sum(axis=1) == batch_size).all()
    held = np.cumsum(counts, axis=0) * SHARE_SCALE  # exact integers: no float slack
    exact = units[None, :] * batch_size * np.arange(1, num_batches + 1)[:, None]
    assert (np.abs(held - exact) < SHARE_SCALE).all()


def test_mix_plain_largest_remainder_of_running_totals_would_take_rows_back():
    """Why the manifest does not round the running totals directly: it can give a negative count."""
    units = share_units(np.array([0.02, 0.49, 0.49]))
    batch_size, previous, went_negative = 7, np.zeros(3, np.int64), False
    for batch_no in range(1, 20):
        floors, remainders = np.divmod(units * batch_size * batch_no, SHARE_SCALE)
        rounded = floors.copy()
        rounded[np.argsort(-remainders, kind="stable")[: batch_size * batch_no - floors.sum()]] += 1
        went_negative |= bool((rounded < previous).any())
        previous = rounded
    assert went_negative
    assert (stratified_counts(units, batch_size, 19) >= 0).all()


# --- whole manifests over random specs ---


@st.composite
def random_mixes(draw):
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    sources = [make_source(f"dom{i}", "domain", int(rng.integers(1, 60)), seed + i)
               for i in range(draw(st.integers(1, 2)))]
    weights = {}
    for c in range(draw(st.integers(0, 3))):
        weights[f"cat{c}"] = draw(st.floats(0, 10, allow_nan=False))
        for j in range(draw(st.integers(1, 2))):
            sources.append(make_source(f"cat{c}-s{j}", f"cat{c}", int(rng.integers(1, 60)), seed + 10 * c + j))
    positive = any(w > 0 for w in weights.values())
    domain_percent = draw(st.floats(1, 99)) if positive and draw(st.booleans()) else 100.0
    spec = MixSpec(domain_percent=domain_percent, weights=weights, seed=draw(st.integers(0, 99)))
    return spec, sources, draw(st.integers(1, 48)), draw(st.integers(1, 30))


@FAST
@given(random_mixes())
def test_mix_every_batch_is_full_and_every_prefix_is_within_one(mix):
    spec, sources, batch_size, steps = mix
    manifest = build(spec, sources, global_batch_size=batch_size, max_steps=steps)
    schedule = manifest.schedule
    assert schedule.height == batch_size * steps
    assert schedule.group_by("batch").agg(pl.col("position").sort()).sort("batch")["position"].to_list() \
        == [list(range(batch_size))] * steps
    names, shares = source_shares(manifest)
    held = cumulative_counts(schedule, names)
    exact = shares[None, :] * batch_size * np.arange(1, steps + 1)[:, None]
    assert (np.abs(held - exact) < 1).all()
    assert build(spec, sources, global_batch_size=batch_size, max_steps=steps).schedule.equals(schedule)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(random_mixes(), st.sampled_from([5, 60, 3000]))
def test_mix_token_units_prefix_within_one_rows_tokens(mix, max_tokens):
    spec, sources, batch_size, steps = mix
    sources = [make_source(s.name, s.category, s.frame.height, i, max_tokens) for i, s in enumerate(sources)]
    manifest = build(spec.model_copy(update={"unit": "tokens"}), sources,
                     global_batch_size=batch_size, max_steps=steps)
    assert manifest.schedule.height == batch_size * steps
    tokens = pl.concat([s.frame.with_columns(pl.lit(s.name).alias("source")) for s in sources])
    per_batch = (manifest.schedule.with_columns(pl.col("source").cast(pl.Utf8))
                 .join(tokens, left_on=["source", "row_id"], right_on=["source", "_row_id"])
                 .group_by("batch", "source").agg(pl.col("num_tokens").sum())
                 .pivot(on="source", index="batch", values="num_tokens").sort("batch").fill_null(0))
    names, shares = source_shares(manifest)
    held = np.cumsum(np.stack([per_batch[n].to_numpy() if n in per_batch.columns
                               else np.zeros(steps, int) for n in names], axis=1), axis=0)
    longest_row = max(int(s.frame["num_tokens"].max()) for s in sources)
    exact = shares[None, :] * held.sum(axis=1, keepdims=True)
    assert (np.abs(held - exact) <= longest_row).all()


# --- repeats ---


def test_mix_small_source_repeats_in_whole_seeded_epochs_and_warns():
    spec = MixSpec(domain_percent=50, weights={"code": 1})
    sources = [make_source("dom", "domain", 500), make_source("tiny", "code", 10, first_id=1000)]
    with pytest.warns(MixRepeatWarning, match=r"source 'tiny' \(category 'code'\) is repeated 6.4 times"):
        manifest = build_manifest(spec, sources, global_batch_size=16, max_steps=8)
    tiny = manifest.schedule.filter(pl.col("source") == "tiny")["row_id"].to_list()
    assert len(tiny) == 64 and len(manifest.warnings) == 1
    epochs = [tiny[i:i + 10] for i in range(0, 60, 10)]
    assert all(sorted(e) == list(range(1000, 1010)) for e in epochs)  # each epoch: every row once
    assert len(set(tiny[60:])) == 4  # the partial epoch: distinct rows
    assert len({tuple(e) for e in epochs}) > 1  # epochs are reshuffled, not replayed
    row = manifest.summary.filter(pl.col("source") == "tiny").row(0, named=True)
    assert row["repeat_factor"] == 6.4 and row["realized_samples"] == 64 and row["rows"] == 10


def test_mix_repeat_at_the_limit_does_not_warn():
    spec = MixSpec(domain_percent=50, weights={"code": 1}, warn_repeat_factor=6.4)
    sources = [make_source("dom", "domain", 500), make_source("tiny", "code", 10)]
    with warnings.catch_warnings():
        warnings.simplefilter("error", MixRepeatWarning)
        assert build_manifest(spec, sources, global_batch_size=16, max_steps=8).warnings == []


# --- a part of the mix that gets nothing ---


def test_category_with_a_tiny_weight_that_gets_no_sample_warns_in_the_plan():
    spec = MixSpec(domain_percent=50, weights={"math": 1, "code": 0.001})
    sources = [make_source("dom", "domain", 500), make_source("gsm", "math", 500, first_id=1000),
               make_source("mbpp", "code", 500, first_id=2000)]
    with pytest.warns(MixUnsampledWarning) as caught:
        plan = plan_mix(spec, sources, global_batch_size=16, max_steps=8)
    assert plan.frame.filter(pl.col("source") == "mbpp")["realized_samples"].to_list() == [0]
    message = ("category 'code' (weight 0.001) gets no sample in this run of 8 batches x 16 = 128 samples: "
               "its planned share is 0.06 samples; raise its weight, train longer, or leave it out of the mix")
    assert [str(w.message) for w in caught] == [message] and plan.warnings == [message]
    assert f"warnings:\n  - {message}" in plan.to_text()
    # a longer run gives it its share: no warning
    with warnings.catch_warnings():
        warnings.simplefilter("error", MixUnsampledWarning)
        warnings.simplefilter("ignore", MixRepeatWarning)
        longer = build_manifest(spec, sources, global_batch_size=16, max_steps=800)
    assert longer.summary.filter(pl.col("source") == "mbpp")["realized_samples"].item() > 0


def test_source_that_gets_no_sample_beside_a_large_one_in_its_category_warns():
    spec = MixSpec(domain_percent=50, weights={"code": 1})
    sources = [make_source("dom", "domain", 500), make_source("big", "code", 100_000, first_id=1000),
               make_source("small", "code", 10, first_id=200_000)]
    with pytest.warns(MixUnsampledWarning, match=r"source 'small' \(category 'code'\) gets no sample"):
        manifest = build_manifest(spec, sources, global_batch_size=16, max_steps=4)
    assert len(manifest.warnings) == 1


def test_tiny_domain_share_that_gets_no_sample_warns():
    spec = MixSpec(domain_percent=0.01, weights={"code": 1})
    sources = [make_source("dom", "domain", 500), make_source("code", "code", 500, first_id=1000)]
    with pytest.warns(MixUnsampledWarning, match=r"the domain data \(domain_percent 0.01\) gets no sample .* "
                                                 r"raise domain_percent"):
        build_manifest(spec, sources, global_batch_size=16, max_steps=4)


# --- determinism ---


def manifest_bytes(manifest, folder: Path) -> bytes:
    store = ArtifactStore(StorageConfig(root=str(folder)))
    store.write_table(store.uri("m"), "schedule", manifest.schedule)
    return (folder / "m" / "schedule" / "part-00000.parquet").read_bytes()


def test_mix_same_inputs_same_parquet_bytes_even_in_a_fresh_process(tmp_path):
    spec = MixSpec(domain_percent=70, weights={"math": 2, "code": 1}, seed=3)
    first = manifest_bytes(build(spec, demo_sources(), global_batch_size=24, max_steps=40), tmp_path / "a")
    second = manifest_bytes(build(spec, demo_sources(), global_batch_size=24, max_steps=40), tmp_path / "b")
    assert first == second
    script = (
        "import sys; sys.path.insert(0, sys.argv[1]); import hashlib, pathlib\n"
        "from test_manifest import build, demo_sources, manifest_bytes\n"
        "from mixtune.mix.spec import MixSpec\n"
        "spec = MixSpec(domain_percent=70, weights={'math': 2, 'code': 1}, seed=3)\n"
        "m = build(spec, demo_sources(), global_batch_size=24, max_steps=40)\n"
        "print(hashlib.sha256(manifest_bytes(m, pathlib.Path(sys.argv[2]))).hexdigest())\n"
    )
    out = subprocess.run([sys.executable, "-c", script, str(REPO / "tests"), str(tmp_path / "c")],
                         capture_output=True, text=True, check=True, env=os.environ.copy())
    assert out.stdout.strip() == hashlib.sha256(first).hexdigest()


def test_mix_seed_and_fingerprint_change_only_what_they_should():
    spec = MixSpec(domain_percent=70, weights={"math": 2, "code": 1})
    base = build(spec, demo_sources(), global_batch_size=24, max_steps=10).schedule
    reseeded = build(spec.model_copy(update={"seed": 1}), demo_sources(), global_batch_size=24, max_steps=10)
    assert not reseeded.schedule["row_id"].equals(base["row_id"])
    assert reseeded.schedule["source"].equals(base["source"])  # composition does not depend on seed
    changed = [s if s.name != "gsm" else MixSource(s.name, s.category, s.frame, "new-data")
               for s in demo_sources()]
    refreshed = build(spec, changed, global_batch_size=24, max_steps=10).schedule
    differs = refreshed.filter(pl.col("row_id") != base["row_id"])["source"].unique().to_list()
    assert differs == ["gsm"]


def test_mix_longer_run_extends_the_manifest_without_changing_its_prefix():
    spec = MixSpec(domain_percent=70, weights={"math": 2, "code": 1})
    for unit in ("samples", "tokens"):
        unit_spec = spec.model_copy(update={"unit": unit})
        short = build(unit_spec, demo_sources(), global_batch_size=16, max_steps=30).schedule
        long = build(unit_spec, demo_sources(), global_batch_size=16, max_steps=70).schedule
        assert long.head(short.height).equals(short)


def test_mix_input_row_order_does_not_matter():
    spec = MixSpec(domain_percent=70, weights={"math": 2, "code": 1})
    shuffled = [MixSource(s.name, s.category, s.frame.sample(fraction=1.0, shuffle=True, seed=5),
                          s.fingerprint) for s in demo_sources()]
    assert build(spec, shuffled, global_batch_size=16, max_steps=12).schedule.equals(
        build(spec, demo_sources(), global_batch_size=16, max_steps=12).schedule)


# --- shape of the output ---


def test_mix_schedule_columns_and_row_ids_come_from_each_source():
    manifest = build(MixSpec(domain_percent=70, weights={"math": 1}),
                     [make_source("dom", "domain", 50, first_id=7000), make_source("gsm", "math", 40)],
                     global_batch_size=8, max_steps=5)
    assert manifest.schedule.schema == pl.Schema({
        "batch": pl.Int64, "position": pl.Int64, "source": pl.Enum(["dom", "gsm"]), "row_id": pl.Int64})
    dom = manifest.schedule.filter(pl.col("source") == "dom")["row_id"]
    assert dom.min() >= 7000 and dom.n_unique() == dom.len()


def test_mix_batch_interleaves_sources_so_any_half_carries_the_mix():
    spec = MixSpec(domain_percent=25, weights={"a": 1, "b": 1, "c": 1})
    sources = [make_source(n, c, 100) for n, c in (("d", "domain"), ("sa", "a"), ("sb", "b"), ("sc", "c"))]
    schedule = build(spec, sources, global_batch_size=8, max_steps=3).schedule
    for half in schedule.with_columns((pl.col("position") // 4).alias("half")).partition_by("batch", "half"):
        assert sorted(half["source"].cast(pl.Utf8).to_list()) == ["d", "sa", "sb", "sc"]


def test_mix_domain_only_control_run_ignores_category_sources():
    manifest = build(MixSpec(domain_percent=100, weights={"math": 5}), demo_sources(),
                     global_batch_size=8, max_steps=4)
    assert manifest.schedule["source"].cast(pl.Utf8).unique().to_list() == ["med"]
    assert "weights are ignored" in manifest.totals["note"]


def test_mix_epochs_cover_the_domain_rows():
    spec = MixSpec(domain_percent=80, weights={"math": 1})
    manifest = build(spec, demo_sources(), global_batch_size=32, epochs=2)
    domain = manifest.summary.filter(pl.col("source") == "med").row(0, named=True)
    assert manifest.totals["batches"] == 32  # ceil(2 epochs x 400 rows / (0.8 x 32))
    assert domain["realized_samples"] >= 800 and domain["repeat_factor"] >= 2
    tokens = build(spec.model_copy(update={"unit": "tokens"}), demo_sources(), global_batch_size=32, epochs=2)
    med = tokens.summary.filter(pl.col("source") == "med").row(0, named=True)
    assert med["realized_tokens"] >= 2 * int(demo_sources()[0].frame["num_tokens"].sum())


@pytest.mark.parametrize("kwargs, message", [
    ({"max_steps": 3, "epochs": 1}, "exactly one of max_steps or epochs"),
    ({}, "exactly one of max_steps or epochs"),
    ({"max_steps": 0}, "max_steps must be >= 1"),
])
def test_mix_run_size_must_be_given_once(kwargs, message):
    with pytest.raises(ValueError, match=message):
        build_manifest(MixSpec(), demo_sources()[:1], global_batch_size=8, **kwargs)


def test_mix_bad_source_tables_are_named():
    bad = MixSource("med", "domain", pl.DataFrame({"_row_id": [1, 2]}), "x")
    with pytest.raises(ValueError, match=r"source 'med': missing column\(s\) \['num_tokens'\]"):
        build_manifest(MixSpec(), [bad], global_batch_size=4, max_steps=1)
    twice = MixSource("med", "domain", pl.DataFrame({"_row_id": [1, 1], "num_tokens": [3, 4]}), "x")
    with pytest.raises(ValueError, match="source 'med': repeated _row_id"):
        build_manifest(MixSpec(), [twice], global_batch_size=4, max_steps=1)


# --- the summary and the plan ---


def test_mix_summary_matches_the_schedule_and_adds_up():
    spec = MixSpec(domain_percent=70, weights={"math": 2, "code": 1})
    manifest = build(spec, demo_sources(), global_batch_size=24, max_steps=20)
    summary = manifest.summary
    counted = manifest.schedule.with_columns(pl.col("source").cast(pl.Utf8)).group_by("source").len()
    per_source = summary.filter(pl.col("level") == "source").join(counted, on="source")
    assert (per_source["realized_samples"] == per_source["len"]).all()
    code = summary.filter((pl.col("level") == "category") & (pl.col("category") == "code")).row(0, named=True)
    members = summary.filter((pl.col("level") == "source") & (pl.col("category") == "code"))
    assert code["realized_samples"] == members["realized_samples"].sum() and code["rows"] == 120
    assert code["share"] == pytest.approx(0.3 / 3)
    total = summary.filter(pl.col("level") == "total").row(0, named=True)
    assert total["realized_samples"] == 480 and total["share"] == pytest.approx(1.0)
    assert summary["level"].to_list()[:2] == ["category", "source"]  # domain first, header then members


def test_mix_plan_prints_text_and_json_from_the_same_numbers():
    spec = MixSpec(domain_percent=50, weights={"code": 1})
    sources = [make_source("dom", "domain", 500), make_source("tiny", "code", 10)]
    with pytest.warns(MixRepeatWarning):
        plan = plan_mix(spec, sources, global_batch_size=16, max_steps=8)
    text = plan.to_text()
    assert "mix: 50% domain; the rest by category: code 100.0%" in text
    assert "8 batches x 16 = 128 samples" in text and "  tiny" in text and "warnings:" in text
    data = json.loads(plan.to_json())
    assert data["totals"]["samples"] == 128 and data["warnings"] == plan.warnings
    assert [r["source"] for r in data["rows"] if r["level"] == "source"] == ["dom", "tiny"]
    with pytest.warns(MixRepeatWarning):
        again = MixPlan.from_manifest(build_manifest(spec, sources, global_batch_size=16, max_steps=8))
    assert again.frame.equals(plan.frame)
