"""Impossible configs are refused by `mixtune config check`: numbers out of range, a missing model or
tokenizer, an unknown benchmark. Each case is a value a fault-injection run accepted before."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from mixtune.cli import main
from mixtune.sections import MAX_SEED, SplitConfig, TinyModelConfig, ValidateConfig
from mixtune.train.config import LoraSettings, TrainConfig

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "data" / "medquad" / "medquad.jsonl"


def _check(tmp_path: Path, capsys, **sections) -> tuple[int, str]:
    """Run `mixtune config check` on the tiny-model config with these sections merged in."""
    raw = {"data": {"sources": [{"name": "med", "uri": str(DATA),
                                 "columns": {"kind": "prompt_response", "prompt": "question", "response": "answer"}}]},
           "model": {"name_or_path": "mixtune:tiny", "tiny": {"corpus_files": [str(DATA)]}},
           "eval": {"offline": True, "general_tasks": ["arc_easy"]},
           "categories": {"math": [{"name": "gsm8k-small",
                                    "uri": str(REPO / "data/categories/math/gsm8k_train_first300.jsonl"),
                                    "columns": {"kind": "prompt_response", "prompt": "question",
                                                "response": "answer"}}]},
           "train": {"max_steps": 10, "global_batch_size": 16}}
    for name, section in sections.items():
        raw[name] = {**raw.get(name, {}), **section} if isinstance(section, dict) else section
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    capsys.readouterr()
    code = main(["config", "check", str(path)])
    return code, capsys.readouterr().err


def test_a_sound_config_passes(tmp_path, capsys):
    code, err = _check(tmp_path, capsys, mix={"domain_percent": 50, "weights": {"math": 1}})
    assert code == 0, err


@pytest.mark.parametrize(("sections", "named"), [
    ({"train": {"learning_rate": float("inf")}}, "train.learning_rate"),
    ({"train": {"learning_rate": float("nan")}}, "train.learning_rate"),
    ({"train": {"learning_rate": 3.0}}, "train.learning_rate"),
    ({"train": {"epochs": float("inf"), "max_steps": None}}, "train.epochs"),
    ({"train": {"max_steps": 1e12}}, "train.max_steps"),
    ({"train": {"max_steps": int(1e8)}}, "train.max_steps"),
    # Within max_steps' own range, but 1.6e8 manifest rows: the product is refused.
    ({"train": {"max_steps": 10_000_000}}, "max_steps x global_batch_size"),
    ({"train": {"max_grad_norm": float("inf")}}, "train.max_grad_norm"),
    ({"train": {"seed": MAX_SEED + 1}}, "train.seed"),
    ({"mix": {"domain_percent": 1e-300, "weights": {"math": 1}}}, "mix.domain_percent"),
    ({"mix": {"domain_percent": 50, "weights": {"math": 1e308, "code": 1e308}}}, "mix.weights.math"),
    ({"mix": {"domain_percent": 50, "weights": {"math": float("inf")}}}, "mix.weights.math"),
    # A weighted category that gets no sample is a warning, not a refusal (test_mix_flow.py).
    ({"split": {"seed": -1}}, "split.seed"),
    ({"validate": {"max_reject_percent": float("nan")}}, "validate.max_reject_percent"),
])
def test_impossible_numbers_are_refused_naming_the_field(tmp_path, capsys, sections, named):
    code, err = _check(tmp_path, capsys, **sections)
    assert code == 2
    assert named in err
    # Read as mixtune's own sentence: no pydantic prefix, the refused value said once.
    assert "Value error" not in err and all(line.count("got") <= 1 for line in err.splitlines())


def test_a_category_share_below_one_sample_is_refused_with_the_fix(tmp_path, capsys):
    # 10 steps x 16 = 160 samples, 0.001% of them domain: 0.0016 samples.
    code, err = _check(tmp_path, capsys, mix={"domain_percent": 0.001, "weights": {"math": 1}})
    assert code == 2
    assert "mix.domain_percent: gives 0.0016 of the 160 planned samples" in err


@pytest.mark.parametrize("section", [TrainConfig, LoraSettings, SplitConfig, ValidateConfig, TinyModelConfig],
                         ids=lambda s: s.__name__)
def test_every_number_field_has_both_bounds(section):
    import annotated_types as at

    for name, field in section.model_fields.items():
        if field.annotation in (int, float, int | None, float | None):
            kinds = {type(m) for m in field.metadata}
            assert kinds & {at.Ge, at.Gt} and kinds & {at.Le, at.Lt}, f"{section.__name__}.{name}"


def test_a_missing_model_folder_is_named_once(tmp_path, capsys):
    code, err = _check(tmp_path, capsys, model={"name_or_path": str(tmp_path / "no-such-model")})
    assert code == 2
    assert err.count("model.name_or_path") == 1 and "does not exist" in err


def test_a_missing_data_file_is_refused_by_config_check_naming_the_source(tmp_path, capsys):
    missing = tmp_path / "nothere.jsonl"
    code, err = _check(tmp_path, capsys, data={"sources": [{"name": "med", "uri": str(missing), "columns": {
        "kind": "prompt_response", "prompt": "question", "response": "answer"}}]})
    assert code == 2
    assert f"data.sources[0].uri: {missing} does not exist (source 'med'" in err


def test_a_model_folder_without_a_tokenizer_is_refused(tmp_path, capsys, tiny_model_dir):
    folder = tmp_path / "weights-only"
    shutil.copytree(tiny_model_dir, folder)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja"):
        (folder / name).unlink(missing_ok=True)
    code, err = _check(tmp_path, capsys, model={"name_or_path": str(folder)})
    assert code == 2
    assert "has no tokenizer" in err


def test_a_whole_model_folder_passes(tmp_path, capsys, tiny_model_dir):
    code, err = _check(tmp_path, capsys, model={"name_or_path": str(tiny_model_dir)})
    assert code == 0, err


def test_an_unknown_eval_task_is_found_by_config_check(tmp_path, capsys):
    code, err = _check(tmp_path, capsys, eval={"offline": True, "general_tasks": ["arc_easy", "mmluu"]})
    assert code == 2
    assert "eval.general_tasks[1].name: 'mmluu' is unknown" in err


def test_config_check_only_warns_about_a_hub_model_it_cannot_confirm_offline(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, err = _check(tmp_path, capsys, model={"name_or_path": "no-such-org/no-such-model"})
    assert code == 0
    assert "warning: model.name_or_path: 'no-such-org/no-such-model' is neither a local folder" in err


def test_a_run_refuses_a_hub_model_it_cannot_confirm_offline(monkeypatch):
    from mixtune.config import parse_config
    from mixtune.errors import ConfigError
    from mixtune.preflight import check_config

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = parse_config({"data": {"sources": [{"name": "d", "uri": str(DATA)}]},
                        "model": {"name_or_path": "no-such-org/no-such-model"},
                        "eval": {"offline": True, "general_tasks": []}})
    with pytest.raises(ConfigError, match="no-such-org/no-such-model' is neither a local folder"):
        check_config(cfg)
