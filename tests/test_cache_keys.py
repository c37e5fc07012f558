"""Caches tell the truth: a stage's key covers all mixtune code it runs, the libraries that shape its
output, and the model's weights.

The reported fault: the train key hashed ``train_job`` and its own lines only, so an edit to
``packing``, ``chat_tokens``, ``losses``, ``model`` or ``checkpoints`` reused an adapter trained by
the old code, and no key held a library version.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mixtune.sections import ModelConfig, StorageConfig
from mixtune.storage.code_identity import import_closure, library_versions
from mixtune.tasks import _stage

from conftest import DEMO_CORPUS

REPO = Path(__file__).resolve().parents[1]
PREPARE_STAGES = ("download", "sanitize", "transform", "validate", "split", "mix-manifest")
TRAINING_HELPERS = ("packing", "chat_tokens", "losses", "model", "checkpoints", "data", "loop")


def _closure(task: str) -> tuple[list[str], dict[str, str]]:
    modules, libraries = import_closure([f"mixtune.tasks.{task}"], exclude=["mixtune.tasks._stage"])
    return modules, library_versions(libraries)


def test_train_closure_holds_every_training_helper_and_prepare_holds_none():
    train_modules, train_libraries = _closure("train")
    assert {f"mixtune.train.{m}" for m in TRAINING_HELPERS} <= set(train_modules)
    assert {"torch", "transformers", "tokenizers", "peft"} <= set(train_libraries)
    for task in ("download", "sanitize", "transform", "validate", "split", "mix_manifest"):
        modules, libraries = _closure(task)
        assert [m for m in modules if m.startswith("mixtune.train.") and m != "mixtune.train.config"] == [], task
        assert "peft" not in libraries and "lm_eval" not in libraries, task
    assert "lm_eval" in _closure("evaluate")[1]
    assert {"polars"} <= set(_closure("split")[1]) and "torch" not in _closure("download")[1]
    assert "transformers" in _closure("validate")[1]  # it counts tokens with the model's tokenizer


def _package_copy(root: Path) -> Path:
    """mixtune as installed (tasks/ and flows/ at mixtune.tasks and mixtune.flows), copied to ``root``."""
    ignore = shutil.ignore_patterns("__pycache__")
    shutil.copytree(REPO / "mixtune", root / "mixtune", ignore=ignore)
    for folder in ("tasks", "flows", "configs"):
        shutil.copytree(REPO / folder, root / "mixtune" / folder, ignore=ignore)
    (root / "mixtune" / "data").symlink_to(REPO / "data")
    return root


_PRINT_VERSIONS = """
import importlib, json, mixtune
from mixtune.tasks import _stage
for task in ("download", "sanitize", "transform", "validate", "split", "mix_manifest", "train", "evaluate", "compare"):
    importlib.import_module(f"mixtune.tasks.{task}")
print(json.dumps({"file": mixtune.__file__, "versions": {n: _stage._VERSIONS[n] for n in sorted(_stage._ROOTS)}}))
"""


def _stage_versions(copies: list[Path]) -> list[dict]:
    """Each copy's stage code versions, as a fresh process importing that copy computes them."""
    runs = [subprocess.Popen([sys.executable, "-c", _PRINT_VERSIONS], cwd=copy, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(copy)})
            for copy in copies]
    results = []
    for copy, run in zip(copies, runs):
        out, err = run.communicate(timeout=300)
        assert run.returncode == 0, err[-2000:]
        printed = json.loads(out.strip().splitlines()[-1])
        assert printed["file"].startswith(str(copy)), printed["file"]
        results.append(printed["versions"])
    return results


def test_editing_a_training_helper_reruns_train_and_keeps_prepare_cached(tmp_path):
    before = _package_copy(tmp_path / "before")
    after = tmp_path / "after"
    shutil.copytree(before, after, symlinks=True)
    packing = after / "mixtune" / "train" / "packing.py"
    text = packing.read_text()
    edited = text.replace("def pack(examples: Sequence[TokenizedChat]) -> MicroBatch:",
                          "def pack(examples: Sequence[TokenizedChat]) -> MicroBatch:  # edited", 1)
    assert edited != text
    packing.write_text(edited)

    old, new = _stage_versions([before, after])
    assert set(old) >= {*PREPARE_STAGES, "train", "eval_general", "eval_domain", "compare"}
    assert old["train"] != new["train"]
    assert {s: new[s] for s in PREPARE_STAGES} == {s: old[s] for s in PREPARE_STAGES}
    assert (new["eval_general"], new["eval_domain"]) == (old["eval_general"], old["eval_domain"])


def test_a_library_upgrade_changes_the_stages_it_shapes(monkeypatch):
    import importlib.metadata

    import mixtune.tasks.download  # noqa: F401  (registers the stages)
    import mixtune.tasks.evaluate  # noqa: F401
    import mixtune.tasks.train  # noqa: F401

    stages = ("download", "train", "eval_general")
    versions = {stage: _stage.stage_code_version(stage) for stage in stages}
    real = importlib.metadata.version

    def upgraded(names: set[str]):
        return lambda dist: "999.0" if dist in names else real(dist)

    monkeypatch.setattr(importlib.metadata, "version", upgraded({"transformers"}))
    assert [_stage.stage_code_version(s) != versions[s] for s in stages] == [False, True, True]
    monkeypatch.setattr(importlib.metadata, "version", upgraded({"lm_eval"}))
    assert [_stage.stage_code_version(s) != versions[s] for s in stages] == [False, False, True]
    monkeypatch.setattr(importlib.metadata, "version", upgraded({"polars"}))
    assert [_stage.stage_code_version(s) != versions[s] for s in stages] == [True, True, True]


@pytest.mark.parametrize("stage", ["sanitize", "validate", "train", "eval_general", "eval_domain"])
def test_every_stage_that_loads_a_model_keys_on_its_weights_not_only_their_name(stage, tmp_path):
    import mixtune.tasks.evaluate  # noqa: F401  (registers the stages)
    import mixtune.tasks.sanitize  # noqa: F401
    import mixtune.tasks.train  # noqa: F401
    import mixtune.tasks.validate  # noqa: F401
    from mixtune.eval.config import EvalConfig

    corpus = tmp_path / "corpus.jsonl"
    corpus.write_bytes(DEMO_CORPUS.read_bytes()[:20_000])
    model = ModelConfig(name_or_path="mixtune:tiny", tiny={"corpus_files": [str(corpus)]})
    parameters = {"model": model, "eval_cfg": EvalConfig(general_tasks=[]),
                  "storage": StorageConfig(root=str(tmp_path / "store"))}
    key = _stage.content_key(stage, parameters)
    corpus.write_bytes(DEMO_CORPUS.read_bytes()[20_000:40_000])  # same path and name, other tokenizer text
    assert _stage.content_key(stage, parameters) != key
