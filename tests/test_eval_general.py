"""General axis offline: the shipped task set on the tiny model, base and base + adapter."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest

from mixtune.errors import ConfigError
from mixtune.eval.config import EvalConfig
from mixtune.eval.general import flatten_scores, resolve_offline, run_general
from mixtune.eval.benchmarks import (
    PROJECT_DATA_DIR,
    arc_challenge_offline_task,
    arc_easy_offline_task,
    gsm8k_fewshot_pool,
    gsm8k_offline_task,
    ifeval_offline_task,
    mmlu_offline_tasks,
    offline_data_files,
    offline_tasks,
    piqa_offline_task,
    use_project_nltk_data,
)

# Small and fast: one shared setting, so each run is a single simple_evaluate call, and 1 shot
# exercises every few-shot source (mmlu dev, gsm8k train rows, arc dev, arc_easy and piqa validation;
# ifeval stays 0-shot by design).
BENCHMARKS = ("mmlu", "ifeval", "gsm8k", "arc_challenge", "arc_easy", "piqa")
SETTINGS = dict(
    offline=True, device="cpu", dtype="float32", batch_size=16, max_length=1024,
    general_tasks=[{"name": n, "limit": 2, "num_fewshot": 1, "max_gen_toks": 8} for n in BENCHMARKS],
)
EXPECTED_KEYS = {
    "mmlu/acc", "mmlu_medical/acc",
    "ifeval/prompt_level_strict_acc", "ifeval/inst_level_strict_acc",
    "ifeval/prompt_level_loose_acc", "ifeval/inst_level_loose_acc",
    "gsm8k/exact_match.strict-match", "gsm8k/exact_match.flexible-extract",
    "arc_challenge/acc", "arc_challenge/acc_norm",
    "arc_easy/acc", "arc_easy/acc_norm",
    "piqa/acc", "piqa/acc_norm",
}
INSTALLED_TASKS = Path(__import__("lm_eval").__file__).parent / "tasks"


@pytest.fixture(scope="module")
def runs(tiny_model_dir, tmp_path_factory):
    """One base and one base + adapter evaluation, shared by the module (lm-eval setup is slow)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    adapter_dir = tmp_path_factory.mktemp("adapter")
    # Random (not zero) LoRA B: an untrained-but-nonzero adapter really changes the log-likelihoods.
    lora = LoraConfig(r=4, lora_alpha=64, target_modules=["q_proj", "v_proj"], init_lora_weights=False,
                      task_type="CAUSAL_LM")
    get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir), lora).save_pretrained(adapter_dir)
    cfg = EvalConfig(**SETTINGS)
    base = run_general(str(tiny_model_dir), cfg, log_samples=True)
    tuned = run_general(str(tiny_model_dir), cfg, adapter_dir=str(adapter_dir), log_samples=True)
    return base, tuned


def test_every_offline_benchmark_reports_its_standard_metrics(runs):
    for run in runs:
        assert set(run.scores) == EXPECTED_KEYS
        assert all(0.0 <= v <= 1.0 for v in run.scores.values())
        subjects = len(list((PROJECT_DATA_DIR / "mmlu" / "test").glob("*_test.csv")))
        assert run.docs_evaluated == {"mmlu": 2 * subjects, "ifeval": 2, "gsm8k": 2, "arc_challenge": 2,
                                      "arc_easy": 2, "piqa": 2}
        assert len(run.raw_results) == 1  # one shared setting, one simple_evaluate call


def test_base_and_adapter_see_identical_requests_but_score_different_models(runs):
    base, tuned = runs
    assert base.samples.keys() == tuned.samples.keys()
    for task, samples in base.samples.items():
        assert [s["arguments"] for s in samples] == [s["arguments"] for s in tuned.samples[task]], task
    base_ll = [r for s in base.samples["arc_challenge_offline"] for r in s["filtered_resps"]]
    tuned_ll = [r for s in tuned.samples["arc_challenge_offline"] for r in s["filtered_resps"]]
    assert base_ll != tuned_ll


def test_mmlu_one_shot_prompt_renders_like_the_standard_task(runs):
    def first_row(split: str) -> list[str]:
        with open(PROJECT_DATA_DIR / "mmlu" / split / f"anatomy_{split}.csv", encoding="utf-8", newline="") as f:
            return next(csv.reader(f))

    shot, test = first_row("dev"), first_row("test")
    expected = (
        "The following are multiple choice questions (with answers) about anatomy.\n\n"
        f"{shot[0].strip()}\nA. {shot[1]}\nB. {shot[2]}\nC. {shot[3]}\nD. {shot[4]}\nAnswer: {shot[5]}\n\n"
        f"{test[0].strip()}\nA. {test[1]}\nB. {test[2]}\nC. {test[3]}\nD. {test[4]}\nAnswer:"
    )
    sample = runs[0].samples["mmlu_offline_anatomy"][0]
    assert [a[0] for a in sample["arguments"]] == [expected] * 4
    assert [a[1] for a in sample["arguments"]] == [" A", " B", " C", " D"]
    assert sample["target"] == "ABCD".index(test[5])


def _jsonl(relative: str) -> list[dict]:
    with open(PROJECT_DATA_DIR / relative, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def test_arc_gsm8k_and_ifeval_prompts_render_like_the_standard_tasks(runs):
    samples = runs[0].samples
    # ARC: "Question: <stem>\nAnswer:" scored against each choice text; the shot comes from dev, answered.
    arc = _jsonl("arc_challenge/ARC-Challenge-Test.jsonl")[0]
    question = f"Question: {arc['question']['stem']}\nAnswer:"
    arc_args = samples["arc_challenge_offline"][0]["arguments"]
    assert [a[1] for a in arc_args] == [f" {c['text']}" for c in arc["question"]["choices"]]
    shot, rest = arc_args[0][0].split("\n\n", 1)
    assert rest == question
    dev_shots = {f"Question: {d['question']['stem']}\nAnswer: "
                 + next(c["text"] for c in d["question"]["choices"] if c["label"] == d["answerKey"])
                 for d in _jsonl("arc_challenge/ARC-Challenge-Dev.jsonl")}
    assert shot in dev_shots
    labels = [c["label"] for c in arc["question"]["choices"]]
    assert samples["arc_challenge_offline"][0]["target"] == labels.index(arc["answerKey"])
    # GSM8K: "Question: ...\nAnswer:" after a worked train example.
    gsm = _jsonl("gsm8k/test.jsonl")[0]
    shot, rest = samples["gsm8k_offline"][0]["arguments"][0][0].split("\n\n", 1)
    assert rest == f"Question: {gsm['question']}\nAnswer:"
    pool = gsm8k_fewshot_pool(PROJECT_DATA_DIR)
    assert shot in {f"Question: {t['question']}\nAnswer: {t['answer']}" for t in _jsonl(str(pool))}
    assert samples["gsm8k_offline"][0]["target"] == gsm["answer"]
    # IFEval: the prompt exactly, no shots even when num_fewshot is asked for.
    ifeval = _jsonl("ifeval/input_data.jsonl")[0]
    assert samples["ifeval_offline"][0]["arguments"][0][0] == ifeval["prompt"]


def test_arc_easy_and_piqa_prompts_render_like_the_standard_tasks(runs):
    samples = runs[0].samples
    # ARC-Easy: as ARC-Challenge; the test file is in the hub schema, the shot comes from validation.
    arc = _jsonl("arc_easy/ARC-Easy-test.jsonl")[0]
    arc_args = samples["arc_easy_offline"][0]["arguments"]
    assert [a[1] for a in arc_args] == [f" {c}" for c in arc["choices"]["text"]]
    shot, rest = arc_args[0][0].split("\n\n", 1)
    assert rest == f"Question: {arc['question']}\nAnswer:"
    assert shot in {f"Question: {d['question']}\nAnswer: {d['choices']['text'][d['choices']['label'].index(d['answerKey'])]}"
                    for d in _jsonl("arc_easy/ARC-Easy-validation.jsonl")}
    assert samples["arc_easy_offline"][0]["target"] == arc["choices"]["label"].index(arc["answerKey"])
    # PIQA: "Question: <goal>\nAnswer:" scored against sol1 and sol2; the label comes from the .lst file.
    questions = _jsonl("piqa/valid.jsonl")
    labels = (PROJECT_DATA_DIR / "piqa" / "valid-labels.lst").read_text().split()
    for sample in samples["piqa_offline"]:
        doc = questions[sample["doc_id"]]
        args = sample["arguments"]
        assert [a[1] for a in args] == [f" {doc['sol1']}", f" {doc['sol2']}"]
        shot, rest = args[0][0].split("\n\n", 1)
        assert rest == f"Question: {doc['goal']}\nAnswer:"
        others = {f"Question: {q['goal']}\nAnswer: {q['sol' + str(int(y) + 1)]}"
                  for q, y in zip(questions, labels) if q != doc}
        assert shot in others  # a validation shot, never the question itself
        assert sample["target"] == int(labels[sample["doc_id"]])


def test_arc_easy_and_piqa_ship_their_whole_standard_split():
    [arc] = offline_tasks("arc_easy")
    [piqa] = offline_tasks("piqa")
    arc_data, piqa_data = arc["custom_dataset"](), piqa["custom_dataset"]()
    assert (arc_data["test"].num_rows, arc_data["validation"].num_rows) == (2376, 570)
    assert piqa_data["validation"].num_rows == 1838
    labels = (PROJECT_DATA_DIR / "piqa" / "valid-labels.lst").read_text().split()
    assert piqa_data["validation"][5] == _jsonl("piqa/valid.jsonl")[5] | {"label": int(labels[5])}
    assert piqa_data["validation"]["label"] == [int(y) for y in labels]


def test_piqa_labels_that_do_not_match_the_questions_are_refused(tmp_path):
    shutil.copytree(PROJECT_DATA_DIR / "piqa", tmp_path / "piqa")
    labels = tmp_path / "piqa" / "valid-labels.lst"
    labels.write_text(labels.read_text().replace("0\n", "2\n", 1))
    with pytest.raises(ConfigError, match="valid-labels.lst: line 1: label '2' is not 0 or 1"):
        piqa_offline_task(tmp_path)["custom_dataset"]()
    labels.write_text("0\n1\n")
    with pytest.raises(ConfigError, match="2 labels for 1838 rows of .*valid.jsonl"):
        piqa_offline_task(tmp_path)["custom_dataset"]()


def test_ifeval_is_scored_by_lm_evals_own_checker(runs):
    from lm_eval.tasks.ifeval.utils import process_results

    for sample in runs[0].samples["ifeval_offline"]:
        expected = process_results(sample["doc"], sample["filtered_resps"])
        assert {k: sample[k] for k in expected} == expected


def _installed(relative: str) -> dict:
    from lm_eval.tasks._yaml_loader import load_yaml

    return load_yaml(INSTALLED_TASKS / relative, resolve_func=True, recursive=True)


# Where the data comes from differs by design; everything that decides prompts and scores must not.
SOURCE_KEYS = {"task", "task_alias", "tag", "dataset_path", "dataset_name", "dataset_kwargs", "custom_dataset",
               "training_split", "validation_split", "fewshot_split"}


def _scoring_fields(cfg: dict) -> dict:
    def plain(value):
        if callable(value):  # the same function from the installed module, loaded twice
            return (value.__module__.rsplit(".", 1)[-1], value.__qualname__, value.__code__.co_code)
        if isinstance(value, list):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    return {k: plain(v) for k, v in cfg.items() if k not in SOURCE_KEYS}


@pytest.mark.parametrize("installed, build", [
    ("mmlu/default/mmlu_anatomy.yaml", lambda d: next(t for t in mmlu_offline_tasks(d)
                                                       if t["task"] == "mmlu_offline_anatomy")),
    ("mmlu/default/mmlu_high_school_us_history.yaml",
     lambda d: next(t for t in mmlu_offline_tasks(d) if t["task"].endswith("high_school_us_history"))),
    ("ifeval/ifeval.yaml", ifeval_offline_task),
    ("gsm8k/gsm8k.yaml", gsm8k_offline_task),
    ("arc/arc_challenge.yaml", arc_challenge_offline_task),
    ("arc/arc_easy.yaml", arc_easy_offline_task),
    ("piqa/piqa.yaml", piqa_offline_task),
])
def test_offline_task_matches_the_installed_standard_task_field_by_field(installed, build):
    assert _scoring_fields(build(PROJECT_DATA_DIR)) == _scoring_fields(_installed(installed))


def test_mmlu_score_is_the_sample_weighted_mean_over_subjects():
    results = {"mmlu_offline_anatomy": {"acc,none": 1.0, "acc_stderr,none": "N/A", "alias": "anatomy"},
               "mmlu_offline_astronomy": {"acc,none": 0.0, "acc_stderr,none": "N/A"}}
    counts = {"mmlu_offline_anatomy": {"original": 135, "effective": 2},
              "mmlu_offline_astronomy": {"original": 20, "effective": 6}}
    assert flatten_scores("mmlu", results, counts) == ({"mmlu/acc": 0.25, "mmlu_medical/acc": 1.0}, 8)
    online = {"mmlu": {"acc,none": 0.4}, "mmlu_stem": {"acc,none": 0.3}, "mmlu_anatomy": {"acc,none": 0.5}}
    scores, _ = flatten_scores("mmlu", online, {"mmlu_anatomy": {"effective": 135}})
    assert scores == {"mmlu/acc": 0.4, "mmlu_medical/acc": 0.5}


def test_filter_names_become_mlflow_safe_suffixes_and_stderr_is_dropped():
    results = {"gsm8k": {"alias": "gsm8k", "exact_match,strict-match": 0.1, "exact_match_stderr,strict-match": 0.01,
                         "exact_match,flexible-extract": 0.2}}
    scores, docs = flatten_scores("gsm8k", results, {"gsm8k": {"effective": 50}})
    assert scores == {"gsm8k/exact_match.strict-match": 0.1, "gsm8k/exact_match.flexible-extract": 0.2}
    assert docs == 50


def test_benchmark_without_an_offline_task_set_is_a_config_error(tiny_model_dir):
    cfg = EvalConfig(offline=True, general_tasks=["hellaswag"])
    with pytest.raises(ConfigError, match="'hellaswag' has no offline task set"):
        run_general(str(tiny_model_dir), cfg)


def test_gsm8k_shots_without_a_train_file_are_refused_before_loading_the_model(tmp_path):
    (tmp_path / "gsm8k").mkdir()
    (tmp_path / "gsm8k" / "test.jsonl").write_text('{"question": "1+1?", "answer": "#### 2"}\n')
    cfg = EvalConfig(offline=True, data_dir=str(tmp_path), general_tasks=["gsm8k"])
    with pytest.raises(ConfigError, match="num_fewshot: 5 shots need a few-shot split"):
        run_general("/nonexistent/model", cfg)


def test_offline_auto_follows_the_hf_offline_switches(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    assert resolve_offline(EvalConfig()) is False
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    assert resolve_offline(EvalConfig()) is True
    assert resolve_offline(EvalConfig(offline=False)) is False


def test_project_punkt_tab_gives_real_sentence_splits():
    import nltk

    nltk_dir = use_project_nltk_data()
    assert Path(nltk.data.find("tokenizers/punkt_tab")).is_relative_to(nltk_dir)
    text = "Dr. Smith went to Washington. He arrived at 5 p.m. on Monday. It rained."
    assert len(nltk.sent_tokenize(text)) == 3


def test_offline_data_files_cover_every_benchmark_and_the_shot_pool():
    files = offline_data_files()
    relative = {str(p.relative_to(PROJECT_DATA_DIR)) for p in files}
    assert {"ifeval/input_data.jsonl", "gsm8k/test.jsonl", "arc_challenge/ARC-Challenge-Test.jsonl",
            "arc_easy/ARC-Easy-test.jsonl", "arc_easy/ARC-Easy-validation.jsonl",
            "piqa/valid.jsonl", "piqa/valid-labels.lst",
            "mmlu/dev/anatomy_dev.csv", "mmlu/test/anatomy_test.csv",
            "nltk_data/tokenizers/punkt_tab/english/ortho_context.tab"} <= relative
    assert gsm8k_fewshot_pool(PROJECT_DATA_DIR) in files
    assert not any(p.suffix == ".md" for p in files)  # provenance notes do not change scores


def test_general_task_shorthand_and_duplicates():
    assert [t.name for t in EvalConfig(general_tasks=["mmlu", {"name": "gsm8k", "limit": 5}]).general_tasks] == [
        "mmlu", "gsm8k"]
    with pytest.raises(ValueError, match="repeated: \\['mmlu'\\]"):
        EvalConfig(general_tasks=["mmlu", "mmlu"])
