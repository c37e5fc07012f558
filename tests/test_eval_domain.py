"""Domain metrics on hand-made answers, label scoring, generation on the tiny model, the optional judge."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import polars as pl
import pytest

from mixtune.errors import ConfigError, DataError
from mixtune.eval.config import DomainEvalConfig, JudgeConfig
from mixtune.eval.domain import (
    NO_LABEL,
    evaluate_domain,
    exact_match,
    generate_answers,
    label_scores,
    load_eval_model,
    match_label,
    primary_domain_score,
    resolve_label_set,
    rouge_l_lcs,
    score_predictions,
    split_conversations,
    token_f1,
)

MESSAGE = pl.Struct({"role": pl.Utf8, "content": pl.Utf8})


def conversations(pairs: list[tuple[str, str]], system: str | None = None) -> pl.DataFrame:
    rows = []
    for question, answer in pairs:
        turns = ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": question}, {"role": "assistant", "content": answer}]
        rows.append(turns)
    n = len(pairs)
    return pl.DataFrame({
        "_row_id": pl.Series(range(10, 10 + n), dtype=pl.Int64),
        "_source_file": ["test.jsonl"] * n,
        "_source_row": pl.Series(range(n), dtype=pl.Int64),
        "messages": pl.Series(rows, dtype=pl.List(MESSAGE)),
    })


# --- text metrics with known values ---


def test_exact_match_ignores_case_punctuation_and_articles():
    assert exact_match("The Cat!", "cat") == 1.0
    assert exact_match("a cat", "the dog") == 0.0


def test_token_f1_is_harmonic_mean_of_token_precision_and_recall():
    # pred {cat, sat, down}, ref {cat, sat, on, mat}: overlap 2, P = 2/3, R = 2/4 -> F1 = 4/7
    assert token_f1("The cat sat down.", "A cat sat on the mat") == pytest.approx(4 / 7)
    assert token_f1("dog", "cat") == 0.0
    assert token_f1("", "") == 1.0


def test_rouge_l_from_longest_common_subsequence_matches_rouge_score():
    # LCS(the cat is on a mat, the cat sat on the mat) = the cat on mat: P = R = 4/6
    assert rouge_l_lcs("the cat is on a mat", "the cat sat on the mat") == pytest.approx(2 / 3)
    frame = pl.DataFrame({"reference": ["the cat sat on the mat", "Aspirin, 81 mg daily."],
                          "prediction": ["the cat is on a mat", "take aspirin daily"]})
    scored, means = score_predictions(frame, DomainEvalConfig())
    # second row: LCS(aspirin 81 mg daily, take aspirin daily) = 2, P = 2/3, R = 2/4 -> 4/7
    assert scored["rouge_l"].to_list() == pytest.approx([2 / 3, 4 / 7])
    assert rouge_l_lcs("take aspirin daily", "Aspirin, 81 mg daily.") == pytest.approx(4 / 7)
    assert means["domain/rouge_l"] == pytest.approx((2 / 3 + 4 / 7) / 2)
    assert means["domain/rows"] == 2.0


def test_only_configured_metrics_are_computed():
    frame = pl.DataFrame({"reference": ["yes"], "prediction": ["yes"]})
    scored, means = score_predictions(frame, DomainEvalConfig(metrics=["exact_match"]))
    assert "token_f1" not in scored.columns and "rouge_l" not in scored.columns
    assert means == {"domain/exact_match": 1.0, "domain/rows": 1.0}


# --- label tasks ---

LABELS = ["positive", "negative", "not relevant", "relevant"]


@pytest.mark.parametrize("answer, expected", [
    ("Positive.", "positive"),
    ("  NEGATIVE ", "negative"),
    ("positive, because the service was quick", "positive"),
    ("I would say it is negative overall", "negative"),
    ("This one is not relevant to billing", "not relevant"),  # "relevant" inside "not relevant" is no second label
    ("Not-Relevant", "not relevant"),
    ("maybe positive, maybe negative", NO_LABEL),
    ("unsure", NO_LABEL),
])
def test_match_label_maps_free_text_onto_the_label_set(answer, expected):
    assert match_label(answer, LABELS) == expected


def test_macro_f1_averages_over_labels_that_occur():
    refs = ["a", "a", "b", "b", "c"]
    preds = ["a", "b", "b", "b", NO_LABEL]
    # F1: a = 2*1/(1+2) = 2/3, b = 2*2/(3+2) = 4/5, c = 0; d never occurs and is left out
    scores = label_scores(refs, preds, ["a", "b", "c", "d"])
    assert scores["accuracy"] == pytest.approx(3 / 5)
    assert scores["macro_f1"] == pytest.approx((2 / 3 + 4 / 5 + 0) / 3)


def test_label_scoring_normalises_answers_and_refuses_unknown_references():
    frame = pl.DataFrame({"reference": ["Positive", "negative", "positive"],
                          "prediction": ["positive!", "It is positive", "NEGATIVE."]})
    cfg = DomainEvalConfig(label_mode="label", labels=["positive", "negative"])
    scored, means = score_predictions(frame, cfg, labels=["positive", "negative"])
    assert scored["predicted_label"].to_list() == ["positive", "positive", "negative"]
    assert scored["label_correct"].to_list() == [True, False, False]
    assert means["domain/accuracy"] == pytest.approx(1 / 3)
    # positive: tp 1, predicted 2, actual 2 -> F1 1/2; negative: tp 0 -> 0
    assert means["domain/macro_f1"] == pytest.approx((1 / 2 + 0) / 2)
    assert primary_domain_score(means, DomainEvalConfig()) == ("domain/macro_f1", means["domain/macro_f1"])
    with pytest.raises(DataError, match=r"outside the label set.*'neutral'"):
        score_predictions(pl.DataFrame({"reference": ["neutral"], "prediction": ["x"]}), cfg, labels=["positive"])


def test_label_set_follows_label_mode():
    refs = ["Spam", "ham", "spam."]
    assert resolve_label_set(DomainEvalConfig(), refs) is None
    assert resolve_label_set(DomainEvalConfig(), refs, source_is_label=True) == ["Spam", "ham"]
    assert resolve_label_set(DomainEvalConfig(labels=["x", "y"]), refs) == ["x", "y"]
    assert resolve_label_set(DomainEvalConfig(label_mode="text", labels=["x"]), refs, True) is None


# --- prompts ---


def test_reference_is_the_last_assistant_turn_and_prompt_everything_before():
    frame = pl.DataFrame({"messages": pl.Series([[
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "Dose?"},
        {"role": "assistant", "content": "81 mg"}]], dtype=pl.List(MESSAGE))})
    prompts, refs = split_conversations(frame)
    assert refs == ["81 mg"]
    assert [m["content"] for m in prompts[0]] == ["Be brief.", "Hi", "Hello", "Dose?"]


def test_row_without_an_answer_is_a_data_error_naming_the_row():
    frame = conversations([("q", "a")]).vstack(pl.DataFrame({
        "_row_id": [99], "_source_file": ["t"], "_source_row": [1],
        "messages": pl.Series([[{"role": "user", "content": "q"}]], dtype=pl.List(MESSAGE))}))
    with pytest.raises(DataError, match="row 1, field messages: no assistant turn"):
        split_conversations(frame)


# --- generation on the tiny model ---

PAIRS = [("What is anemia?", "A low red blood cell count."), ("What causes gout?", "Uric acid crystals."),
         ("Is aspirin a blood thinner?", "Yes."), ("Name a symptom of flu.", "Fever"),
         ("What does the pancreas make?", "Insulin and digestive enzymes.")]


@pytest.fixture(scope="module")
def tiny_model(tiny_model_dir):
    return load_eval_model(str(tiny_model_dir), dtype="float32", device="cpu")


def test_domain_eval_returns_a_prediction_per_row_with_lineage_and_scores(tiny_model_dir, tiny_model):
    test_frame = conversations(PAIRS, system="You are a careful clinician.")
    cfg = DomainEvalConfig(max_new_tokens=6, batch_size=2)
    result = evaluate_domain(test_frame, str(tiny_model_dir), cfg, model_and_tokenizer=tiny_model)
    out = result.predictions
    assert out.columns == ["_row_id", "_source_file", "_source_row", "prompt", "rendered_prompt", "reference",
                           "prediction", "exact_match", "token_f1", "rouge_l"]
    assert out["_row_id"].to_list() == [10, 11, 12, 13, 14]
    assert out["prompt"].to_list() == [q for q, _ in PAIRS]
    assert out["reference"].to_list() == [a for _, a in PAIRS]
    assert out["rendered_prompt"][0] == ("<|im_start|>system\nYou are a careful clinician.<|im_end|>\n"
                                         "<|im_start|>user\nWhat is anemia?<|im_end|>\n<|im_start|>assistant\n")
    assert all(0.0 <= v <= 1.0 for c in ("exact_match", "token_f1", "rouge_l") for v in out[c].to_list())
    assert result.scores["domain/rows"] == 5.0
    assert result.scores["domain/token_f1"] == pytest.approx(sum(out["token_f1"].to_list()) / 5)
    assert "judge_score" not in out.columns and not DomainEvalConfig().judge.enabled  # judge off by default


def test_label_task_end_to_end_scores_accuracy_and_macro_f1_without_lineage_columns(tiny_model_dir, tiny_model):
    frame = conversations([("Great service!", "positive"), ("Awful wait.", "negative"), ("Loved it", "Positive")])
    frame = frame.select("messages")
    result = evaluate_domain(frame, str(tiny_model_dir), DomainEvalConfig(max_new_tokens=3), source_is_label=True,
                             model_and_tokenizer=tiny_model)
    out = result.predictions
    assert out.columns[:4] == ["prompt", "rendered_prompt", "reference", "prediction"]
    assert set(out["predicted_label"].to_list()) <= {"positive", "negative", NO_LABEL}
    assert result.scores["domain/accuracy"] == pytest.approx(sum(out["label_correct"].to_list()) / 3)
    assert primary_domain_score(result.scores, DomainEvalConfig())[0] == "domain/macro_f1"


def test_left_padded_batches_answer_like_one_prompt_at_a_time(tiny_model):
    model, tokenizer = tiny_model
    prompts = [[{"role": "user", "content": q}] for q, _ in PAIRS]
    batched, _ = generate_answers(model, tokenizer, prompts, max_new_tokens=6, batch_size=5)
    single, _ = generate_answers(model, tokenizer, prompts, max_new_tokens=6, batch_size=1)
    assert batched == single
    assert any(batched)  # a random model still emits tokens


def test_adapter_is_applied_on_top_of_the_base(tiny_model_dir, tiny_model, tmp_path):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    # Random (not zero) LoRA B so the adapter visibly changes the model.
    lora = LoraConfig(r=4, lora_alpha=64, target_modules=["q_proj", "v_proj"], init_lora_weights=False,
                      task_type="CAUSAL_LM")
    get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir), lora).save_pretrained(tmp_path / "adapter")
    tuned, _ = load_eval_model(str(tiny_model_dir), adapter_dir=str(tmp_path / "adapter"), dtype="float32",
                               device="cpu")
    base, tokenizer = tiny_model
    ids = tokenizer("What is anemia?", return_tensors="pt")["input_ids"]
    # Merged into the base at load, the adapter computes what PEFT's unmerged layers compute.
    from peft import PeftModel

    unmerged = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                                         tmp_path / "adapter").eval()
    with torch.no_grad():
        assert not torch.allclose(base(ids).logits, tuned(ids).logits)
        torch.testing.assert_close(tuned(ids).logits, unmerged(ids).logits, rtol=1e-4, atol=1e-4)
    assert not any("lora" in name for name, _ in tuned.named_parameters())  # merged, not wrapped


# --- the optional judge over a local OpenAI-compatible endpoint ---

SECRET = "sk-test-never-shown-0123456789"


class _ChatCompletions(BaseHTTPRequestHandler):
    seen_auth: list[str] = []

    def do_POST(self):  # noqa: N802 (http.server's name)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        _ChatCompletions.seen_auth.append(self.headers.get("Authorization", ""))
        question = body["messages"][-1]["content"].split("\n")[1]
        # Graded by question, so the real (random) model's answers can be judged deterministically.
        grade = "no idea" if "gout" in question else ("9" if "flu" in question else "Grade: 3")
        reply = {"id": "x", "object": "chat.completion", "model": body["model"],
                 "choices": [{"index": 0, "message": {"role": "assistant", "content": grade},
                              "finish_reason": "stop"}]}
        data = json.dumps(reply).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):  # keep test output quiet
        pass


@pytest.fixture
def judge_server():
    server = HTTPServer(("127.0.0.1", 0), _ChatCompletions)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _ChatCompletions.seen_auth = []
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


def test_judge_scores_rows_sends_the_key_only_in_the_header_and_never_returns_it(
        judge_server, tiny_model_dir, tiny_model, monkeypatch, caplog):
    monkeypatch.setenv("JUDGE_KEY_FOR_TEST", SECRET)
    judge = JudgeConfig(enabled=True, base_url=judge_server, model="grader", api_key_env="JUDGE_KEY_FOR_TEST",
                        max_rows=4)
    cfg = DomainEvalConfig(max_new_tokens=4, judge=judge)
    result = evaluate_domain(conversations(PAIRS), str(tiny_model_dir), cfg, model_and_tokenizer=tiny_model)
    # rows: anemia 3/10, gout unparseable reply, aspirin 3/10, flu 9/10, pancreas beyond max_rows
    assert result.predictions["judge_score"].to_list() == [0.3, None, 0.3, 0.9, None]
    assert result.scores["domain/judge_score"] == pytest.approx((0.3 + 0.3 + 0.9) / 3)
    assert result.scores["domain/judge_failures"] == 1.0
    assert _ChatCompletions.seen_auth == [f"Bearer {SECRET}"] * 4
    returned = (repr(result.scores) + result.predictions.write_csv() + repr(cfg.model_dump())
                + json.dumps(cfg.model_dump()) + caplog.text)
    assert SECRET not in returned


def test_judge_with_unset_key_variable_fails_before_any_request(judge_server, monkeypatch):
    from mixtune.eval.judge import judge_predictions

    monkeypatch.delenv("JUDGE_KEY_MISSING", raising=False)
    cfg = JudgeConfig(enabled=True, base_url=judge_server, model="grader", api_key_env="JUDGE_KEY_MISSING")
    with pytest.raises(ConfigError, match="environment variable JUDGE_KEY_MISSING is not set"):
        judge_predictions(["q"], ["a"], ["a"], cfg)
    assert _ChatCompletions.seen_auth == []


def test_enabled_judge_needs_an_endpoint_and_a_model():
    with pytest.raises(ValueError, match="judge.enabled needs judge.base_url and judge.model"):
        JudgeConfig(enabled=True, model="m")
