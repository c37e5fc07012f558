"""The ``mixtune`` command.

    mixtune demo                          # the offline demo: base, domain-only and a 75/25 blend
    mixtune run CONFIG                    # prepare -> mix -> train -> evaluate -> compare
    mixtune sweep CONFIG [--domain-percent 100,75,50,25]   # several mixes, one report
    mixtune sweep CONFIG --mixes deployments/sweeps/category-mixes.yaml   # a deployment's sweep file
    mixtune prepare CONFIG                # download -> ... -> split, cached
    mixtune config check CONFIG           # print the resolved config, or every bad key
    mixtune mix plan CONFIG [--json]      # the planned mix, without training
    mixtune check-data FILE [--columns question,answer]   # is my data clean? (writes nothing)

The core library has no Prefect import; commands that run flows import them
lazily so ``config check`` and ``check-data`` start fast.

Commands that run flows create every folder they use by default before first
use (Prefect home, Hugging Face cache, log folder; the storage root and the
MLflow store are created where they are opened), and write a log file under
``.mixtune/logs/`` (``mixtune.console``). A user-facing error is printed once,
as the last line, with exit code 2; its traceback is in that log file, or on
the console with ``--verbose``. A finished run prints ``DONE_MARKER`` and the
report's path as its last line (CI looks for it).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Annotated, Any, Callable

import yaml
from pydantic import Field, ValidationError, model_validator

from mixtune import console
from mixtune.errors import ConfigError, MixtuneError, read_yaml, validation_problem
from mixtune.resources import DEMO_CONFIG
from mixtune.sections import StrictModel

DONE_MARKER = "done: report at"
# `mixtune demo` keeps everything it writes under this folder of the working directory.
DEMO_HOME = Path(".mixtune")

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
    # MLflow's INFO lines ("Creating initial MLflow database tables...") tell a user nothing.
    "MLFLOW_LOGGING_LEVEL": "WARNING",
    # Progress bars of every library interleave in a flow's log; Prefect shows progress instead.
    "TQDM_DISABLE": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
}


def _set_defaults(defaults: dict[str, str]) -> None:
    for key, value in defaults.items():
        os.environ.setdefault(key, value)


def _ensure_folders() -> None:
    """Prefect's home and the Hugging Face cache, parents included, before Prefect or HF starts.

    Prefect creates its home without parents and, when that fails, waits 90 s
    for an API that cannot start. Unset variables mean each library's own
    default (``~/.prefect``, ``~/.cache/huggingface``), which keeps a user's
    Prefect profile (and its API URL) and shared model cache in force.
    """
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    defaults = {"PREFECT_HOME": Path.home() / ".prefect", "HF_HOME": cache / "huggingface"}
    for variable, default in defaults.items():
        Path(os.environ.get(variable) or default).expanduser().mkdir(parents=True, exist_ok=True)


def _start_flows(args: argparse.Namespace, cfg, *, evaluating: bool) -> None:
    """Console routing and this command's log file, and Prefect's temporary API tied to this
    process; call once Prefect is imported. ``cfg.storage`` names the root in a storage fault."""
    args.storage = cfg.storage
    args.log_file = console.default_log_file(args.command)
    console.setup(args.log_file, verbose=args.verbose, evaluating=evaluating)
    from mixtune.flows.api_server import start_prefect_api

    start_prefect_api()


def _cmd_config_check(args: argparse.Namespace) -> int:
    from mixtune.config import load_config

    from mixtune.preflight import check_config

    cfg = load_config(args.config)
    # The model, its tokenizer and the eval tasks exist: found now, not after prepare. A hub model
    # that cannot be confirmed offline is only a warning here (a run refuses it).
    for warning in check_config(cfg, hub_must_answer=False):
        print(f"warning: {warning}", file=sys.stderr)
    print(yaml.safe_dump(cfg.dump(), sort_keys=False, allow_unicode=True), end="")
    return 0


def _cmd_prepare(args: argparse.Namespace) -> int:
    from mixtune.config import load_config

    _set_defaults(_RUN_DEFAULTS)
    _ensure_folders()
    cfg = load_config(args.config)
    from mixtune.flows.prepare import prepare

    _start_flows(args, cfg, evaluating=False)
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
    _ensure_folders()
    cfg = load_config(args.config)
    from mixtune.flows.prepare import prepare
    from mixtune.storage.artifacts import ArtifactStore
    from mixtune.mix.plan import plan_mix
    from mixtune.mix.sources import mix_sources, run_size

    _start_flows(args, cfg, evaluating=False)
    prepared = prepare(cfg)
    sources = mix_sources(ArtifactStore(cfg.storage), prepared.split, prepared.categories)
    plan = plan_mix(cfg.mix, sources, **run_size(cfg.train))
    print(plan.to_json() if args.json else plan.to_text())
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from mixtune.config import load_config

    _set_defaults(_RUN_DEFAULTS)
    _ensure_folders()
    return _run_pipeline(args, load_config(args.config))


def _run_pipeline(args: argparse.Namespace, cfg) -> int:
    from mixtune.flows.pipeline import pipeline
    from mixtune.preflight import check_config

    check_config(cfg)
    _start_flows(args, cfg, evaluating=True)
    result = pipeline(cfg, train_deployment=args.train_deployment)
    _print_where(cfg, result.report, result.mlflow_run_id, args.log_file)
    return 0


class SweepParameters(StrictModel):
    """A sweep parameters file: the ``sweep`` flow's arguments besides the config.

    The same YAML file drives ``mixtune sweep CONFIG --mixes FILE`` and, as
    JSON, ``prefect deployment run sweep/mixtune-sweep --params`` (see
    deployments/sweeps/). Neither list set means the default grid (domain 100,
    75, 50, 25 percent).
    """

    domain_percents: list[Annotated[float, Field(gt=0, le=100)]] | None = Field(
        None, min_length=1, description="a grid: the config's weights at each domain share (percent)")
    mixes: list[dict[str, Any]] | None = Field(
        None, min_length=1, description="explicit mixes, each a `mix:` section (native or cloud-SDK form)")
    max_concurrency: int = Field(1, ge=1, description="mixes trained at once")

    @model_validator(mode="after")
    def _grid_or_mixes(self) -> "SweepParameters":
        if self.domain_percents is not None and self.mixes is not None:
            raise ValueError("set domain_percents (a grid) or mixes, not both")
        return self


def read_sweep_file(path: str | Path) -> dict[str, Any]:
    """A sweep parameters file as keyword arguments of the ``sweep`` flow.

    Returns ``{"domain_percents": [float] | None, "mixes": [dict] | None,
    "max_concurrency": int}``. Raises ConfigError naming the file and every
    bad key (unknown keys included) when it does not parse.
    """
    path = Path(path)
    data = read_yaml(path)
    if not isinstance(data, dict):
        raise ConfigError([f"<root>: expected a mapping with keys {', '.join(SweepParameters.model_fields)}, "
                           f"got {type(data).__name__}"], str(path))
    try:
        return SweepParameters.model_validate(data).model_dump()
    except ValidationError as exc:
        raise ConfigError([validation_problem(e) for e in exc.errors()], str(path)) from None


def _domain_percents(text: str) -> list[float]:
    try:
        return [float(p) for p in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, e.g. 100,75,50,25; got {text!r}")


def _sweep_parameters(args: argparse.Namespace) -> dict[str, Any]:
    """The file's parameters, with --domain-percent and --max-concurrency taking precedence."""
    params = read_sweep_file(args.mixes) if args.mixes else SweepParameters().model_dump()
    if args.domain_percent is not None:
        if params["mixes"] is not None:
            raise ConfigError([f"--domain-percent: {args.mixes} lists explicit mixes; use one or the other"])
        params["domain_percents"] = args.domain_percent
    if args.max_concurrency is not None:
        params["max_concurrency"] = args.max_concurrency
    # The flag's values pass through the same checks as the file's.
    try:
        return SweepParameters.model_validate(params).model_dump()
    except ValidationError as exc:
        raise ConfigError([validation_problem(e) for e in exc.errors()], "sweep parameters") from None


def check_sweep_mixes(cfg, params: dict[str, Any], source: str) -> None:
    """Every mix the sweep would run is a valid mix of this config's catalog; else one ConfigError."""
    from mixtune.flows.sweep import sweep_mixes
    from mixtune.mix.spec import check_mix_against_catalog

    # One mix at a time, so a problem names its entry: "mixes[2]: weights.mathh: unknown category".
    if params["mixes"] is not None:
        entries = {f"mixes[{i}]": {"mixes": [mix]} for i, mix in enumerate(params["mixes"])}
    else:
        percents = params["domain_percents"]
        entries = {f"domain_percents[{i}]": {"domain_percents": [p]} for i, p in enumerate(percents)} \
            if percents else {"the default grid": {}}
    domain_sources = [s.name for s in cfg.data.sources]
    problems: list[str] = []
    for where, entry in entries.items():
        try:
            specs = sweep_mixes(cfg.mix, **entry)
        except ValidationError as exc:
            problems += [f"{where}: {validation_problem(e)}" for e in exc.errors()]
            continue
        found = [p for spec in specs for p in check_mix_against_catalog(spec, cfg.categories, domain_sources)]
        problems += [f"{where}: {p.removeprefix('mix.')}" for p in dict.fromkeys(found)]
    if problems:
        raise ConfigError(problems, source)


def _cmd_sweep(args: argparse.Namespace) -> int:
    from mixtune.config import load_config

    _set_defaults(_RUN_DEFAULTS)
    _ensure_folders()
    params = _sweep_parameters(args)
    cfg = load_config(args.config)
    from mixtune.flows.sweep import sweep
    from mixtune.preflight import check_config

    check_sweep_mixes(cfg, params, args.mixes or "sweep parameters")
    check_config(cfg)
    _start_flows(args, cfg, evaluating=True)
    result = sweep(cfg, **params, train_deployment=args.train_deployment)
    _print_where(cfg, result.report, result.mlflow_run_id, args.log_file)
    return 0


def _print_where(cfg, report, mlflow_run_id: str, log_file: Path | None = None) -> None:
    """Where the user looks next: the report, the Prefect UI, the MLflow UI."""
    from mixtune.storage.artifacts import ArtifactStore
    from mixtune.tracking import tracking_uri

    store = ArtifactStore(cfg.storage)
    print(store.read_bytes(f"{report.uri}/report.md").decode())
    uri = tracking_uri(cfg.tracking, cfg.storage)
    api = os.environ.get("PREFECT_API_URL")
    print(f"prefect:   {api.removesuffix('/api') if api else 'run `prefect server start` to browse flow runs (ephemeral API used)'}")
    print(f"mlflow:    {_mlflow_where(uri, mlflow_run_id)}")
    if log_file is not None:
        print(f"log:       {log_file}")
    # The answer the run was for, last before the done line (compare keeps it in its manifest).
    recommendation = store.manifest(report).get("recommendation", {}).get("sentence")
    if recommendation:
        print(f"\n{recommendation}\n")
    # Last, and alone on its line: CI (.ci/run) checks that a run ends with it.
    others = [f for f in store.manifest(report).get("files", []) if f != "report.md"] or ["report.html", "pareto.png"]
    others += [f for f in ("curves.png",) if store.exists(f"{report.uri}/{f}")]
    print(f"{DONE_MARKER} {report.uri}/report.md (also {', '.join(others)})", flush=True)


def _mlflow_where(uri: str, run_id: str) -> str:
    """The parent run's page and the saved runs-table view of its mixes on a tracking server; for a
    file store, the ``mlflow ui`` command and that view's page on the server it starts."""
    from mixtune.tracking import comparison_view_url, run_url

    try:
        from mlflow import MlflowClient

        experiment_id = MlflowClient(uri).get_run(run_id).info.experiment_id
    except Exception:  # an unreachable server must not hide the report's path below
        return f"{uri}  (parent run {run_id})"
    if url := run_url(uri, experiment_id, run_id):
        return f"{url}\n  the mixes side by side: {comparison_view_url(uri, experiment_id, run_id)}"
    page = comparison_view_url("http://127.0.0.1:5000", experiment_id, run_id)
    return f"{_mlflow_command()} ui --backend-store-uri {uri}  then open {page}  (the mixes side by side)"


def _mlflow_command() -> str:
    """``mlflow`` when the shell finds this environment's one, else its path (a venv not activated)."""
    import shutil

    beside = Path(sys.executable).parent / "mlflow"
    on_path = shutil.which("mlflow")
    if beside.exists() and (on_path is None or Path(on_path).resolve() != beside.resolve()):
        return str(beside)
    return "mlflow"


def _cmd_demo(args: argparse.Namespace) -> int:
    """The shipped demo config, with everything it writes under ./.mixtune of the working directory.

    The config's own storage root is relative to the config file, which in a
    plain ``pip install`` sits inside site-packages: the demo overrides it, and
    the Prefect home and HF cache default beside it (a set variable wins).
    """
    from mixtune.config import load_config

    home = DEMO_HOME.resolve()
    _set_defaults(_OFFLINE_DEFAULTS)
    _set_defaults({**_RUN_DEFAULTS, "PREFECT_HOME": str(home / "prefect"), "HF_HOME": str(home / "hf")})
    _ensure_folders()
    if not DEMO_CONFIG.exists():
        raise MixtuneError(f"demo config not found at {DEMO_CONFIG}: the installed package is incomplete")
    cfg = load_config(DEMO_CONFIG, overrides={"storage": {"root": str(home / "store")}})
    args.config = str(DEMO_CONFIG)
    args.train_deployment = None
    return _run_demo_sweep(args, cfg)


DEMO_DOMAIN_PERCENTS = [100.0, 75.0]  # the domain-only control and the config's blend


def _run_demo_sweep(args: argparse.Namespace, cfg) -> int:
    """Base model, domain-only control and the demo's blend, each stage's time printed at the end."""
    from datetime import datetime, timezone

    from mixtune.flows.sweep import sweep
    from mixtune.flows.timing import stage_seconds
    from mixtune.preflight import check_config

    check_config(cfg)
    _start_flows(args, cfg, evaluating=True)
    since, started = datetime.now(timezone.utc), time.perf_counter()
    result = sweep(cfg, domain_percents=DEMO_DOMAIN_PERCENTS)
    total_s = time.perf_counter() - started
    seconds = stage_seconds(since)
    print(f"\nstage times ({total_s:.0f} s in all; a cached stage takes ~0 s):")
    for stage, stage_s in seconds.items():
        print(f"  {stage:<16} {stage_s:7.1f} s")
    _print_where(cfg, result.report, result.mlflow_run_id, args.log_file)
    return 0


def _cmd_check_data(args: argparse.Namespace) -> int:
    from mixtune.prepare.check import check_data_cli

    return check_data_cli(args)


def build_parser() -> argparse.ArgumentParser:
    examples = __doc__.split("\n\n")[1]  # the usage block of the module docstring
    parser = argparse.ArgumentParser(
        prog="mixtune", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Fine-tune on your data blended with curated general data; check nothing was forgotten.",
        epilog="examples:\n" + examples)
    verbose_help = "print tracebacks of mixtune errors on the console too (flow commands always log them)"
    parser.add_argument("-v", "--verbose", action="store_true", help=verbose_help)
    # Accepted after the command as well; SUPPRESS keeps a flag given before it.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help=verbose_help)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", parents=[common], help="run the offline demo (SmolLM2-135M-Instruct on "
                                                         "MedQuAD: base, domain-only d100, 75/25 blend), "
                                                         "writing under ./.mixtune")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("run", parents=[common], help="run the whole pipeline for one mix")
    p.add_argument("config")
    p.add_argument("--train-deployment", help="run training as this Prefect deployment (e.g. train/mixtune-train)")
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("sweep", parents=[common], help="run several mixes and compare them (default: domain 100,75,50,25)")
    p.add_argument("config")
    p.add_argument("--domain-percent", type=_domain_percents, help="comma-separated domain shares, e.g. 100,75,50,25")
    p.add_argument("--mixes", metavar="FILE",
                   help="sweep parameters file, as in deployments/sweeps/: domain_percents (a grid) or mixes "
                        "(a list of `mix:` sections), and max_concurrency; the flags here take precedence")
    p.add_argument("--max-concurrency", type=int, help="mixes trained at once (default 1)")
    p.add_argument("--train-deployment", help="run training as this Prefect deployment")
    p.set_defaults(func=_cmd_sweep)

    p = sub.add_parser("prepare", parents=[common], help="run the prepare flow for a config")
    p.add_argument("config")
    p.set_defaults(func=_cmd_prepare)

    config = sub.add_parser("config", help="config tools").add_subparsers(dest="config_command", required=True)
    p = config.add_parser("check", parents=[common], help="validate a config and print it resolved")
    p.add_argument("config")
    p.set_defaults(func=_cmd_config_check)

    mix = sub.add_parser("mix", help="mix tools").add_subparsers(dest="mix_command", required=True)
    p = mix.add_parser("plan", parents=[common], help="print the planned mix (shares, samples, tokens, repeats) without training")
    p.add_argument("config")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.set_defaults(func=_cmd_mix_plan)

    p = sub.add_parser(
        "check-data", parents=[common], help="report problems in a data file row by row; writes nothing",
        description="Report reserved strings, schema and length problems row by row, as "
                    "'FILE row N, field F: reason: detail' (N: 0-based record index). Writes nothing, "
                    "except that the default model (a GGUF file) is converted once into ./.mixtune/store "
                    "when it is the model and not cached yet. Exit 0 clean, 1 problems found, 2 unreadable file "
                    "or bad arguments.")
    p.add_argument("file", help="a data file (.jsonl .json .csv .tsv .parquet, optionally .gz), folder or glob")
    p.add_argument("--columns", help="question,answer (default) | instruction,input,output | messages | "
                                     "text,label with --kind label")
    p.add_argument("--kind", choices=["prompt_response", "instruction", "messages", "label"],
                   help="the column mapping (default: from the number of --columns names)")
    p.add_argument("--model", help="HF id or folder whose tokenizer counts tokens (default: the config's "
                                   "model, else smollm2-135m-instruct, converted and cached on first use)")
    p.add_argument("--config", help="take the sanitize, validate, model and storage sections from this config")
    p.add_argument("--max-length", type=int,
                   help="token limit, chat template included (default: the config's validate.max_length, else 1024)")
    p.add_argument("--json", action="store_true", help="print problems as JSON lines")
    p.set_defaults(func=_cmd_check_data)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; exit code 0 done, 2 a user-facing error (printed once, last).

    A storage fault (S3 unreachable, disk full or read-only under the root) is
    a user-facing error too (``mixtune.storage.faults``). Any other exception
    propagates with its traceback: it is a bug to report.
    """
    args = build_parser().parse_args(argv)
    args.log_file = args.storage = None  # set by commands that run flows
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except MixtuneError as exc:
        console.report_error(exc, args.log_file, verbose=args.verbose)
        return 2
    except Exception as exc:
        # A storage fault outside a stage (Prefect persisting a result, a flow reading a table), or an
        # error raised while handling a user-facing one (ending an MLflow run on the same full disk).
        from mixtune.storage.faults import storage_fault

        error = (storage_fault(exc, args.storage) if args.storage is not None else None) or console.user_facing_error(exc)
        if error is None:
            raise
        console.report_error(error, args.log_file, verbose=args.verbose)
        return 2


if __name__ == "__main__":
    sys.exit(main())
