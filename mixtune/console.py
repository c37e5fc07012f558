"""What the ``mixtune`` command prints, and the log file that keeps everything else.

The console shows mixtune's stage lines and progress. The log file (one per
command, under ``.mixtune/logs/`` in the working directory unless
``MIXTUNE_LOG_DIR`` says otherwise) keeps every record the console shows plus
what it leaves out, tracebacks included:

- A user-facing error (``MixtuneError``, a config error included) is printed
  once, by the CLI, as the last line. Prefect logs the same exception from the
  failing task run and again from every flow run above it, with a traceback
  each time; those records go to the log file only, and so do records of an
  exception raised while handling one (an MLflow store failing on the same
  full disk as it ends the run). Any other exception keeps
  its tracebacks on the console.
- Library chatter that tells a user nothing goes to the log file at DEBUG:
  lm-eval's per-task "Custom kwargs can be passed to --metadata" note and its
  "generation_kwargs ... specified through cli" advice,
  FutureWarning and DeprecationWarning from libraries (peft, transformers), and
  the "Stopping temporary server" and "Still processing items" lines Prefect
  writes at exit, after the CLI's last line.

Standard ``logging`` filters do the routing, so Prefect's own handlers (its
console and the API handler that feeds the UI) stay as Prefect configures
them: the UI still shows every failure. Nothing here imports Prefect; the CLI
calls ``setup`` after Prefect has configured logging.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Callable

from mixtune.errors import MixtuneError, causes

LOG_DIR_ENV = "MIXTUNE_LOG_DIR"
LIBRARY_LOGGER = "mixtune.libraries"  # file-only records about libraries
_FILE_ONLY = "mixtune_file_only"  # LogRecord attribute: the console skips the record

# (logger name, test on the message): library records demoted to DEBUG, log file only.
_DEMOTED: list[tuple[str, Callable[[str], bool]]] = [
    # One per offline task (~60 a run): advice for lm-eval's own CLI, not for a mixtune user.
    ("lm_eval.api.task", lambda msg: "Custom kwargs can be passed to `--metadata`" in msg),
    # Advice for lm-eval's CLI users, once per call with max_gen_toks; mixtune always decodes greedily.
    ("lm_eval.evaluator", lambda msg: "specified through cli, these settings will update" in msg),
    # Written by an atexit hook after the CLI's last line (the report or the error).
    ("prefect", lambda msg: msg.startswith("Stopping temporary server")),
    # Also at exit, after a run that failed fast: Prefect's event queue draining.
    ("EventsWorker", lambda msg: msg.startswith("Still processing items")),
]
_LIBRARY_WARNINGS = (FutureWarning, DeprecationWarning, PendingDeprecationWarning)
# What the last `setup` added, so a second call (several commands in one process, as in tests)
# replaces it instead of stacking filters and log files.
_installed: dict[str, object] = {}


def default_log_file(command: str) -> Path:
    """A new log file path for one command run; its folder is created, parents included.

    ``$MIXTUNE_LOG_DIR`` or ``./.mixtune/logs``; the file itself is created on
    the first record. Raises OSError when the folder cannot be created.
    """
    folder = Path(os.environ.get(LOG_DIR_ENV) or Path(".mixtune", "logs")).expanduser().resolve()
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{command}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"


def _squash(text: str) -> str:
    # Prefect shows the error inside a state's repr: quotes and backslashes may be added.
    return re.sub(r"[\\'\"]", "", text)


class _ConsoleFilter(logging.Filter):
    """Keeps file-only records and repeats of a user-facing error off the console."""

    def __init__(self, show_errors: bool) -> None:
        super().__init__("")
        self.show_errors = show_errors
        self.errors: list[str] = []  # squashed first lines of the MixtuneErrors seen

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, _FILE_ONLY, False):
            return False
        if self.show_errors:
            return True
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None and user_facing_error(exc) is not None:
            # The error itself, or one raised while handling it (a cleanup that failed on the same
            # full disk): either way the CLI prints the user-facing one, once.
            for error in {exc, user_facing_error(exc)}:
                first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
                if first_line:
                    self.errors.append(_squash(first_line))
            return False
        if self.errors:
            message = _squash(record.getMessage())
            return not any(error in message for error in self.errors)
        return True


def user_facing_error(exc: BaseException) -> MixtuneError | None:
    """``exc`` if it is a MixtuneError, else the first one it was raised from or while handling."""
    return next((e for e in causes(exc) if isinstance(e, MixtuneError)), None)


class _Demote(logging.Filter):
    """On a library logger: matching records become DEBUG and file-only."""

    def __init__(self, matches: Callable[[str], bool]) -> None:
        super().__init__("")
        self.matches = matches

    def filter(self, record: logging.LogRecord) -> bool:
        if self.matches(record.getMessage()):
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            setattr(record, _FILE_ONLY, True)
        return True


class _FileFormatter(logging.Formatter):
    """Prefect's run records carry the run's name; the log file shows it like Prefect's console."""

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        for attr, label in (("task_run_name", "Task run"), ("flow_run_name", "Flow run")):
            name = getattr(record, attr, None)
            if name:
                return line.replace(" - ", f" - {label} {name!r} - ", 1)
        return line


def _route_library_warnings() -> None:
    """FutureWarning/DeprecationWarning raised in library code go to the log file at DEBUG."""
    shown = warnings.showwarning
    if getattr(shown, "_mixtune", False):
        return
    library_log = logging.getLogger(LIBRARY_LOGGER)
    library_log.setLevel(logging.DEBUG)
    ours = str(Path(__file__).resolve().parent)

    def showwarning(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, _LIBRARY_WARNINGS) and not str(filename).startswith(ours):
            library_log.debug(warnings.formatwarning(message, category, filename, lineno, line).rstrip(),
                              extra={_FILE_ONLY: True})
        else:
            shown(message, category, filename, lineno, file, line)

    showwarning._mixtune = True  # type: ignore[attr-defined]
    warnings.showwarning = showwarning


def _quiet_git_probe() -> None:
    """lm-eval's ``git describe`` probe, without git's "fatal: not a git repository" on the console.

    ``simple_evaluate`` records the git commit of the working directory; outside
    a repository git writes that line straight to the terminal (it is a child
    process, so logging cannot catch it). Same probe, same fallback, stderr
    discarded. The hash names the caller's folder, not the model, so nothing is lost.
    """
    try:
        import lm_eval.evaluator as evaluator
        from lm_eval.loggers.utils import get_commit_from_path
    except ImportError:
        return

    def get_git_commit_hash() -> str | None:
        try:
            out = subprocess.check_output(["git", "describe", "--always"], stderr=subprocess.DEVNULL)
            return out.strip().decode()
        except (subprocess.CalledProcessError, FileNotFoundError):
            return get_commit_from_path(os.getcwd())

    evaluator.get_git_commit_hash = get_git_commit_hash


def setup(log_file: Path | None, *, verbose: bool = False, evaluating: bool = False) -> None:
    """Route records for one command run; call after Prefect has configured logging.

    ``log_file``: every record at DEBUG and up that reaches the root logger
    (Prefect's run records, library warnings, the demoted chatter, tracebacks).
    ``verbose``: user-facing errors keep their records and tracebacks on the
    console too. ``evaluating``: the command runs lm-eval (quiets its git probe;
    imports lm-eval, so leave it off for commands that do not evaluate).
    """
    root = logging.getLogger()
    previous_filter, previous_file = _installed.get("console_filter"), _installed.get("file_handler")
    if isinstance(previous_file, logging.FileHandler):
        root.removeHandler(previous_file)
        previous_file.close()
    console_filter = _ConsoleFilter(show_errors=verbose)
    for handler in root.handlers:
        if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
            if isinstance(previous_filter, logging.Filter):
                handler.removeFilter(previous_filter)
            handler.addFilter(console_filter)
    _installed["console_filter"] = console_filter
    if "demoted" not in _installed:
        for name, matches in _DEMOTED:
            logging.getLogger(name).addFilter(_Demote(matches))
        _installed["demoted"] = True
    if log_file is not None:
        file_handler = logging.FileHandler(log_file, encoding="utf-8", delay=True)
        file_handler.setLevel(logging.DEBUG)
        file_handler.setFormatter(_FileFormatter("%(asctime)s | %(levelname)-7s | %(name)s - %(message)s"))
        root.addHandler(file_handler)
        _installed["file_handler"] = file_handler
    _route_library_warnings()
    if evaluating:
        _quiet_git_probe()


def report_error(exc: MixtuneError, log_file: Path | None, *, verbose: bool = False) -> None:
    """Print a user-facing error once, as the last line on stderr; its traceback goes to the log.

    With ``verbose`` the traceback is printed above the error line instead.
    """
    if log_file is not None:
        logging.getLogger("mixtune.cli").error("stopped on a user-facing error", exc_info=exc)
    if verbose:
        import traceback

        traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
    elif log_file is not None and log_file.exists():
        print(f"(traceback in {log_file}; --verbose prints it here)", file=sys.stderr)
    print(f"error: {exc}", file=sys.stderr, flush=True)
