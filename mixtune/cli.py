"""The ``mixtune`` command.

    mixtune demo                          # the offline demo, end to end
    mixtune run CONFIG                    # prepare -> mix -> train -> evaluate -> compare
    mixtune sweep CONFIG [--domain-percent 100,75,50,25]   # several mixes, one report
    mixtune prepare CONFIG                # download -> ... -> split, cached
    mixtune config check CONFIG           # print the resolved config, or every bad key
    mixtune mix plan CONFIG [--json]      # the planned mix, without training
    mixtune check-data FILE [--columns question,answer]   # is my data clean? (writes nothing)

The core library has no Prefect import; commands that run flows import them
lazily so ``config check`` and ``check-data`` start fast.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Callable

import yaml

from mixtune.errors import MixtuneError
from mixtune.resources import DEMO_CONFIG

# What the offline demo needs everywhere; a user's own environment wins.
_OFFLINE_DEFAULTS = {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
}
_RUN_DEFAULTS = {
    # Two busy cores can take longer than Prefect's 20 s to start its local API.
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
    "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    # Progress bars of every library interleave in a flow's log; Prefect shows progress instead.
    "TQDM_DISABLE": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
}


def _set_defaults(defaults: dict[str, str]) -> None:
    for key, value in defaults.items():
        os.environ.setdefault(key, value)


def _cmd_config_check(args: argparse.Namespace) -> int:
    from mixtune.config import load_config

    cfg = load_config(args.config)
    print(yaml.safe_dump(cfg.dump(), sort_keys=False, allow_unicode=True), end="")
    return 0


def _cmd_prepare(args: argparse.Namespace) -> int:
    from mixtune.config import load_config

    _set_defaults(_RUN_DEFAULTS)
    cfg = load_config(args.config)
    from mixtune.flows.prepare import prepare

    prepared = prepare(cfg)
    _print_prepared(prepared)
    return 0


def _print_prepared(prepared) -> None:
    print("\nprepared data:")
    for ref in prepared.domain:
        print(f"  {ref.name}: {ref.rows_kept} kept, {ref.rows_rejected} rejected of {ref.rows_in}  {ref.uri}")
    s = prepared.split
    print(f"  split: train {s.tables['train']}, val {s.tables['val']}, test {s.tables['test']}  {s.uri}")
    print(f"  model: {prepared.model_path}")


def _cmd_mix_plan(args: argparse.Namespace) -> int:
    """Prepare (cached) for row and token counts, then print the plan; nothing is trained."""
    from mixtune.config import load_config

    _set_defaults(_RUN_DEFAULTS)
    cfg = load_config(args.config)
    from mixtune.flows.prepare import prepare
    from mixtune.storage.artifacts import ArtifactStore
    from mixtune.mix.plan import plan_mix
    from mixtune.mix.sources import mix_sources, run_size

    prepared = prepare(cfg)
    sources = mix_sources(ArtifactStore(cfg.storage), prepared.split, prepared.categories)
    plan = plan_mix(cfg.mix, sources, **run_size(cfg.train))
    print(plan.to_json() if args.json else plan.to_text())
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from mixtune.config import load_config

    _set_defaults(_RUN_DEFAULTS)
    cfg = load_config(args.config)
    from mixtune.flows.pipeline import pipeline

    result = pipeline(cfg, train_deployment=args.train_deployment)
    _print_where(cfg, result.report, result.mlflow_run_id)
    return 0


def _cmd_sweep(args: argparse.Namespace) -> int:
    from mixtune.config import load_config

    _set_defaults(_RUN_DEFAULTS)
    cfg = load_config(args.config)
    from mixtune.flows.sweep import sweep

    percents = [float(p) for p in args.domain_percent.split(",")] if args.domain_percent else None
    mixes = yaml.safe_load(open(args.mixes)) if args.mixes else None
    result = sweep(cfg, domain_percents=percents, mixes=mixes, max_concurrency=args.max_concurrency,
                   train_deployment=args.train_deployment)
    _print_where(cfg, result.report, result.mlflow_run_id)
    return 0


def _print_where(cfg, report, mlflow_run_id: str) -> None:
    """Where the user looks next: the report, the Prefect UI, the MLflow UI."""
    from mixtune.storage.artifacts import ArtifactStore
    from mixtune.tracking import tracking_uri

    store = ArtifactStore(cfg.storage)
    print(store.read_bytes(f"{report.uri}/report.md").decode())
    uri = tracking_uri(cfg.tracking, cfg.storage)
    api = os.environ.get("PREFECT_API_URL")
    print(f"report:    {report.uri}/report.md (and report.html, pareto.png)")
    print(f"prefect:   {api.removesuffix('/api') if api else 'run `prefect server start` to browse flow runs (ephemeral API used)'}")
    mlflow_ui = uri if uri.startswith("http") else f"mlflow ui --backend-store-uri {uri}"
    print(f"mlflow:    {mlflow_ui}  (parent run {mlflow_run_id})")


def _cmd_demo(args: argparse.Namespace) -> int:
    _set_defaults(_OFFLINE_DEFAULTS)
    if not DEMO_CONFIG.exists():
        raise MixtuneError(f"demo config not found at {DEMO_CONFIG}: the installed package is incomplete")
    args.config = str(DEMO_CONFIG)
    args.train_deployment = None
    return _cmd_run(args)


def _cmd_check_data(args: argparse.Namespace) -> int:
    from mixtune.prepare.check import check_data_cli

    return check_data_cli(args)


def build_parser() -> argparse.ArgumentParser:
    examples = __doc__.split("\n\n")[1]  # the usage block of the module docstring
    parser = argparse.ArgumentParser(
        prog="mixtune", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Fine-tune on your data blended with curated general data; check nothing was forgotten.",
        epilog="examples:\n" + examples)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="run the offline demo on the shipped data and tiny model")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("run", help="run the whole pipeline for one mix")
    p.add_argument("config")
    p.add_argument("--train-deployment", help="run training as this Prefect deployment (e.g. train/mixtune-train)")
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("sweep", help="run several mixes and compare them (default: domain 100,75,50,25)")
    p.add_argument("config")
    p.add_argument("--domain-percent", help="comma-separated domain shares, e.g. 100,75,50,25")
    p.add_argument("--mixes", help="YAML file with a list of mixes ({domain_percent, weights} each)")
    p.add_argument("--max-concurrency", type=int, default=1, help="mixes trained at once")
    p.add_argument("--train-deployment", help="run training as this Prefect deployment")
    p.set_defaults(func=_cmd_sweep)

    p = sub.add_parser("prepare", help="run the prepare flow for a config")
    p.add_argument("config")
    p.set_defaults(func=_cmd_prepare)

    config = sub.add_parser("config", help="config tools").add_subparsers(dest="config_command", required=True)
    p = config.add_parser("check", help="validate a config and print it resolved")
    p.add_argument("config")
    p.set_defaults(func=_cmd_config_check)

    mix = sub.add_parser("mix", help="mix tools").add_subparsers(dest="mix_command", required=True)
    p = mix.add_parser("plan", help="print the planned mix (shares, samples, tokens, repeats) without training")
    p.add_argument("config")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.set_defaults(func=_cmd_mix_plan)

    p = sub.add_parser(
        "check-data", help="report problems in a data file row by row; writes nothing",
        description="Report reserved strings, schema and length problems row by row, as "
                    "'FILE row N, field F: reason: detail' (N: 0-based record index). Writes nothing, "
                    "except that the demo's tiny model is built once into the demo store when it is "
                    "the model and not cached yet. Exit 0 clean, 1 problems found, 2 unreadable file "
                    "or bad arguments.")
    p.add_argument("file", help="a data file (.jsonl .json .csv .tsv .parquet, optionally .gz), folder or glob")
    p.add_argument("--columns", help="question,answer (default) | instruction,input,output | messages | "
                                     "text,label with --kind label")
    p.add_argument("--kind", choices=["prompt_response", "instruction", "messages", "label"],
                   help="the column mapping (default: from the number of --columns names)")
    p.add_argument("--model", help="HF id or folder whose tokenizer counts tokens (default: the config's "
                                   "model, else the demo's tiny model, built and cached on first use)")
    p.add_argument("--config", help="take the sanitize, validate, model and storage sections from this config")
    p.add_argument("--max-length", type=int,
                   help="token limit, chat template included (default: the config's validate.max_length, else 1024)")
    p.add_argument("--json", action="store_true", help="print problems as JSON lines")
    p.set_defaults(func=_cmd_check_data)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except MixtuneError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
