"""Prepare benchmark: mixtune's sanitize against the tutorial loop, then the whole prepare.

    .venv/bin/python benchmarks/prepare_bench.py              # 100k rows, about a minute
    .venv/bin/python benchmarks/prepare_bench.py --rows 10000 # quick look

Synthetic question/answer rows of about 1 KB, with reserved strings (role
prefixes, [EOS], <image>, special tokens) sprinkled into some sentences.

1. Like for like, the same rules with the same output: the approach public
   tutorials show (pandas ``iterrows()``, ``re.sub`` per reserved string per
   row, written back with ``df.at``) on a subsample, since it slows down as the
   frame grows; mixtune's ``sanitize`` on every row, best of a few runs.
2. The whole sanitize + transform + validate with chat-template token
   counting (the tiny demo tokenizer), in rows/s, on the first
   ``WHOLE_PREP_ROWS`` rows: the fast tokenizer's pre-tokenizer regex runs at
   about 1.5 MB/s per core here, so token counting alone takes about a minute
   per 100k rows of 1 KB; the rate is linear in rows (``--whole-rows`` to
   change it).

The last line is one JSON object; ``ratio`` is mixtune sanitize rows/s over
the tutorial loop rows/s (goal: at least 100).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

for _key, _value in {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                     "TOKENIZERS_PARALLELISM": "false", "DO_NOT_TRACK": "true"}.items():
    os.environ.setdefault(_key, _value)

import numpy as np
import pandas as pd
import polars as pl

# --- knobs ---
ROWS = 100_000                # rows in the synthetic frame
BASELINE_ROWS = 2_000         # the tutorial loop runs on this many (it is super-linear in rows)
QUESTION_SENTENCES = 2        # sentences per question; the answer has ANSWER_SENTENCES
ANSWER_SENTENCES = 8          # 10 sentences of ~100 chars: rows of about 1 KB
SENTENCE_POOL = 4_000         # distinct sentences rows are drawn from (fast to build)
RESERVED_SENTENCE_SHARE = 0.01  # share of pool sentences carrying a reserved string (~10% of rows)
MIXTUNE_REPEATS = 3           # sanitize is timed best-of-N; the baseline once
WHOLE_PREP_ROWS = 25_000      # rows for the whole prepare timing (keeps the run under two minutes)
MAX_LENGTH = 1024             # validate.max_length, tokens
VOCAB_SIZE = 512              # tiny tokenizer's BPE vocabulary
SEED = 0

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from mixtune.prepare.sanitize import reserved_strings, sanitize, special_tokens_of  # noqa: E402
from mixtune.sections import SanitizeConfig, SourceConfig, TinyModelConfig, ValidateConfig  # noqa: E402
from mixtune.models.tiny import build_tiny_model  # noqa: E402
from mixtune.prepare.transform import transform  # noqa: E402
from mixtune.prepare.validate import validate  # noqa: E402

WORDS = (
    "the patient dose heart blood cell gene therapy acute chronic symptom treatment doctor "
    "may can often rare common infection pain fever kidney liver lung brain skin risk test "
    "result system user assistant bot thought username analysis signs cause causes people "
    "children adults years disease condition syndrome inherited mutation protein level high "
    "low normal severe mild early late stage care team should with without after before during"
).split()
RESERVED_SAMPLES = ["User:", "assistant:", "SYSTEM:", "Bot:", "Thought:", "[EOS]", "<image>",
                    "<video>", "<unk>", "<|im_start|>", "<|im_end|>", "</s>", "<s>"]
PLAIN_PREFIXES = ["Note:", "Symptoms:", "Treatment:", "Result:"]  # colons that are not roles


def sentence_pool(rng: np.random.Generator) -> np.ndarray:
    """Pool of ~100-char sentences; some with a reserved string, some with a harmless colon."""
    pool = []
    for i in range(SENTENCE_POOL):
        words = list(rng.choice(WORDS, int(rng.integers(10, 20))))
        if rng.random() < RESERVED_SENTENCE_SHARE:
            words.insert(int(rng.integers(0, len(words))), str(rng.choice(RESERVED_SAMPLES)))
        if i % 10 == 0:
            words.insert(0, str(rng.choice(PLAIN_PREFIXES)))
        pool.append(" ".join(words).capitalize() + ". ")
    return np.array(pool, dtype=object)


def synthetic_rows(rows: int) -> pl.DataFrame:
    """Rows drawn from the pool by index (vectorized), with the lineage columns download adds."""
    rng = np.random.default_rng(SEED)
    pool = sentence_pool(rng)
    question = ["".join(s) for s in pool[rng.integers(0, len(pool), (rows, QUESTION_SENTENCES))]]
    answer = ["".join(s) for s in pool[rng.integers(0, len(pool), (rows, ANSWER_SENTENCES))]]
    return pl.DataFrame({
        "_row_id": pl.int_range(rows, eager=True).cast(pl.Int64),
        "_source_file": pl.repeat("synthetic.jsonl", rows, eager=True),
        "_source_row": pl.int_range(rows, eager=True).cast(pl.Int64),
        "question": question,
        "answer": answer,
    })


def tutorial_sanitize(df: pd.DataFrame, columns: list[str], cfg: SanitizeConfig,
                      special_tokens: list[str]) -> pd.DataFrame:
    """The tutorial approach: iterrows, one re.sub per reserved string per row, df.at write-back.

    Same rules in the same order as mixtune (special tokens, literals, role prefixes)."""
    removals = [t for t in special_tokens if t not in cfg.reserved_literals] + cfg.reserved_literals
    for i, row in df.iterrows():
        for column in columns:
            text = row[column]
            for literal in removals:
                text = re.sub(re.escape(literal), "", text)
            for prefix in cfg.role_prefixes:
                text = re.sub(rf"\b({re.escape(prefix)}):", r"\1 :", text, flags=re.IGNORECASE)
            df.at[i, column] = text
    return df


def tokenizer_dir(work: Path) -> Path:
    """The tiny demo tokenizer, trained on the shipped medical QA data when present."""
    root = Path(__file__).resolve().parents[1]
    corpus = sorted((root / "data" / "medquad").glob("*.jsonl"))[:1]
    if not corpus:
        corpus = [work / "pool.txt"]
        corpus[0].write_text("\n".join(sentence_pool(np.random.default_rng(SEED))))
    return build_tiny_model(TinyModelConfig(corpus_files=[str(c) for c in corpus], vocab_size=VOCAB_SIZE),
                            work / "tiny")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=ROWS)
    parser.add_argument("--whole-rows", type=int, default=WHOLE_PREP_ROWS)
    args = parser.parse_args()
    rows = args.rows
    baseline_rows, whole_rows = min(BASELINE_ROWS, rows), min(args.whole_rows, rows)
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores "
          "(timings are wall clock; other work on the machine slows both sides)")

    start = time.perf_counter()
    frame = synthetic_rows(rows)
    mean_bytes = (frame["question"].str.len_bytes() + frame["answer"].str.len_bytes()).mean()
    print(f"data: {rows} rows, {mean_bytes:.0f} bytes/row on average, built in "
          f"{time.perf_counter() - start:.2f} s")

    from transformers import AutoTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir(Path(tmp)))
    source = SourceConfig(name="bench", uri="synthetic.jsonl")
    sanitize_cfg, validate_cfg = SanitizeConfig(), ValidateConfig(max_length=MAX_LENGTH)
    special = special_tokens_of(tokenizer)
    columns = ["question", "answer"]

    # 1. like for like: the tutorial loop on a subsample, mixtune on every row
    sample = frame.head(baseline_rows)
    baseline_df = sample.select(columns).to_pandas()
    start = time.perf_counter()
    baseline_df = tutorial_sanitize(baseline_df, columns, sanitize_cfg, special)
    baseline_s = time.perf_counter() - start
    baseline_rows_s = baseline_rows / baseline_s
    print(f"tutorial loop (iterrows + re.sub + df.at): {baseline_rows} rows in {baseline_s:.2f} s "
          f"= {baseline_rows_s:,.0f} rows/s")

    mixtune_sample = sanitize(sample, sanitize_cfg, columns, special).frame
    same = all(mixtune_sample[c].to_list() == baseline_df[c].tolist() for c in columns)
    print(f"same output as the tutorial loop on those {baseline_rows} rows: {same}")

    timings = []
    for _ in range(MIXTUNE_REPEATS):
        start = time.perf_counter()
        sanitized = sanitize(frame, sanitize_cfg, columns, special)
        timings.append(time.perf_counter() - start)
    sanitize_rows_s = rows / min(timings)
    print(f"mixtune sanitize: {rows} rows in {min(timings):.3f} s (best of {MIXTUNE_REPEATS}) "
          f"= {sanitize_rows_s:,.0f} rows/s; hits: {sanitized.total_hits()}")

    # 2. the whole prepare core: sanitize + transform + validate with token counting
    frame = frame.head(whole_rows)
    start = time.perf_counter()
    sanitized = sanitize(frame, sanitize_cfg, columns, special)
    t_sanitize = time.perf_counter()
    transformed = transform(sanitized.frame, source)
    t_transform = time.perf_counter()
    validated = validate(transformed.frame, validate_cfg, tokenizer,
                         reserved_strings(sanitize_cfg, special), sanitize_cfg.role_prefixes)
    end = time.perf_counter()
    rows_out = validated.frame.height + validated.rejects.height + transformed.rejects.height
    assert rows_out == whole_rows, "rows in must equal rows kept + rows rejected"
    whole_rows_s = whole_rows / (end - start)
    print(f"whole prep: {whole_rows} rows in {end - start:.2f} s = {whole_rows_s:,.0f} rows/s "
          f"(sanitize {t_sanitize - start:.2f} s, transform {t_transform - t_sanitize:.2f} s, "
          f"validate {end - t_transform:.2f} s); kept {validated.frame.height}, "
          f"rejected {validated.rejects.height + transformed.rejects.height} {validated.reasons}, "
          f"mean {validated.frame['num_tokens'].mean():.0f} tokens/row")

    ratio = sanitize_rows_s / baseline_rows_s
    print(f"ratio (mixtune sanitize / tutorial loop): {ratio:.0f}x (goal >= 100)")
    print(json.dumps({
        "bench": "prepare",
        "rows": rows,
        "whole_prep_rows": whole_rows,
        "baseline_rows_s": round(baseline_rows_s, 1),
        "mixtune_sanitize_rows_s": round(sanitize_rows_s, 1),
        "whole_prep_rows_s": round(whole_rows_s, 1),
        "ratio": round(ratio, 1),
    }))


if __name__ == "__main__":
    main()
