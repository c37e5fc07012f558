"""Mix-manifest benchmark: a 10M-sample stratified manifest over 20 sources.

    .venv/bin/python benchmarks/mix_bench.py                    # the issue's size
    .venv/bin/python benchmarks/mix_bench.py --samples 1000000  # quicker

Goal (2-core machine): under 10 s and under 1 GB. Peak memory is the growth of
the process's max RSS while building (numpy and polars buffers both count).
For contrast, the usual approach (draw each sample's source at random with the
mix's probabilities, as weighted dataset interleaving does) is timed on the
same shares, and both are scored by the worst prefix deviation: rows by which
a source's running count strays from its exact share at a batch boundary.
The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
import warnings

import numpy as np
import polars as pl

from mixtune.mix.manifest import SHARE_SCALE, MixRepeatWarning, MixSource, build_manifest
from mixtune.mix.spec import MixSpec

# --- knobs ---
SAMPLES = 10_000_000
NUM_SOURCES = 20  # 2 domain sources + 18 category sources in 9 categories
GLOBAL_BATCH = 1024
DOMAIN_PERCENT = 60.0
TOKEN_UNIT_SAMPLES = 200_000  # token units run sample by sample: timed on a smaller run
SEED = 0


def make_sources(rng: np.random.Generator) -> list[MixSource]:
    """Sources from 2k to 400k rows with 10..2000 tokens a row: some repeat, some are subsampled."""
    sources = []
    for i in range(NUM_SOURCES):
        rows = int(rng.integers(2_000, 400_000))
        frame = pl.DataFrame({"_row_id": np.arange(rows, dtype=np.int64),
                              "num_tokens": rng.integers(10, 2_000, rows)})
        category = "domain" if i < 2 else f"cat{i % 9}"
        sources.append(MixSource(f"src{i:02d}", category, frame, fingerprint=f"bench-{i}"))
    return sources


def max_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def worst_prefix_deviation(source_of_slot: np.ndarray, shares: np.ndarray, batch_size: int) -> float:
    """Largest |running count - exact share| over sources and batch boundaries, in rows."""
    num_batches = len(source_of_slot) // batch_size
    batch = np.arange(num_batches * batch_size) // batch_size
    counts = np.bincount(batch * len(shares) + source_of_slot[: len(batch)],
                         minlength=num_batches * len(shares)).reshape(num_batches, len(shares))
    exact = shares[None, :] * batch_size * np.arange(1, num_batches + 1)[:, None]
    return float(np.abs(np.cumsum(counts, axis=0) - exact).max())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=SAMPLES)
    parser.add_argument("--batch-size", type=int, default=GLOBAL_BATCH)
    args = parser.parse_args()
    rng = np.random.default_rng(SEED)
    sources = make_sources(rng)
    spec = MixSpec(domain_percent=DOMAIN_PERCENT, weights={f"cat{k}": k + 1 for k in range(9)}, seed=SEED)
    steps = -(-args.samples // args.batch_size)  # whole batches, at least --samples
    print(f"{NUM_SOURCES} sources, {sum(s.frame.height for s in sources):,} rows; "
          f"{steps:,} batches x {args.batch_size} = {steps * args.batch_size:,} samples")

    warnings.simplefilter("ignore", MixRepeatWarning)  # the small sources do repeat; that is the point
    rss_before = max_rss_mb()
    start = time.perf_counter()
    manifest = build_manifest(spec, sources, global_batch_size=args.batch_size, max_steps=steps)
    seconds = time.perf_counter() - start
    peak_mb = max_rss_mb() - rss_before
    names = manifest.summary.filter(pl.col("level") == "source").sort("source")
    shares = names["share"].to_numpy()
    codes = manifest.schedule["source"].to_physical().to_numpy().astype(np.int64)
    deviation = worst_prefix_deviation(codes, shares, args.batch_size)
    print(f"mixtune manifest: {seconds:.2f} s, peak +{peak_mb:.0f} MB, "
          f"{manifest.schedule.height / seconds / 1e6:.2f} M samples/s, worst prefix deviation "
          f"{deviation:.3f} rows")

    start = time.perf_counter()
    drawn = np.random.default_rng(SEED).choice(len(shares), size=steps * args.batch_size, p=shares)
    baseline_seconds = time.perf_counter() - start
    baseline_deviation = worst_prefix_deviation(drawn, shares, args.batch_size)
    print(f"random draw per sample (source only, no row order): {baseline_seconds:.2f} s, worst "
          f"prefix deviation {baseline_deviation:.1f} rows")

    token_steps = max(1, TOKEN_UNIT_SAMPLES // args.batch_size)
    start = time.perf_counter()
    build_manifest(spec.model_copy(update={"unit": "tokens"}), sources,
                   global_batch_size=args.batch_size, max_steps=token_steps)
    token_seconds = time.perf_counter() - start
    print(f"token units: {token_steps * args.batch_size:,} samples in {token_seconds:.2f} s "
          f"(sample by sample; about {token_seconds / (token_steps * args.batch_size) * 1e6:.1f} s "
          "per million)")
    print(json.dumps({
        "bench": "mix", "samples": manifest.schedule.height, "sources": NUM_SOURCES,
        "batch_size": args.batch_size, "seconds": round(seconds, 3), "peak_memory_mb": round(peak_mb, 1),
        "max_prefix_deviation_rows": round(deviation, 4),
        "baseline_max_prefix_deviation_rows": round(baseline_deviation, 1),
        "token_unit_seconds_per_million": round(token_seconds / (token_steps * args.batch_size) * 1e6, 2),
        "share_scale": SHARE_SCALE,
    }))


if __name__ == "__main__":
    main()
