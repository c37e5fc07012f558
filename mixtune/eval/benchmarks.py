"""The offline task set: standard lm-eval benchmarks over the files shipped in ``data/``.

No hub is reachable offline, so each benchmark is rebuilt as inline lm-eval
task configs. The data is loaded by a ``custom_dataset`` function into the
schema of the hub dataset the standard task reads (cais/mmlu, google/IFEval,
openai/gsm8k, allenai/ai2_arc, baber/piqa), so the standard prompt templates, targets,
choices, filters and metrics apply unchanged; those fields are copied from the
installed lm-eval YAMLs and ``tests/test_eval_general.py`` compares them field
by field. Paths are absolute, computed at run time (lm-eval resolves relative
data paths against the working directory).

    mmlu          mmlu_offline_<subject>: all 57 dev files (few-shot, first_n);
                  test = 6 medical subjects in full + first 20 rows of the other 51
    ifeval        ifeval_offline, scored by lm-eval's own IFEval checker
    gsm8k         gsm8k_offline, 5-shot from GSM8K train rows (``GSM8K_FEWSHOT_POOLS``)
    arc_challenge arc_challenge_offline, 0-shot; shots, if asked for, come from the dev file
    arc_easy      arc_easy_offline, whole test split, 0-shot; shots, if asked for, come from validation
    piqa          piqa_offline, whole validation split (what lm-eval scores), 0-shot
"""

from __future__ import annotations

import csv
import functools
import json
import os
import sys
from pathlib import Path
from typing import Any

from mixtune.errors import ConfigError
from mixtune.resources import data_dir

PROJECT_DATA_DIR = data_dir()
MMLU_MEDICAL_SUBJECTS = (
    "anatomy", "clinical_knowledge", "college_biology", "college_medicine", "medical_genetics",
    "professional_medicine",
)
OFFLINE_BENCHMARKS = ("mmlu", "ifeval", "gsm8k", "arc_challenge", "arc_easy", "piqa")
# The full train file gives the published harness's exact shots; the math category's first 300 train
# rows (same schema, same order) give the same prompt format with shots drawn from a smaller pool.
GSM8K_FEWSHOT_POOLS = ("gsm8k/train.jsonl", "categories/math/gsm8k_train_first300.jsonl")


def use_project_nltk_data(data_dir: Path = PROJECT_DATA_DIR) -> Path:
    """Put the shipped ``punkt_tab`` on NLTK's path.

    lm-eval's IFEval module calls ``nltk.download`` at import when ``punkt_tab``
    is missing, which fails offline and later crashes the run; with this copy
    on the path it finds the real English model instead.
    """
    nltk_dir = data_dir / "nltk_data"
    current = [p for p in os.environ.get("NLTK_DATA", "").split(os.pathsep) if p]
    if str(nltk_dir) not in current:
        os.environ["NLTK_DATA"] = os.pathsep.join([str(nltk_dir), *current])
    if "nltk" in sys.modules:  # nltk reads NLTK_DATA once, at import
        import nltk

        if str(nltk_dir) not in nltk.data.path:
            nltk.data.path.insert(0, str(nltk_dir))
    return nltk_dir


# --- offline data, in the schema of the hub datasets the standard tasks read ---


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _dataset_dict(splits: dict[str, list[dict[str, Any]]]):
    import datasets

    return datasets.DatasetDict({name: datasets.Dataset.from_list(rows) for name, rows in splits.items()})


def _mmlu_rows(path: Path, subject: str) -> list[dict[str, Any]]:
    """hendrycks CSV (question, A, B, C, D, letter) -> cais/mmlu rows (question, subject, choices, answer)."""
    with open(path, encoding="utf-8", newline="") as f:
        return [
            {"question": r[0], "subject": subject, "choices": r[1:5], "answer": "ABCD".index(r[5].strip())}
            for r in csv.reader(f)
        ]


def _load_mmlu(test_file: str, dev_file: str, subject: str, **_task_metadata: Any):
    return _dataset_dict({"test": _mmlu_rows(Path(test_file), subject),
                          "dev": _mmlu_rows(Path(dev_file), subject)})


def _load_ifeval(prompts_file: str, **_task_metadata: Any):
    return _dataset_dict({"train": _read_jsonl(Path(prompts_file))})  # google/IFEval has one split, "train"


def _load_gsm8k(test_file: str, train_file: str | None, **_task_metadata: Any):
    splits = {"test": _read_jsonl(Path(test_file))}
    if train_file:
        splits["train"] = _read_jsonl(Path(train_file))
    return _dataset_dict(splits)


def _arc_rows(path: Path) -> list[dict[str, Any]]:
    """Original ARC JSONL -> allenai/ai2_arc rows (id, question, choices{text, label}, answerKey)."""
    rows = []
    for raw in _read_jsonl(path):
        choices = raw["question"]["choices"]
        rows.append({"id": raw["id"], "question": raw["question"]["stem"],
                     "choices": {"text": [c["text"] for c in choices], "label": [c["label"] for c in choices]},
                     "answerKey": raw["answerKey"]})
    return rows


def _load_arc(test_file: str, dev_file: str, **_task_metadata: Any):
    return _dataset_dict({"test": _arc_rows(Path(test_file)), "validation": _arc_rows(Path(dev_file))})


def _load_arc_easy(test_file: str, validation_file: str, **_task_metadata: Any):
    """The shipped ARC-Easy files are already in the allenai/ai2_arc schema."""
    return _dataset_dict({"test": _read_jsonl(Path(test_file)), "validation": _read_jsonl(Path(validation_file))})


def _piqa_rows(questions: Path, labels: Path) -> list[dict[str, Any]]:
    """PIQA's ``X.jsonl`` (goal, sol1, sol2) + line-aligned ``X-labels.lst`` -> baber/piqa rows (+ label 0/1).

    Raises ConfigError when the two files disagree on length or a label is not 0 or 1.
    """
    rows = _read_jsonl(questions)
    answers = labels.read_text(encoding="utf-8").split()
    errors = [f"{labels}: line {i}: label {a!r} is not 0 or 1" for i, a in enumerate(answers, 1) if a not in ("0", "1")]
    if len(answers) != len(rows):
        errors.append(f"{labels}: {len(answers)} labels for {len(rows)} rows of {questions}")
    if errors:
        raise ConfigError(errors)
    return [row | {"label": int(a)} for row, a in zip(rows, answers)]


def _load_piqa(questions_file: str, labels_file: str, **_task_metadata: Any):
    return _dataset_dict({"validation": _piqa_rows(Path(questions_file), Path(labels_file))})


# --- offline task configs: fields as in lm_eval/tasks/{mmlu/default,ifeval,gsm8k,arc,piqa}/*.yaml ---


def mmlu_subjects(data_dir: Path) -> list[str]:
    """Subjects with a shipped test file, sorted."""
    return sorted(p.name[: -len("_test.csv")] for p in (data_dir / "mmlu" / "test").glob("*_test.csv"))


def mmlu_offline_tasks(data_dir: Path) -> list[dict[str, Any]]:
    tasks = []
    for subject in mmlu_subjects(data_dir):
        tasks.append({
            "task": f"mmlu_offline_{subject}",
            "dataset_path": str(data_dir / "mmlu"),
            "custom_dataset": functools.partial(
                _load_mmlu, test_file=str(data_dir / "mmlu" / "test" / f"{subject}_test.csv"),
                dev_file=str(data_dir / "mmlu" / "dev" / f"{subject}_dev.csv"), subject=subject),
            "test_split": "test",
            "fewshot_split": "dev",
            "fewshot_config": {"sampler": "first_n"},
            "output_type": "multiple_choice",
            "description": f"The following are multiple choice questions (with answers) about "
                           f"{subject.replace('_', ' ')}.\n\n",
            "doc_to_text": "{{question.strip()}}\nA. {{choices[0]}}\nB. {{choices[1]}}\nC. {{choices[2]}}"
                           "\nD. {{choices[3]}}\nAnswer:",
            "doc_to_choice": ["A", "B", "C", "D"],
            "doc_to_target": "answer",
            "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
            "metadata": {"version": 1.0},
        })
    return tasks


def ifeval_offline_task(data_dir: Path) -> dict[str, Any]:
    use_project_nltk_data(data_dir)  # before lm-eval's IFEval module is imported
    from lm_eval.tasks.ifeval import utils as ifeval_utils

    return {
        "task": "ifeval_offline",
        "dataset_path": str(data_dir / "ifeval"),
        "custom_dataset": functools.partial(_load_ifeval, prompts_file=str(data_dir / "ifeval" / "input_data.jsonl")),
        "output_type": "generate_until",
        "test_split": "train",
        "num_fewshot": 0,
        "doc_to_text": "prompt",
        "doc_to_target": 0,
        "generation_kwargs": {"until": [], "do_sample": False, "temperature": 0.0, "max_gen_toks": 1280},
        "process_results": ifeval_utils.process_results,
        "metric_list": [
            {"metric": "prompt_level_strict_acc", "aggregation": "mean", "higher_is_better": True},
            {"metric": "inst_level_strict_acc", "aggregation": ifeval_utils.agg_inst_level_acc,
             "higher_is_better": True},
            {"metric": "prompt_level_loose_acc", "aggregation": "mean", "higher_is_better": True},
            {"metric": "inst_level_loose_acc", "aggregation": ifeval_utils.agg_inst_level_acc,
             "higher_is_better": True},
        ],
        "metadata": {"version": 4.0},
    }


def gsm8k_fewshot_pool(data_dir: Path) -> Path | None:
    """The GSM8K train rows few-shot examples are drawn from: the first of ``GSM8K_FEWSHOT_POOLS`` present."""
    return next((data_dir / p for p in GSM8K_FEWSHOT_POOLS if (data_dir / p).exists()), None)


def gsm8k_offline_task(data_dir: Path) -> dict[str, Any]:
    train_file = gsm8k_fewshot_pool(data_dir)
    task: dict[str, Any] = {
        "task": "gsm8k_offline",
        "dataset_path": str(data_dir / "gsm8k"),
        "custom_dataset": functools.partial(_load_gsm8k, test_file=str(data_dir / "gsm8k" / "test.jsonl"),
                                            train_file=str(train_file) if train_file else None),
        "output_type": "generate_until",
        "test_split": "test",
        "doc_to_text": "Question: {{question}}\nAnswer:",
        "doc_to_target": "{{answer}}",
        "metric_list": [{
            "metric": "exact_match", "aggregation": "mean", "higher_is_better": True, "ignore_case": True,
            "ignore_punctuation": False, "regexes_to_ignore": [",", "\\$", "(?s).*#### ", "\\.$"],
        }],
        "generation_kwargs": {"until": ["Question:", "</s>", "<|im_end|>"], "do_sample": False, "temperature": 0.0},
        "repeats": 1,
        "num_fewshot": 5,
        "filter_list": [
            {"name": "strict-match", "filter": [
                {"function": "regex", "regex_pattern": "#### (\\-?[0-9\\.\\,]+)"}, {"function": "take_first"}]},
            {"name": "flexible-extract", "filter": [
                {"function": "regex", "group_select": -1, "regex_pattern": "(-?[$0-9.,]{2,})|(-?[0-9]+)"},
                {"function": "take_first"}]},
        ],
        "metadata": {"version": 3.0},
    }
    if train_file:  # the standard task draws its 5 shots from train
        task |= {"training_split": "train", "fewshot_split": "train"}
    return task


def arc_challenge_offline_task(data_dir: Path) -> dict[str, Any]:
    arc = data_dir / "arc_challenge"
    return _arc_task("arc_challenge_offline", arc, functools.partial(
        _load_arc, test_file=str(arc / "ARC-Challenge-Test.jsonl"), dev_file=str(arc / "ARC-Challenge-Dev.jsonl")))


def arc_easy_offline_task(data_dir: Path) -> dict[str, Any]:
    arc = data_dir / "arc_easy"
    return _arc_task("arc_easy_offline", arc, functools.partial(
        _load_arc_easy, test_file=str(arc / "ARC-Easy-test.jsonl"),
        validation_file=str(arc / "ARC-Easy-validation.jsonl")))


def _arc_task(task: str, folder: Path, dataset: Any) -> dict[str, Any]:
    """lm-eval's arc_easy / arc_challenge YAML over a shipped folder (they differ only in data)."""
    return {
        "task": task,
        "dataset_path": str(folder),
        "custom_dataset": dataset,
        "output_type": "multiple_choice",
        "validation_split": "validation",  # no ARC train split is shipped; few-shot, if asked, uses validation
        "test_split": "test",
        "doc_to_text": "Question: {{question}}\nAnswer:",
        "doc_to_target": "{{choices.label.index(answerKey)}}",
        "doc_to_choice": "{{choices.text}}",
        "should_decontaminate": True,
        "doc_to_decontamination_query": "Question: {{question}}\nAnswer:",
        "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True},
                        {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True}],
        "metadata": {"version": 1.0},
    }


def piqa_offline_task(data_dir: Path) -> dict[str, Any]:
    piqa = data_dir / "piqa"
    return {
        "task": "piqa_offline",
        "dataset_path": str(piqa),
        "custom_dataset": functools.partial(_load_piqa, questions_file=str(piqa / "valid.jsonl"),
                                            labels_file=str(piqa / "valid-labels.lst")),
        "output_type": "multiple_choice",
        "validation_split": "validation",  # scored split, as in the standard task; PIQA train is not shipped
        "test_split": None,
        "doc_to_text": "Question: {{goal}}\nAnswer:",
        "doc_to_target": "label",
        "doc_to_choice": "{{[sol1, sol2]}}",
        "should_decontaminate": True,
        "doc_to_decontamination_query": "goal",
        "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True},
                        {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True}],
        "metadata": {"version": 1.0},
    }


def offline_tasks(benchmark: str, data_dir: Path = PROJECT_DATA_DIR) -> list[dict[str, Any]]:
    """The inline lm-eval task configs standing in for one standard benchmark."""
    builders = {"mmlu": mmlu_offline_tasks, "ifeval": lambda d: [ifeval_offline_task(d)],
                "gsm8k": lambda d: [gsm8k_offline_task(d)], "arc_challenge": lambda d: [arc_challenge_offline_task(d)],
                "arc_easy": lambda d: [arc_easy_offline_task(d)], "piqa": lambda d: [piqa_offline_task(d)]}
    if benchmark not in builders:
        raise ConfigError([f"eval.general_tasks: {benchmark!r} has no offline task set; offline benchmarks are "
                           f"{list(OFFLINE_BENCHMARKS)} (or set eval.offline: false with hub access)"])
    return builders[benchmark](data_dir)


def offline_data_files(data_dir: Path = PROJECT_DATA_DIR) -> list[Path]:
    """Every file the offline task set reads: fingerprint these to key a cached base-model result."""
    folders = ["mmlu", "ifeval", "gsm8k", "arc_challenge", "arc_easy", "piqa", "nltk_data"]
    files = [p for f in folders for p in sorted((data_dir / f).rglob("*")) if p.is_file() and p.suffix != ".md"]
    pool = gsm8k_fewshot_pool(data_dir)
    return files + ([pool] if pool and pool not in files else [])
