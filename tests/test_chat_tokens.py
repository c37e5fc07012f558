"""Only assistant replies (and their end-of-turn marker) are supervised, under real chat templates."""

from __future__ import annotations

import copy

import pytest

from mixtune.train.chat_tokens import IGNORE_INDEX, tokenize_chat, supervised_text

CONVERSATION = [
    {"role": "system", "content": "You are a careful medical assistant."},
    {"role": "user", "content": "What is anemia?"},
    {"role": "assistant", "content": "Anemia is a lack of healthy red blood cells."},
    {"role": "user", "content": "What causes it?"},
    {"role": "assistant", "content": "Often iron deficiency, blood loss or chronic disease."},
]
ASSISTANT_REPLIES = [m["content"] for m in CONVERSATION if m["role"] == "assistant"]


def _unsupervised_text(tokenizer, chat) -> str:
    return tokenizer.decode([t for t, label in zip(chat.input_ids, chat.labels) if label == IGNORE_INDEX])


def test_supervised_tokens_are_exactly_assistant_replies_and_end_token(tiny_tokenizer):
    chat = tokenize_chat(tiny_tokenizer, CONVERSATION)

    assert supervised_text(tiny_tokenizer, chat) == [reply + "<|im_end|>" for reply in ASSISTANT_REPLIES]


def test_system_and_user_turns_are_masked(tiny_tokenizer):
    chat = tokenize_chat(tiny_tokenizer, CONVERSATION)
    masked = _unsupervised_text(tiny_tokenizer, chat)

    for message in CONVERSATION:
        assert (message["content"] in masked) == (message["role"] != "assistant")
    # the rendered conversation is the template's, token for token
    rendered = tiny_tokenizer.apply_chat_template(CONVERSATION, tokenize=True)["input_ids"]
    assert chat.input_ids == list(rendered)


def test_spans_follow_a_template_with_other_markers(tiny_tokenizer):
    # Zephyr-like markers and end token: nothing in chat_tokens may assume ChatML.
    tokenizer = copy.deepcopy(tiny_tokenizer)
    tokenizer.chat_template = (
        "{% for m in messages %}<s>[{{ m['role'] }}]: {{ m['content'] }}</s>\n{% endfor %}"
        "{% if add_generation_prompt %}<s>[assistant]: {% endif %}"
    )
    chat = tokenize_chat(tokenizer, CONVERSATION)

    # BPE merges the space after "[assistant]:" into the reply's first token (" An"): that token
    # is what the model must produce, so it is supervised, space included.
    assert supervised_text(tokenizer, chat) == [" " + reply + "</s>" for reply in ASSISTANT_REPLIES]


def test_template_that_rewrites_earlier_turns_still_finds_each_reply(tiny_tokenizer):
    # Like reasoning templates that keep <think> only on the final reply: prefixes stop being
    # prefixes of the full text, and each earlier reply is located by its content instead.
    tokenizer = copy.deepcopy(tiny_tokenizer)
    tokenizer.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
        "{% if loop.last and m['role'] == 'assistant' %}<think></think>{% endif %}"
        "{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    chat = tokenize_chat(tokenizer, CONVERSATION)

    assert supervised_text(tokenizer, chat) == [
        ASSISTANT_REPLIES[0] + "<|im_end|>",
        "<think></think>" + ASSISTANT_REPLIES[1] + "<|im_end|>",
    ]


def test_long_conversation_is_cut_to_max_length_and_flagged(tiny_tokenizer):
    full = tokenize_chat(tiny_tokenizer, CONVERSATION)
    cut = tokenize_chat(tiny_tokenizer, CONVERSATION, max_length=20)

    assert (cut.num_tokens, cut.truncated, full.truncated) == (20, True, False)
    assert cut.input_ids == full.input_ids[:20] and cut.labels == full.labels[:20]


def test_assistant_reply_missing_from_the_rendering_raises(tiny_tokenizer):
    tokenizer = copy.deepcopy(tiny_tokenizer)
    # A template that drops every assistant reply except the last one cannot be supervised.
    tokenizer.chat_template = (
        "{% for m in messages %}{% if m['role'] != 'assistant' or loop.last %}"
        "<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    with pytest.raises(ValueError, match="assistant content not found"):
        tokenize_chat(tokenizer, CONVERSATION)


# --- per-turn weights (OpenAI chat fine-tuning format) ---

CAPITAL = [
    {"role": "user", "content": "What is the capital of Australia?"},
    {"role": "assistant", "content": "Sydney.", "weight": 0},
    {"role": "user", "content": "Are you sure?"},
    {"role": "assistant", "content": "Sorry, it is Canberra.", "weight": 1},
]


def test_weight_0_reply_is_context_and_only_the_weight_1_reply_is_supervised(tiny_tokenizer):
    chat = tokenize_chat(tiny_tokenizer, CAPITAL)

    assert supervised_text(tiny_tokenizer, chat) == ["Sorry, it is Canberra.<|im_end|>"]
    assert "Sydney." in _unsupervised_text(tiny_tokenizer, chat)
    # the model still sees the whole conversation, rendered by the real template without weights
    plain = [{"role": m["role"], "content": m["content"]} for m in CAPITAL]
    assert chat.input_ids == list(tiny_tokenizer.apply_chat_template(plain, tokenize=True)["input_ids"])


def test_no_weight_and_weight_1_supervise_alike(tiny_tokenizer):
    unweighted = [{"role": m["role"], "content": m["content"]} for m in CAPITAL]
    weighted = [{**m, "weight": 1} if m["role"] == "assistant" else m for m in CAPITAL]

    assert tokenize_chat(tiny_tokenizer, unweighted) == tokenize_chat(tiny_tokenizer, weighted)
    assert supervised_text(tiny_tokenizer, tokenize_chat(tiny_tokenizer, unweighted)) == [
        "Sydney.<|im_end|>", "Sorry, it is Canberra.<|im_end|>"]


def test_weight_0_on_an_earlier_reply_under_a_rewriting_template(tiny_tokenizer):
    tokenizer = copy.deepcopy(tiny_tokenizer)
    tokenizer.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
        "{% if loop.last and m['role'] == 'assistant' %}<think></think>{% endif %}"
        "{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    assert supervised_text(tokenizer, tokenize_chat(tokenizer, CAPITAL)) == [
        "<think></think>Sorry, it is Canberra.<|im_end|>"]


@pytest.mark.parametrize("weight", [0.5, 2, "1", True])
def test_a_weight_other_than_0_or_1_raises(tiny_tokenizer, weight):
    with pytest.raises(ValueError, match="turn weight must be 0, 1 or absent"):
        tokenize_chat(tiny_tokenizer, [CAPITAL[0], {**CAPITAL[1], "weight": weight}])
