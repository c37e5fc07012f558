"""Optional LLM-as-judge over any OpenAI-compatible chat-completions endpoint.

Off by default. Standard library only (urllib), so any server speaking the
``/chat/completions`` shape works: OpenAI, vLLM, llama.cpp, Ollama, a gateway.
The API key is read from the environment variable *named* in the config at
call time and goes only into the request's Authorization header: it is never
returned, stored, logged or put in an error message.

The judge sees question, reference and answer, and replies with a grade from
1 to 10; the score is grade / 10. A reply without a grade, or a failed request,
scores None and counts as a failure, so one bad row never stops a run.
"""

from __future__ import annotations

import json
import logging
import os
import re
import urllib.error
import urllib.request

from mixtune.errors import ConfigError
from mixtune.eval.config import JudgeConfig

log = logging.getLogger(__name__)

JUDGE_SYSTEM_PROMPT = (
    "You grade answers against a reference answer. Reply with a single integer from 1 (wrong or "
    "irrelevant) to 10 (fully correct and complete), and nothing else."
)
_GRADE = re.compile(r"\b(10|[1-9])\b")


def _api_key(cfg: JudgeConfig) -> str | None:
    if cfg.api_key_env is None:
        return None
    key = os.environ.get(cfg.api_key_env)
    if not key:
        raise ConfigError([f"eval.domain.judge.api_key_env: environment variable {cfg.api_key_env} is not set"])
    return key


def parse_grade(reply: str) -> float | None:
    """First integer 1-10 in the reply, as a 0-1 score."""
    match = _GRADE.search(reply)
    return int(match.group(1)) / 10 if match else None


def _ask(url: str, body: dict, api_key: str | None, timeout_s: float) -> str:
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers, method="POST")
    with urllib.request.urlopen(request, timeout=timeout_s) as response:
        payload = json.loads(response.read().decode("utf-8"))
    return payload["choices"][0]["message"]["content"] or ""


def judge_predictions(questions: list[str], references: list[str], predictions: list[str],
                      cfg: JudgeConfig) -> tuple[list[float | None], int]:
    """Per-row judge scores (None where not judged or failed) and the number of failed rows."""
    api_key = _api_key(cfg)  # fail before the first request if the key is missing
    url = cfg.base_url.rstrip("/") + "/chat/completions"
    rows = len(predictions) if cfg.max_rows is None else min(cfg.max_rows, len(predictions))
    scores: list[float | None] = [None] * len(predictions)
    failures = 0
    for i in range(rows):
        body = {
            "model": cfg.model, "temperature": 0, "max_tokens": 8,
            "messages": [
                {"role": "system", "content": JUDGE_SYSTEM_PROMPT},
                {"role": "user", "content": f"Question:\n{questions[i]}\n\nReference answer:\n{references[i]}"
                                            f"\n\nAnswer to grade:\n{predictions[i]}"},
            ],
        }
        try:
            scores[i] = parse_grade(_ask(url, body, api_key, cfg.timeout_s))
        except (urllib.error.URLError, TimeoutError, OSError, ValueError, KeyError, IndexError) as exc:
            # The reason only: an exception's args can echo request details, never log them.
            log.warning("judge request for row %d failed: %s", i, type(exc).__name__)
        if scores[i] is None:
            failures += 1
    return scores, failures
