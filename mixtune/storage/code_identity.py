"""What a cache key holds for code: every mixtune module a stage runs, and the libraries that shape its output.

A stage's result depends on more than the module its task names: the train
task calls ``mixtune.train.loop``, which packs with ``packing``, tokenizes
with ``chat_tokens`` and computes the loss in ``losses``. So the code version
is taken over the import closure: starting from the task module, every
``mixtune`` module it imports (at module level or inside a function, as
``tests/test_layout.py`` reads them), transitively, with the packages on the
way (their ``__init__``). An edit to ``mixtune/train/packing.py`` changes the
train stage's version and leaves the prepare stages', which never import it,
as they were.

Libraries count by version, not source: the closure's third-party imports,
kept to the ones that change what a stage computes (``OUTPUT_LIBRARIES``:
tokenization, chat templates, kernels, metrics, Parquet), plus what those
call to do it (transformers renders chat templates with jinja2 and tokenizes
with tokenizers). A missing library counts as ``absent``, so installing one
(e.g. liger-kernel) also changes the key. Logging, config and tracking
libraries stay out: an MLflow upgrade does not retrain a model.

Written here rather than taken from a library: Prefect's ``TASK_SOURCE``
hashes only the task function's own lines, and no packaging tool hashes an
import closure of first-party code.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.metadata
import importlib.util
import sys
from functools import lru_cache
from pathlib import Path
from typing import Callable, Iterable

FIRST_PARTY = "mixtune"
# Import name -> the distributions whose version changes what code importing it computes.
OUTPUT_LIBRARIES: dict[str, tuple[str, ...]] = {
    "torch": ("torch",),
    "transformers": ("transformers", "tokenizers", "safetensors", "jinja2"),
    "tokenizers": ("tokenizers",),
    "peft": ("peft",),
    "accelerate": ("accelerate",),
    "lm_eval": ("lm_eval", "datasets", "evaluate", "nltk", "langdetect"),
    "datasets": ("datasets", "pyarrow"),
    "polars": ("polars",),
    "pyarrow": ("pyarrow",),
    "numpy": ("numpy",),
    "safetensors": ("safetensors",),
    "gguf": ("gguf",),
    "liger_kernel": ("liger_kernel",),
    "nltk": ("nltk",),
}

SourceReader = Callable[[str], str]  # module name -> its source text


def module_source(name: str) -> str:
    """The source text of an importable module (``mixtune.tasks.train`` maps to tasks/train.py)."""
    module = sys.modules.get(name)
    origin = getattr(module, "__file__", None) if module is not None else None
    if origin is None:
        spec = importlib.util.find_spec(name)
        origin = spec.origin if spec is not None else None
    if origin is None or not origin.endswith(".py"):
        raise ModuleNotFoundError(f"no Python source for module {name!r}")
    return Path(origin).read_text(encoding="utf-8")


@lru_cache(maxsize=None)
def _is_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def _with_parents(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1)]


@lru_cache(maxsize=None)  # keyed by the text itself: an edited module is parsed again
def imported_names(name: str, source: str) -> frozenset[str]:
    """Absolute names a module's source imports (a ``from X import y`` gives X.y when it is a module)."""
    package = name if _is_package(name) else name.rpartition(".")[0]  # what a relative import starts from
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from .x import y
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)] if node.level > 1 else anchor
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            for alias in node.names:
                if base.split(".")[0] == FIRST_PARTY and _is_module(f"{base}.{alias.name}"):
                    found.add(f"{base}.{alias.name}")
    return frozenset(n for n in found if n)


def _is_package(name: str) -> bool:
    module = sys.modules.get(name)
    if module is not None:
        return hasattr(module, "__path__")
    spec = importlib.util.find_spec(name)
    return spec is not None and spec.submodule_search_locations is not None


def import_closure(roots: Iterable[str], read_source: SourceReader = module_source,
                   exclude: Iterable[str] = ()) -> tuple[list[str], set[str]]:
    """(first-party modules, sorted; top-level third-party import names) reachable from ``roots``.

    ``exclude`` names modules left out with everything only they import: the
    key-making plumbing, which decides where results go, not what a stage computes.
    """
    seen: set[str] = set(exclude)
    third_party: set[str] = set()
    pending = [parent for root in roots for parent in _with_parents(root)]
    while pending:
        name = pending.pop()
        if name in seen:
            continue
        seen.add(name)
        for imported in imported_names(name, read_source(name)):
            top = imported.split(".")[0]
            if top != FIRST_PARTY:
                third_party.add(top)
                continue
            # `from mixtune.x import name` where name is not a module still runs mixtune.x.
            pending += [m for m in _with_parents(imported) if m not in seen and _is_module(m)]
    return sorted(seen - set(exclude)), third_party


def library_versions(import_names: Iterable[str]) -> dict[str, str]:
    """Distribution -> installed version (or ``absent``) for the output-shaping libraries among ``import_names``."""
    versions = {}
    for dist in sorted({d for name in import_names for d in OUTPUT_LIBRARIES.get(name, ())}):
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            versions[dist] = "absent"
    return versions


def code_identity(roots: Iterable[str], read_source: SourceReader = module_source,
                  exclude: Iterable[str] = ()) -> dict[str, object]:
    """What the cache key holds for code: each closure module's source hash and the library versions."""
    modules, third_party = import_closure(roots, read_source, exclude)
    return {
        "modules": {name: hashlib.sha256(read_source(name).encode()).hexdigest() for name in modules},
        "libraries": library_versions(third_party),
    }
