"""The mixtune command as a newcomer meets it: shipped configs check, sweep files run, an error reads once.

The slow tests run the console script in a subprocess on a small `mixtune:tiny`
config: one from a plain (non-editable) install into a folder that does not
exist yet, one that stops on a reject-share error.
"""

from __future__ import annotations

import io
import logging
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import yaml

from mixtune import console
from mixtune.cli import DONE_MARKER, check_sweep_mixes, main, read_sweep_file
from mixtune.config import load_config
from mixtune.errors import ConfigError, RejectShareExceeded

REPO = Path(__file__).resolve().parents[1]
SHIPPED_CONFIGS = sorted(p for p in (REPO / "configs").glob("*.yaml") if not p.name.startswith("catalog"))
SWEEP_FILES = sorted((REPO / "deployments" / "sweeps").glob("*.yaml"))


# --- shipped files ---


@pytest.mark.parametrize("path", SHIPPED_CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_passes_config_check(path, capsys):
    assert main(["config", "check", str(path)]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["data"]["sources"]


def test_example_hub_config_runs_a_hub_model_on_the_hub_catalog():
    cfg = load_config(REPO / "configs" / "example-hub.yaml")
    assert cfg.model.name_or_path == "HuggingFaceTB/SmolLM2-360M-Instruct"
    assert cfg.catalog == str(REPO / "configs" / "catalog.yaml")
    assert all(src.uri.startswith("hf://") for c in cfg.mix.category_weights() for src in cfg.categories[c])
    assert cfg.eval.offline is False


def _sweep_config(tmp_path: Path):
    """A config over the offline catalog, whose categories the shipped sweep files name."""
    raw = {"data": {"sources": [{"name": "med", "uri": str(REPO / "data" / "medquad" / "medquad.jsonl")}]},
           "catalog": str(REPO / "configs" / "catalog-offline.yaml"),
           "mix": {"domain_percent": 75, "weights": {"math": 1}},
           "storage": {"root": str(tmp_path / "store")}}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(raw))
    return tmp_path / "run.yaml"


@pytest.mark.parametrize("path", SWEEP_FILES, ids=lambda p: p.name)
def test_sweep_file_reads_the_same_for_the_cli_and_the_deployment(path, tmp_path):
    from mixtune.flows.sweep import sweep, sweep_mixes

    cfg = load_config(_sweep_config(tmp_path))
    params = read_sweep_file(path)  # what `mixtune sweep CONFIG --mixes FILE` passes to the flow
    # What a deployment run does with the same file's keys: Prefect's check of the flow's parameters.
    validated = sweep.validate_parameters({"config": cfg, **yaml.safe_load(path.read_text())})
    assert {k: validated[k] for k in params} == params
    check_sweep_mixes(cfg, params, str(path))  # every mix is valid against the config's catalog
    specs = sweep_mixes(cfg.mix, params["domain_percents"], params["mixes"])
    assert len(specs) >= 2 and any(s.domain_percent == 100 for s in specs)


def test_sweep_file_faults_name_the_file_and_every_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("domain_percents: [100, 150]\nmixes: [{domain_percent: 50}]\nmax_concurency: 2\n")
    with pytest.raises(ConfigError) as err:
        read_sweep_file(bad)
    text = str(err.value)
    assert str(bad) in text
    assert "domain_percents[1]: Input should be less than or equal to 100" in text
    assert "max_concurency: unknown key" in text
    # The old format (a bare list of mixes) says which format is expected.
    bad.write_text("- {domain_percent: 50}\n")
    with pytest.raises(ConfigError, match="expected a mapping with keys domain_percents, mixes, max_concurrency"):
        read_sweep_file(bad)


def test_sweep_rejects_a_mix_outside_the_catalog_naming_the_entry(tmp_path, capsys):
    mixes = tmp_path / "mixes.yaml"
    mixes.write_text(yaml.safe_dump({"mixes": [{"domain_percent": 100},
                                               {"domain_percent": 50, "weights": {"mathh": 1}}]}))
    assert main(["sweep", str(_sweep_config(tmp_path)), "--mixes", str(mixes)]) == 2
    err = capsys.readouterr().err
    assert f"invalid config {mixes}" in err and "mixes[1]: weights.mathh: unknown category" in err
    assert err.count("error:") == 1


def test_sweep_flags_and_a_file_of_mixes_do_not_mix(tmp_path, capsys):
    args = ["sweep", str(_sweep_config(tmp_path)), "--mixes", str(SWEEP_FILES[0]), "--domain-percent", "100,50"]
    assert SWEEP_FILES[0].name == "category-mixes.yaml"
    assert main(args) == 2
    assert "lists explicit mixes; use one or the other" in capsys.readouterr().err


# --- the console ---


def _console_records(records: list[logging.LogRecord], verbose: bool = False) -> list[str]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(console._ConsoleFilter(show_errors=verbose))
    for record in records:
        handler.handle(record)
    return stream.getvalue().splitlines()


def _record(msg: str, level: int = logging.ERROR, exc: BaseException | None = None) -> logging.LogRecord:
    return logging.LogRecord("prefect.task_runs", level, __file__, 1, msg, None,
                             (type(exc), exc, None) if exc else None)


def test_console_shows_a_mixtune_error_nowhere_but_other_failures_everywhere():
    err = RejectShareExceeded("med", 10, 9, 5.0, {"prompt_too_long": 9}, "/store/rejects")
    records = [
        _record("Task run failed with exception: RejectShareExceeded(...)", exc=err),
        _record(f"Finished in state Failed({('Task run encountered an exception ' + str(err))!r})"),
        _record("Encountered exception during execution", exc=err),
        _record("Finished in state Completed()", logging.INFO),
        _record("Task run failed with exception: KeyError('x')", exc=KeyError("x")),
    ]
    assert _console_records(records) == ["Finished in state Completed()",
                                         "Task run failed with exception: KeyError('x')", "KeyError: 'x'"]
    shown = "\n".join(_console_records(records, verbose=True))  # --verbose: everything, tracebacks included
    assert all(r.getMessage() in shown for r in records) and shown.count("RejectShareExceeded: source") == 2


def test_library_chatter_goes_to_the_log_file_at_debug(tmp_path):
    logger = logging.getLogger("lm_eval.api.task")
    demote = console._Demote(lambda msg: "Custom kwargs can be passed to `--metadata`" in msg)
    logger.addFilter(demote)
    seen: list[logging.LogRecord] = []
    capture = logging.Handler()
    capture.emit = seen.append
    logger.addHandler(capture)
    try:
        logger.warning("mmlu_anatomy: Custom kwargs can be passed to `--metadata` in console (as json string)")
        logger.warning("a real warning")
    finally:
        logger.removeFilter(demote)
        logger.removeHandler(capture)
    assert [(r.levelname, r.getMessage()[:12]) for r in seen] == [("DEBUG", "mmlu_anatomy"), ("WARNING", "a real warni")]
    assert _console_records(seen) == ["a real warning"]


def test_library_future_warnings_are_logged_not_shown():
    seen: list[logging.LogRecord] = []
    capture = logging.Handler()
    capture.emit = seen.append
    logging.getLogger(console.LIBRARY_LOGGER).addHandler(capture)
    try:
        with warnings.catch_warnings(record=True) as shown:  # `shown`: what would reach the terminal
            warnings.simplefilter("always")
            console._route_library_warnings()
            warnings.warn_explicit("`x` is deprecated", FutureWarning, "/site-packages/peft/tuners.py", 3)
            warnings.warn_explicit("source 'a' repeats 5.0x", UserWarning, str(REPO / "mixtune/mix/x.py"), 1)
    finally:
        logging.getLogger(console.LIBRARY_LOGGER).removeHandler(capture)
    assert [r.levelname for r in seen] == ["DEBUG"] and "FutureWarning: `x` is deprecated" in seen[0].getMessage()
    assert [str(w.message) for w in shown] == ["source 'a' repeats 5.0x"]  # mixtune's own warnings stay


def test_setup_again_replaces_its_log_file_and_filter(tmp_path):
    root = logging.getLogger()
    stream = logging.StreamHandler(io.StringIO())
    root.addHandler(stream)
    try:
        console.setup(tmp_path / "a.log")
        console.setup(tmp_path / "b.log")
        ours = [h for h in root.handlers if isinstance(h, logging.FileHandler) and h.baseFilename.startswith(str(tmp_path))]
        assert [Path(h.baseFilename).name for h in ours] == ["b.log"]
        assert sum(isinstance(f, console._ConsoleFilter) for f in stream.filters) == 1
    finally:
        root.removeHandler(stream)
        for handler in [h for h in root.handlers if isinstance(h, logging.FileHandler)]:
            if handler.baseFilename.startswith(str(tmp_path)):
                root.removeHandler(handler)
                handler.close()


def test_lm_eval_git_probe_is_quiet_outside_a_repository(tmp_path, monkeypatch, capfd):
    import lm_eval.evaluator as evaluator

    monkeypatch.setattr(evaluator, "get_git_commit_hash", evaluator.get_git_commit_hash)  # restored after
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))
    console._quiet_git_probe()
    assert evaluator.get_git_commit_hash() is None
    assert "fatal" not in capfd.readouterr().err


# --- the console script, end to end ---


def _small_config(data: Path, configs: Path, root: Path, **sections) -> dict:
    """A whole pipeline in about a minute on 2 cores: tiny model, a few steps, a few eval items."""
    return {
        "name": "small",
        "data": {"sources": [{"name": "medquad", "uri": str(data / "medquad" / "medquad.jsonl"),
                              "columns": {"kind": "prompt_response", "prompt": "question", "response": "answer"},
                              "max_rows": 120}]},
        "validate": {"max_length": 256, "on_too_long": "truncate"},
        "split": {"group_column": "focus"},
        "catalog": str(configs / "catalog-offline.yaml"),
        "mix": {"domain_percent": 75, "weights": {"math": 1}},
        "model": {"name_or_path": "mixtune:tiny",
                  "tiny": {"vocab_size": 400, "corpus_files": [str(data / "medquad" / "medquad.jsonl")]}},
        "train": {"global_batch_size": 4, "per_device_batch_size": 4, "max_steps": 2, "max_length": 256,
                  "logging_steps": 1, "checkpoint_every_steps": None},
        "eval": {"general_tasks": [{"name": "arc_challenge", "limit": 2}],
                 "domain": {"max_rows": 2, "max_new_tokens": 4}},
        "storage": {"root": str(root / "store")},
        **sections,
    }


def _cli_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "MIXTUNE_LOG_DIR", "PYTHONPATH")}
    return {**env, **extra}


@pytest.mark.slow
def test_reject_share_error_prints_once_and_exits_2(tmp_path):
    data = tmp_path / "med.jsonl"
    rows = (REPO / "data" / "medquad" / "medquad.jsonl").read_text().splitlines()[:40]
    data.write_text("\n".join(rows) + "\n")  # answers of 100+ tokens against a 64-token limit
    raw = _small_config(REPO / "data", REPO / "configs", tmp_path,
                        validate={"max_length": 64, "on_too_long": "reject", "max_reject_percent": 5})
    raw["data"]["sources"][0]["uri"] = str(data)
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(raw))
    script = Path(sys.executable).with_name("mixtune")  # the console script of this environment

    done = subprocess.run([str(script), "prepare", "bad.yaml"], cwd=tmp_path, env=_cli_env(),
                          capture_output=True, text=True, timeout=600)
    printed = done.stdout + done.stderr
    assert done.returncode == 2, printed
    assert printed.count("rows rejected") == 1, printed
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: source 'medquad': ") and "too_long" in last
    assert "Traceback" not in printed
    (log_file,) = (tmp_path / ".mixtune" / "logs").glob("prepare-*.log")
    assert f"(traceback in {log_file}" in done.stderr
    logged = log_file.read_text()
    assert "Traceback" in logged and "RejectShareExceeded" in logged


@pytest.mark.slow
def test_plain_install_runs_from_an_empty_folder_into_folders_that_do_not_exist(tmp_path):
    # A non-editable install: the package as `pip install .` lays it out, configs and data inside.
    source, site = tmp_path / "src", tmp_path / "site"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(
        ".venv", ".git", ".mixtune", "__pycache__", "*.egg-info", "build", ".pytest_cache", ".hypothesis"))
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--disable-pip-version-check", "--target", str(site), str(source)], check=True, timeout=300)
    shutil.rmtree(source)
    cwd, new = tmp_path / "empty", tmp_path / "not" / "yet"
    cwd.mkdir()
    env = _cli_env(PYTHONPATH=str(site), PREFECT_HOME=str(new / "prefect"), HF_HOME=str(new / "hf"))
    where = subprocess.run(
        [sys.executable, "-c", "import mixtune.flows, mixtune.resources as r; print(r.data_dir()); "
                               "print(r.config_file('catalog-offline.yaml').parent); print(mixtune.flows.__file__)"],
        cwd=cwd, env=env, capture_output=True, text=True, check=True)
    data, configs, flows = (Path(line) for line in where.stdout.splitlines())
    assert all(site in p.parents for p in (data, configs, flows)), where.stdout  # the installed copy wins
    (cwd / "small.yaml").write_text(yaml.safe_dump(_small_config(data, configs, new)))

    done = subprocess.run([sys.executable, "-m", "mixtune.cli", "run", "small.yaml"], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    last = done.stdout.strip().splitlines()[-1]
    assert last.startswith(f"{DONE_MARKER} {new / 'store'}/compare/")
    report = Path(last.removeprefix(f"{DONE_MARKER} ").split(" (also")[0])
    assert report.name == "report.md" and report.read_text().strip()
    assert (new / "prefect").is_dir() and (new / "mlflow.db").is_file()
    assert "fatal: not a git repository" not in done.stderr
    assert list((cwd / ".mixtune" / "logs").glob("run-*.log"))
