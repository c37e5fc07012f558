"""The import graph runs cli -> flows -> tasks -> core, with no cycle and nothing pointing back up.

Every import counts, module-level and inside functions, so a lazy import
cannot hide a cycle. Files are read from the repository folders that the
package maps (tasks/ -> mixtune.tasks, flows/ -> mixtune.flows).
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {"mixtune": ROOT / "mixtune", "mixtune.tasks": ROOT / "tasks", "mixtune.flows": ROOT / "flows"}
# Higher layers may import lower ones only.
LAYER = {"core": 0, "tasks": 1, "flows": 2, "cli": 3}


def _modules() -> dict[str, Path]:
    modules = {}
    for package, folder in FOLDERS.items():
        for file in folder.rglob("*.py"):
            parts = list(file.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join([package, *parts])] = file
    return modules


MODULES = _modules()


def _imports(name: str, file: Path) -> set[str]:
    """The mixtune modules a file imports (a package name counts as its __init__)."""
    found = set()
    for node in ast.walk(ast.parse(file.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            base = node.module
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
        else:
            continue
        found |= {t for t in targets if t in MODULES and t != name}
    return found


GRAPH = {name: _imports(name, file) for name, file in MODULES.items()}


def _layer(module: str) -> int:
    if module == "mixtune.cli":
        return LAYER["cli"]
    for part in ("flows", "tasks"):
        if module == f"mixtune.{part}" or module.startswith(f"mixtune.{part}."):
            return LAYER[part]
    return LAYER["core"]


def test_layout_imports_never_point_up():
    upward = sorted((m, i) for m, targets in GRAPH.items() for i in targets if _layer(i) > _layer(m))
    assert upward == []


def test_layout_has_no_import_cycle():
    # Tarjan's strongly connected components: any component of two or more modules is a cycle.
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in GRAPH[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while (w := stack.pop()) != v:
                on_stack.discard(w)
                component.append(w)
            on_stack.discard(v)
            if component:
                cycles.append(sorted([v, *component]))

    for module in GRAPH:
        if module not in index:
            visit(module)
    assert cycles == []


def test_layout_core_has_no_prefect_import():
    # The CLI too lives in mixtune/: what it needs of Prefect comes through flows/.
    core = [m for m in MODULES if _layer(m) in (LAYER["core"], LAYER["cli"])]
    offenders = [m for m in core for node in ast.walk(ast.parse(MODULES[m].read_text()))
                 if isinstance(node, (ast.Import, ast.ImportFrom))
                 and any(n.split(".")[0] == "prefect" for n in
                         ([a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]))]
    assert offenders == []


def test_layout_installs_no_top_level_prefect_packages(tmp_path):
    # From a folder outside the checkout, as a team's own Prefect project imports: their flows/
    # and tasks/ must not collide with ours, which live at mixtune.flows and mixtune.tasks.
    probe = ("import importlib.util as u; "
             "print([n for n in ('flows', 'tasks') if u.find_spec(n)], bool(u.find_spec('mixtune.flows.pipeline')))")
    out = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, check=True,
                         env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert out.stdout.split() == ["[]", "True"]


def test_layout_every_subpackage_says_what_it_holds():
    for package in ("mixtune.prepare", "mixtune.mix", "mixtune.train", "mixtune.eval", "mixtune.storage",
                    "mixtune.models"):
        doc = ast.get_docstring(ast.parse(MODULES[package].read_text()))
        modules = [m.rsplit(".", 1)[1] for m in MODULES if m.startswith(package + ".")]
        assert doc and [m for m in modules if m not in doc] == [], package
