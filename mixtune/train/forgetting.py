"""The cheap forgetting signal: losses on rows no run trains on, logged while training runs.

Two kinds of held-out sets (``mixtune.mix.sources.heldout_sources``):

- each general category's held-out rows, and the domain's first validation
  rows: their loss per supervised token, every ``train.eval_every_steps``;
- ``base_answers``: held-out general prompts answered once by the base model
  (greedy). The tuned model's loss on the base model's own answers starts low
  and rises as the model drifts from what it could do; it needs no reference
  answers and no benchmark. (The idea is the self-distillation view of
  forgetting, e.g. "Self-Distillation Bridges Distribution Gap in Language
  Model Fine-Tuning", Yang et al., ACL 2024.)
"""

from __future__ import annotations

import polars as pl

from mixtune.eval.domain import generate_answers, load_eval_model
from mixtune.mix.spec import DOMAIN

BASE_ANSWERS = "base_answers"  # the held-out set of base-model answers


def general_prompts(heldout: dict[str, pl.DataFrame], max_prompts: int) -> list[list[dict[str, str]]]:
    """Up to ``max_prompts`` conversations up to their last user turn, round-robin over general categories."""
    queues = {name: [_prompt(m) for m in rows["messages"].to_list()] for name, rows in sorted(heldout.items())
              if name != DOMAIN}
    prompts: list[list[dict[str, str]]] = []
    while len(prompts) < max_prompts and any(queues.values()):
        for queue in queues.values():
            if queue and len(prompts) < max_prompts:
                prompts.append(queue.pop(0))
    return [p for p in prompts if p]


def _prompt(messages: list[dict]) -> list[dict[str, str]]:
    last_user = max((i for i, m in enumerate(messages) if m["role"] == "user"), default=None)
    return [] if last_user is None else [{"role": m["role"], "content": m["content"]} for m in messages[:last_user + 1]]


def base_answer_rows(model_path: str, prompts: list[list[dict[str, str]]], *, max_new_tokens: int,
                     batch_size: int = 8, revision: str | None = None, trust_remote_code: bool = False,
                     dtype: str = "float32", device: str | None = None) -> pl.DataFrame:
    """The base model's greedy answers to ``prompts`` as chat rows: columns ``_row_id``, ``messages``."""
    model, tokenizer = load_eval_model(model_path, revision=revision, trust_remote_code=trust_remote_code,
                                       dtype=dtype, device=device)
    answers, _ = generate_answers(model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size)
    messages = [prompt + [{"role": "assistant", "content": answer}] for prompt, answer in zip(prompts, answers)
                if answer.strip()]
    return pl.DataFrame({"_row_id": list(range(len(messages))), "messages": messages},
                        schema={"_row_id": pl.Int64,
                                "messages": pl.List(pl.Struct({"role": pl.Utf8, "content": pl.Utf8}))})
