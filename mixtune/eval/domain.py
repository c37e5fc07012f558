"""Domain axis: answer the held-out test split and score the answers.

Input is the split stage's test table (rows with ``messages``); the last
assistant turn is the reference and everything before it is the prompt,
rendered with the model's chat template. Generation is greedy and batched with
left padding (prompts sorted by length so a batch wastes little padding; output
order is the input order). Output is one predictions table, a row per test
row with its lineage columns, prompt, reference, prediction and per-row
scores, so a user can read where the model fails, plus the means:

    exact_match, token_f1   SQuAD normalisation (lower case, no punctuation or articles)
    rouge_l                 ROUGE-L F-measure, rouge_score's tokenizer (ASCII letters and
                            digits only: for non-Latin text read token_f1)
    accuracy, macro_f1      label tasks: the answer is mapped onto the label set first
    judge_score             optional LLM judge, 0-1, see ``mixtune.eval.judge``

The base and the tuned model go through the same function with the same
settings; only ``adapter_dir`` differs.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from dataclasses import dataclass
from typing import Any

import polars as pl

from mixtune.errors import DataError
from mixtune.eval.config import DomainEvalConfig
from mixtune.eval.under_test import load_eval_model
from mixtune.models import end_of_turn_ids

LINEAGE = ["_row_id", "_source_file", "_source_row"]
NO_LABEL = "<no label>"  # a prediction that names no label of the set: always wrong

# --- text metrics ---

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD's answer normalisation: lower case, drop punctuation and articles, squeeze spaces."""
    return " ".join(_ARTICLES.sub(" ", text.lower().translate(_PUNCT)).split())


def exact_match(prediction: str, reference: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(reference))


def token_f1(prediction: str, reference: str) -> float:
    """Harmonic mean of token precision and recall on normalised answers (bag of tokens)."""
    pred, ref = normalize_answer(prediction).split(), normalize_answer(reference).split()
    if not pred or not ref:
        return float(pred == ref)
    overlap = sum((Counter(pred) & Counter(ref)).values())
    if overlap == 0:
        return 0.0
    precision, recall = overlap / len(pred), overlap / len(ref)
    return 2 * precision * recall / (precision + recall)


_NON_ALNUM = re.compile(r"[^a-z0-9]+")


def _rouge_tokens(text: str) -> list[str]:
    """rouge_score's default tokenisation, so both ROUGE-L paths give the same numbers."""
    return [t for t in _NON_ALNUM.sub(" ", text.lower()).split() if t]


def _lcs_length(a: list[str], b: list[str]) -> int:
    previous = [0] * (len(b) + 1)
    for token_a in a:
        current = [0]
        for j, token_b in enumerate(b, start=1):
            current.append(previous[j - 1] + 1 if token_a == token_b else max(previous[j], current[j - 1]))
        previous = current
    return previous[-1]


def rouge_l_lcs(prediction: str, reference: str) -> float:
    """ROUGE-L F-measure from the longest common subsequence; the fallback without rouge_score."""
    pred, ref = _rouge_tokens(prediction), _rouge_tokens(reference)
    if not pred or not ref:
        return 0.0
    lcs = _lcs_length(ref, pred)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(pred), lcs / len(ref)
    return 2 * precision * recall / (precision + recall)


def _rouge_l_function():
    try:
        from rouge_score import rouge_scorer
    except ImportError:
        return rouge_l_lcs
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    return lambda prediction, reference: scorer.score(reference, prediction)["rougeL"].fmeasure


TEXT_METRICS = {"exact_match": exact_match, "token_f1": token_f1}

# --- label tasks ---


def normalize_label(text: str) -> str:
    """Lower case, punctuation to spaces, squeezed: "Not-Relevant." and "not relevant" are one label."""
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def match_label(prediction: str, labels: list[str]) -> str:
    """The label a free-text answer names, or ``NO_LABEL``.

    In order: the whole answer is a label; the answer starts with a label
    ("positive, because ..."), the longest such label winning; exactly one
    label appears as whole words somewhere in the answer (a label inside a
    longer matching label does not count). Anything else names no label and
    counts as wrong.
    """
    answer = normalize_label(prediction)
    by_norm = {normalize_label(label): label for label in labels}
    if answer in by_norm:
        return by_norm[answer]
    leading = [n for n in by_norm if n and answer.startswith(n + " ")]
    if leading:
        return by_norm[max(leading, key=len)]
    inside = [n for n in by_norm if n and _contains_words(answer, n)]
    # "not relevant" also contains "relevant": a label inside a longer match is not a second answer.
    inside = [n for n in inside if not any(m != n and _contains_words(m, n) for m in inside)]
    return by_norm[inside[0]] if len(inside) == 1 else NO_LABEL


def _contains_words(text: str, words: str) -> bool:
    return re.search(rf"(?<!\w){re.escape(words)}(?!\w)", text) is not None


def label_scores(references: list[str], predicted_labels: list[str], labels: list[str]) -> dict[str, float]:
    """Accuracy, and macro-F1 averaged over the labels that occur as a reference or a prediction.

    A label that is neither referenced nor predicted has no defined F1 and is
    left out of the mean; ``NO_LABEL`` predictions count as misses for their
    reference label but are not a class of their own.
    """
    if not references:
        return {"accuracy": 0.0, "macro_f1": 0.0}
    accuracy = sum(r == p for r, p in zip(references, predicted_labels)) / len(references)
    f1s = []
    for label in labels:
        true_pos = sum(r == label and p == label for r, p in zip(references, predicted_labels))
        predicted = sum(p == label for p in predicted_labels)
        actual = sum(r == label for r in references)
        if predicted == 0 and actual == 0:
            continue
        f1s.append(2 * true_pos / (predicted + actual))
    return {"accuracy": accuracy, "macro_f1": sum(f1s) / len(f1s) if f1s else 0.0}


def resolve_label_set(cfg: DomainEvalConfig, references: list[str], source_is_label: bool = False) -> list[str] | None:
    """The label set to score against, or None for a free-text task."""
    if cfg.label_mode == "text":
        return None
    if cfg.label_mode == "auto" and not (cfg.labels or source_is_label):
        return None
    if cfg.labels:
        return list(cfg.labels)
    seen: dict[str, str] = {}
    for ref in references:  # distinct by normalised text, first spelling kept
        seen.setdefault(normalize_label(ref), ref.strip())
    return sorted(seen.values())


# --- prompts and generation ---


def split_conversations(test_frame: pl.DataFrame) -> tuple[list[list[dict[str, str]]], list[str]]:
    """Prompt turns (everything before the last assistant turn) and the reference answer, per row."""
    if "messages" not in test_frame.columns:
        raise DataError("test split", "no `messages` column; pass the split stage's test table", field="messages")
    n = test_frame.height
    # Faults name the row where the user can find it: its source file and record, when carried.
    files = test_frame["_source_file"].to_list() if "_source_file" in test_frame.columns else ["test split"] * n
    rows = test_frame["_source_row"].to_list() if "_source_row" in test_frame.columns else list(range(n))
    prompts, references = [], []
    for row_index, messages in enumerate(test_frame["messages"].to_list()):
        last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=None)
        if last is None or last == 0:
            raise DataError(files[row_index], "no assistant turn after a prompt", row=rows[row_index],
                            field="messages")
        prompts.append([{"role": m["role"], "content": m["content"]} for m in messages[:last]])
        references.append(messages[last]["content"])
    return prompts, references


def generate_answers(model, tokenizer, prompts: list[list[dict[str, str]]], *, max_new_tokens: int,
                     batch_size: int) -> tuple[list[str], list[str]]:
    """Greedy answers and the rendered prompt texts, in input order."""
    import torch

    rendered = [tokenizer.apply_chat_template(p, add_generation_prompt=True, tokenize=False) for p in prompts]
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"  # decoder-only: new tokens must follow each prompt's last token
    order = sorted(range(len(rendered)), key=lambda i: len(rendered[i]))
    answers: list[str] = [""] * len(rendered)
    device = next(model.parameters()).device
    # Stop where training taught the model to stop: the chat template's end-of-turn marker, the
    # tokenizer's eos and the generation config's eos (chat models often differ between them).
    configured_eos = model.generation_config.eos_token_id
    stop_ids = {*end_of_turn_ids(tokenizer), *(configured_eos if isinstance(configured_eos, list) else [configured_eos])}
    stop_ids.discard(None)
    for start in range(0, len(order), batch_size):
        batch_ids = order[start:start + batch_size]
        # The template already holds BOS and role tokens; adding specials again would double them.
        encoded = tokenizer([rendered[i] for i in batch_ids], return_tensors="pt", padding=True,
                            add_special_tokens=False).to(device)
        with torch.no_grad():
            output = model.generate(**encoded, max_new_tokens=max_new_tokens, do_sample=False,
                                    pad_token_id=tokenizer.pad_token_id, eos_token_id=sorted(stop_ids) or None)
        new_tokens = output[:, encoded["input_ids"].shape[1]:]  # (batch, <= max_new_tokens)
        for i, text in zip(batch_ids, tokenizer.batch_decode(new_tokens, skip_special_tokens=True)):
            answers[i] = text.strip()
    return answers, rendered


# --- scoring ---


def score_predictions(predictions: pl.DataFrame, cfg: DomainEvalConfig,
                      labels: list[str] | None = None) -> tuple[pl.DataFrame, dict[str, float]]:
    """Add per-row score columns to a frame with ``reference`` and ``prediction``; return it and the means."""
    refs, preds = predictions["reference"].to_list(), predictions["prediction"].to_list()
    functions = {**TEXT_METRICS, "rouge_l": _rouge_l_function()}
    columns = {name: [functions[name](p, r) for p, r in zip(preds, refs)] for name in cfg.metrics}
    scored = predictions.with_columns(pl.Series(name, values, dtype=pl.Float64) for name, values in columns.items())
    means = {f"domain/{name}": (sum(v) / len(v) if v else 0.0) for name, v in columns.items()}
    if labels is not None:
        by_norm = {normalize_label(label): label for label in labels}
        unknown = sorted({r for r in refs if normalize_label(r) not in by_norm})
        if unknown:
            raise DataError("test split", f"reference answers outside the label set {labels} "
                                          f"(eval.domain.labels): {unknown[:5]}", field="label")
        referenced = [by_norm[normalize_label(r)] for r in refs]
        predicted = [match_label(p, labels) for p in preds]
        scored = scored.with_columns(pl.Series("predicted_label", predicted, dtype=pl.Utf8),
                                     pl.Series("label_correct", [a == b for a, b in zip(predicted, referenced)]))
        means |= {f"domain/{k}": v for k, v in label_scores(referenced, predicted, labels).items()}
    means["domain/rows"] = float(len(refs))
    return scored, means


def primary_domain_score(scores: dict[str, float], cfg: DomainEvalConfig) -> tuple[str, float]:
    """The one domain number compare uses: the configured metric, else macro_f1 for labels, else rouge_l."""
    name = cfg.primary_metric or ("macro_f1" if "domain/macro_f1" in scores else "rouge_l")
    key = f"domain/{name}"
    if key not in scores:
        raise KeyError(f"eval.domain.primary_metric {name!r} was not computed; computed: {sorted(scores)}")
    return key, scores[key]


@dataclass
class DomainEvalResult:
    predictions: pl.DataFrame  # lineage columns, prompt, reference, prediction, per-row scores
    scores: dict[str, float]   # "domain/<metric>" means; no secrets, safe to log


def evaluate_domain(test_frame: pl.DataFrame, pretrained: str, cfg: DomainEvalConfig, *,
                    adapter_dir: str | None = None, revision: str | None = None, trust_remote_code: bool = False,
                    source_is_label: bool = False, dtype: str = "auto", device: str | None = None,
                    model_and_tokenizer: tuple[Any, Any] | None = None) -> DomainEvalResult:
    """Generate on the held-out split and score; ``model_and_tokenizer`` skips loading (tests, notebooks)."""
    frame = test_frame.head(cfg.max_rows) if cfg.max_rows else test_frame
    prompts, references = split_conversations(frame)
    model, tokenizer = model_and_tokenizer or load_eval_model(
        pretrained, adapter_dir=adapter_dir, revision=revision, trust_remote_code=trust_remote_code,
        dtype=dtype, device=device)
    answers, rendered = generate_answers(model, tokenizer, prompts, max_new_tokens=cfg.max_new_tokens,
                                         batch_size=cfg.batch_size)
    texts = pl.DataFrame({"prompt": [p[-1]["content"] for p in prompts], "rendered_prompt": rendered,
                          "reference": references, "prediction": answers},
                         schema={c: pl.Utf8 for c in ("prompt", "rendered_prompt", "reference", "prediction")})
    predictions = pl.concat([frame.select([c for c in LINEAGE if c in frame.columns]), texts], how="horizontal")
    labels = resolve_label_set(cfg, references, source_is_label)
    predictions, scores = score_predictions(predictions, cfg, labels)
    if cfg.judge.enabled:
        from mixtune.eval.judge import judge_predictions

        judged, failures = judge_predictions(predictions["prompt"].to_list(), references, answers, cfg.judge)
        predictions = predictions.with_columns(pl.Series("judge_score", judged, dtype=pl.Float64))
        valid = [s for s in judged if s is not None]
        scores["domain/judge_score"] = sum(valid) / len(valid) if valid else 0.0
        scores["domain/judge_failures"] = float(failures)
    return DomainEvalResult(predictions=predictions, scores=scores)
