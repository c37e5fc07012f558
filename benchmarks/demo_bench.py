"""Demo benchmark: the offline demo (base, d100, d75 on SmolLM2-135M-Instruct), timed by stage.

    .venv/bin/python benchmarks/demo_bench.py                   # configs/demo.yaml, a fresh store
    .venv/bin/python benchmarks/demo_bench.py --config configs/demo-full.yaml

Runs the sweep in this process on a fresh storage root (nothing cached except
the converted model folder when --keep-model points at one), then reads every
stage's run time back from Prefect's task runs. Goal: total under 10 minutes on
2 CPU cores. The last line is one JSON object with keys total_s,
train_tokens_per_s (mean over arms of real tokens per second of step time),
eval_s (general + domain evaluation, all models) and stage_s (stage -> seconds).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

for key, value in {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                   "TOKENIZERS_PARALLELISM": "false", "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
                   "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "TQDM_DISABLE": "1",
                   "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "true"}.items():
    os.environ.setdefault(key, value)

from mixtune.config import load_config  # noqa: E402
from mixtune.resources import DEMO_CONFIG  # noqa: E402

# --- knobs ---
DOMAIN_PERCENTS = [100.0, 75.0]  # the domain-only control and the demo's blend


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(DEMO_CONFIG))
    parser.add_argument("--keep-model", help="a storage root whose models/ folder (converted GGUF) is reused")
    args = parser.parse_args()

    from mixtune.flows.sweep import sweep
    from mixtune.flows.timing import stage_seconds
    from mixtune.storage.artifacts import ArtifactStore

    work = Path(tempfile.mkdtemp(prefix="mixtune-demo-bench-"))
    cfg = load_config(args.config)
    cfg = cfg.model_copy(update={
        "storage": cfg.storage.model_copy(update={"root": str(work / "store")}),
        "tracking": cfg.tracking.model_copy(update={"mlflow_tracking_uri": f"sqlite:///{work / 'mlflow.db'}"})})
    if args.keep_model:
        shutil.copytree(Path(args.keep_model) / "models", work / "store" / "models", dirs_exist_ok=True)
    since = datetime.now(timezone.utc)
    start = time.perf_counter()
    result = sweep(cfg, domain_percents=DOMAIN_PERCENTS)
    total_s = time.perf_counter() - start
    stage_s = stage_seconds(since)

    store = ArtifactStore(cfg.storage)
    rates = []
    for run in result.runs:
        parents = store.manifest(run.general).get("parents", [])
        trained = [p for p in parents if "/train/" in str(p.get("uri", p) if isinstance(p, dict) else p)]
        for parent in trained:
            uri = parent["uri"] if isinstance(parent, dict) else parent
            rates.append(store.read_json(f"{uri}/manifest.json")["result"]["tokens_per_s"])
    train_tokens_per_s = sum(rates) / len(rates) if rates else float("nan")
    eval_s = sum(s for stage, s in stage_s.items() if stage.startswith("eval"))

    print(f"demo on {os.cpu_count()} cores: {total_s:.0f} s total, {eval_s:.0f} s evaluating, "
          f"{train_tokens_per_s:.0f} train tokens/s")
    for stage, seconds in stage_s.items():
        print(f"  {stage:<16} {seconds:7.1f} s")
    print(json.dumps({"bench": "demo", "total_s": round(total_s, 1), "train_tokens_per_s": round(train_tokens_per_s, 1),
                      "eval_s": round(eval_s, 1), "stage_s": {k: round(v, 1) for k, v in stage_s.items()}}))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
