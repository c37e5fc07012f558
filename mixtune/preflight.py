"""What a config names must exist before any work starts: the model, its tokenizer, the eval tasks.

``config check`` (and every command that runs flows) calls ``check_config``
once, so a missing model folder, a folder without a tokenizer, or an unknown
benchmark is one error naming the field, not a traceback after prepare
(or sixteen of them, one per stage that loads the tokenizer).

What is checked, without loading any weights:

- ``model``: the tiny model's corpus files; a GGUF file (built-in, a path, or
  inside a folder); a local folder must hold ``config.json`` and a tokenizer;
  a hub id must be in the Hugging Face cache, or, when the hub may be used,
  answer a 10-second metadata query. A hub id that cannot be confirmed (hub
  offline or unreachable) is an error for a run, which would fail on it, and
  only a warning for ``config check``, which works offline.
- ``eval.general_tasks``: offline, each name must be one of the shipped
  benchmarks; online, a task or group lm-eval knows.
- ``data.sources``: a local file or folder must exist (remote ones, ``s3://``,
  ``https://``, ``hf://``, are read by ``download``).
"""

from __future__ import annotations

import os
from pathlib import Path

from mixtune.errors import ConfigError
from mixtune.sections import TINY_MODEL, ModelConfig

# Any one of these makes a folder loadable by AutoTokenizer.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
HUB_TIMEOUT_S = 10.0


class _Unconfirmed(str):
    """A problem that only says the hub could not be asked, not that the model is missing."""


def check_config(cfg, *, hub_must_answer: bool = True) -> list[str]:
    """Raise ``ConfigError`` listing every model and eval-task problem of a loaded ``MixtuneConfig``.

    Returns warnings: a hub model that could not be confirmed, when ``hub_must_answer`` is false.
    """
    found = model_problems(cfg.model) + eval_task_problems(cfg.eval) + source_problems(cfg.data.sources)
    warnings = [] if hub_must_answer else [p for p in found if isinstance(p, _Unconfirmed)]
    problems = [p for p in found if p not in warnings]
    if problems:
        raise ConfigError([str(p) for p in problems])
    return [str(w) for w in warnings]


def source_problems(sources) -> list[str]:
    """``data.sources[i].uri: ... does not exist`` for each local source missing on disk.

    Paths are absolute here (``load_config`` resolves them against the config
    file's folder), so the message shows where mixtune looked.
    """
    problems = []
    for i, source in enumerate(sources):
        uri = source.uri
        if "://" in uri or uri.startswith("hf:"):
            continue
        if not Path(uri).expanduser().exists():
            problems.append(f"data.sources[{i}].uri: {uri} does not exist (source {source.name!r}; a relative "
                            "path is read from the config file's folder)")
    return problems


def model_problems(model: ModelConfig) -> list[str]:
    """Problems with ``model``, each as 'model.<field>: message'; empty when it can be loaded."""
    if model.name_or_path == TINY_MODEL:
        if not model.tiny.corpus_files:
            return ["model.tiny.corpus_files: empty; the tiny model's tokenizer trains on local text files"]
        return [f"model.tiny.corpus_files: {f} does not exist" for f in model.tiny.corpus_files
                if not Path(f).is_file()]
    from mixtune.models import gguf_source

    try:
        if gguf_source(model) is not None:
            return []  # one file holds the weights and the tokenizer
    except FileNotFoundError as error:
        return [str(error) if str(error).startswith("model.") else f"model.gguf_file: {error}"]
    except Exception as error:  # the hub could not hand over the file (offline, unknown repo, no access)
        return [f"model.gguf_file: {model.gguf_file!r} could not be fetched from {model.name_or_path!r}: "
                f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"]
    folder = Path(model.name_or_path).expanduser()
    if folder.is_dir():
        problems = []
        if not (folder / "config.json").is_file():
            problems.append(f"model.name_or_path: {folder} has no config.json; it is not a Hugging Face model "
                            "folder (for a GGUF file inside it, set model.gguf_file)")
        if not any((folder / name).is_file() for name in TOKENIZER_FILES):
            problems.append(f"model.name_or_path: {folder} has no tokenizer (none of {', '.join(TOKENIZER_FILES)})")
        return problems
    if folder.exists():
        return [f"model.name_or_path: {folder} is a file; give a model folder, or the file as model.gguf_file"]
    if _looks_like_path(model.name_or_path):
        return [f"model.name_or_path: {model.name_or_path} does not exist"]
    return _hub_problems(model)


def _looks_like_path(name: str) -> bool:
    """A hub id is 'name' or 'org/name'; anything else is meant as a path."""
    return name.startswith(("/", ".", "~")) or name.count("/") > 1 or "\\" in name or name.endswith(".gguf")


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def _hub_problems(model: ModelConfig) -> list[str]:
    from huggingface_hub import try_to_load_from_cache

    def cached(filename: str) -> bool:
        return isinstance(try_to_load_from_cache(model.name_or_path, filename, revision=model.revision), str)

    if cached("config.json"):
        if any(cached(name) for name in TOKENIZER_FILES):
            return []
        return [f"model.name_or_path: {model.name_or_path!r} is in the Hugging Face cache without a tokenizer "
                f"(none of {', '.join(TOKENIZER_FILES)})"]
    if _hub_offline():
        return [_Unconfirmed(
            f"model.name_or_path: {model.name_or_path!r} is neither a local folder nor in the Hugging Face "
            "cache, and HF_HUB_OFFLINE is set; download it first or give a local folder")]
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    try:
        info = HfApi().model_info(model.name_or_path, revision=model.revision, timeout=HUB_TIMEOUT_S)
        files = {sibling.rfilename for sibling in info.siblings or []}
    except Exception as error:
        first_line = str(error).splitlines()[0] if str(error) else ""
        message = (f"model.name_or_path: {model.name_or_path!r} is not a local folder, and the Hugging Face hub "
                   f"did not confirm it within {HUB_TIMEOUT_S:g} s ({type(error).__name__}: {first_line})")
        # The hub answered "no" (not found, gated): a fault. No answer at all: unconfirmed.
        return [message if isinstance(error, HfHubHTTPError) else _Unconfirmed(message)]
    if not any(name in files for name in TOKENIZER_FILES):
        return [f"model.name_or_path: hub repo {model.name_or_path!r} has no tokenizer "
                f"(none of {', '.join(TOKENIZER_FILES)})"]
    return []


def eval_task_problems(eval_cfg) -> list[str]:
    """Unknown benchmark names in ``eval.general_tasks``, each naming its index."""
    if not eval_cfg.general_tasks:
        return []
    from mixtune.eval.benchmarks import OFFLINE_BENCHMARKS
    from mixtune.eval.general import resolve_offline

    if resolve_offline(eval_cfg):
        known, where = set(OFFLINE_BENCHMARKS), f"offline benchmarks are {', '.join(OFFLINE_BENCHMARKS)}"
    else:
        from lm_eval.tasks import TaskManager

        known, where = set(TaskManager().all_tasks), "not an lm-eval task or group name"
    return [f"eval.general_tasks[{i}].name: {task.name!r} is unknown; {where}"
            for i, task in enumerate(eval_cfg.general_tasks) if task.name not in known]
