"""Tokenize a conversation with the model's own chat template; supervise only the assistant.

A fine-tuned chat model must learn to write assistant turns, not to predict
the user's questions or the system prompt. The loss therefore covers exactly
the assistant's content and the end-of-turn marker that follows it (so the
model learns to stop), and nothing else.

Templates differ (ChatML, Llama 3 headers, Gemma turns, Mistral [INST]), so
nothing here names a template's markers. Each assistant span is found by
rendering prefixes of the conversation with the real template:

    before = render(messages[:i], add_generation_prompt=True)   # up to where the reply starts
    through = render(messages[:i + 1])                          # the reply and its end marker

``through[len(before):]`` is what the model must produce for turn ``i``;
trailing whitespace the template puts between turns is not supervised. Token
labels then come from character offsets of one tokenization of the full text,
so a token is never split or double-counted across spans.

Per-turn weights (OpenAI chat fine-tuning format): an assistant turn with
``weight: 0`` is shown to the model as context but not supervised; ``1`` or
no weight (None) supervises it. Templates see role and content only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

IGNORE_INDEX = -100  # label that torch's cross-entropy skips


@dataclass(frozen=True)
class TokenizedChat:
    """One conversation as the model sees it."""

    input_ids: list[int]
    labels: list[int]  # input_ids where supervised, IGNORE_INDEX elsewhere
    truncated: bool = False

    @property
    def num_tokens(self) -> int:
        return len(self.input_ids)

    @property
    def num_supervised(self) -> int:
        return sum(1 for label in self.labels if label != IGNORE_INDEX)


def _render(tokenizer: Any, messages: Sequence[dict], add_generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(
        list(messages), tokenize=False, add_generation_prompt=add_generation_prompt
    )


def assistant_char_spans(tokenizer: Any, messages: Sequence[dict]) -> tuple[str, list[tuple[int, int]]]:
    """The full rendered text and the [start, end) character span of every supervised assistant reply.

    ``messages`` are {role, content} turns, optionally with ``weight`` (0, 1 or None;
    anything else raises ValueError: validate rejects it as ``invalid_weight`` first).
    A reply with weight 0 is rendered but gets no span.
    """
    supervised = [_supervised(m) for m in messages]
    messages = [{"role": m["role"], "content": m["content"]} for m in messages]
    text = _render(tokenizer, messages, add_generation_prompt=False)
    spans: list[tuple[int, int]] = []
    cursor = 0
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = _render(tokenizer, messages[:i], add_generation_prompt=True) if i else ""
        through = _render(tokenizer, messages[: i + 1], add_generation_prompt=False)
        if text.startswith(through) and through.startswith(before) and len(before) >= cursor:
            start, end = len(before), len(through.rstrip())
        else:
            # Templates that rewrite earlier turns (e.g. dropping past reasoning) break the
            # prefix property; fall back to finding the reply's text after the last span.
            start, end = _find_reply(tokenizer, text, message["content"], cursor)
        if end > start:
            if supervised[i]:
                spans.append((start, end))
            cursor = end  # past a context reply too: the next reply is searched after it
    return text, spans


def _supervised(message: dict) -> bool:
    """An assistant turn without weight 0; a weight that is not 0 or 1 is an error."""
    weight = message.get("weight")
    if weight is not None and (isinstance(weight, bool) or weight not in (0, 1)):
        raise ValueError(f"turn weight must be 0, 1 or absent, got {weight!r}")
    return message["role"] == "assistant" and weight != 0


def _find_reply(tokenizer: Any, text: str, content: str, cursor: int) -> tuple[int, int]:
    start = text.find(content, cursor)
    if start < 0:
        raise ValueError("assistant content not found in the rendered chat template output")
    end = start + len(content)
    eos = getattr(tokenizer, "eos_token", None)
    if eos and text.startswith(eos, end):
        end += len(eos)  # the end marker is what teaches the model to stop
    return start, end


def tokenize_chat(tokenizer: Any, messages: Sequence[dict], max_length: int | None = None) -> TokenizedChat:
    """input_ids of the rendered conversation, labels only on assistant replies.

    ``max_length`` keeps the first tokens (tokens; None: no limit); a cut
    conversation is flagged so the caller can count it.
    """
    text, spans = assistant_char_spans(tokenizer, messages)
    # The template already holds BOS where the model wants one; adding it again would double it.
    encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    input_ids: list[int] = list(encoding["input_ids"])
    offsets: list[tuple[int, int]] = list(encoding["offset_mapping"])
    labels = [IGNORE_INDEX] * len(input_ids)
    span_index = 0
    for position, (token_start, token_end) in enumerate(offsets):
        while span_index < len(spans) and token_start >= spans[span_index][1]:
            span_index += 1
        if span_index == len(spans):
            break
        span_start, span_end = spans[span_index]
        # A token belongs to the reply when it overlaps it: BPE may merge the space a template
        # puts before the reply into the reply's first token, which the model must still learn.
        if token_start < span_end and token_end > span_start and token_end > token_start:
            labels[position] = input_ids[position]
    truncated = max_length is not None and len(input_ids) > max_length
    if truncated:
        input_ids, labels = input_ids[:max_length], labels[:max_length]
    return TokenizedChat(input_ids=input_ids, labels=labels, truncated=truncated)


def supervised_text(tokenizer: Any, chat: TokenizedChat) -> list[str]:
    """The decoded supervised runs, one string per contiguous span (for tests and debugging)."""
    runs: list[list[int]] = []
    previous = False
    for label in chat.labels:
        supervised = label != IGNORE_INDEX
        if supervised and not previous:
            runs.append([])
        if supervised:
            runs[-1].append(label)
        previous = supervised
    return [tokenizer.decode(run, skip_special_tokens=False) for run in runs]
