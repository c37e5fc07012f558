"""The ``eval`` section: how both axes are measured and how runs are judged.

One section drives the base model and every tuned model, so the numbers being
compared were produced with identical settings. General benchmarks run through
lm-eval (standard task names online, the shipped ``data/`` task set offline);
the domain axis generates answers on the held-out split; ``tolerance`` and
``domain_target`` turn the deltas into a verdict (see ``mixtune.eval.compare``).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from mixtune.sections import JudgeUri, StrictModel, repeated

DomainMetric = Literal["exact_match", "token_f1", "rouge_l"]
DomainScoreName = Literal["exact_match", "token_f1", "rouge_l", "accuracy", "macro_f1", "judge_score"]


class GeneralTask(StrictModel):
    """One lm-eval benchmark. A plain string in YAML is shorthand for ``{name: <string>}``."""

    name: str = Field(
        description="standard lm-eval task or group name, e.g. mmlu, ifeval, gsm8k, arc_challenge; offline "
                    "(shipped data): mmlu, ifeval, gsm8k, arc_challenge, arc_easy, piqa",
    )
    limit: int | float | None = Field(
        None, gt=0,
        description="documents per task (per subject for mmlu); a float below 1 is a fraction; null = all",
    )
    num_fewshot: int | None = Field(None, ge=0, description="null = the standard task's own setting")
    max_gen_toks: int | None = Field(
        None, gt=0,
        description="tokens generated per answer for generative tasks; null = the standard task's "
                    "setting (ifeval: 1280, which needs a model context above 1280 tokens)",
    )


class JudgeConfig(StrictModel):
    """Optional LLM-as-judge over any OpenAI-compatible chat-completions endpoint.

    The key is read at call time from the environment variable *named* by
    ``api_key_env``; it is never stored in config, results or logs.
    """

    enabled: bool = False
    base_url: JudgeUri | None = Field(
        None, description="e.g. http://127.0.0.1:8000/v1 (…/chat/completions is appended); no credentials")
    model: str | None = Field(None, description="model name the endpoint serves")
    api_key_env: str | None = Field(
        None, description="NAME of the environment variable holding the API key; null = no auth header"
    )
    timeout_s: float = Field(60.0, gt=0, description="per request")
    max_rows: int | None = Field(None, gt=0, description="judge only the first N rows; null = all")

    @model_validator(mode="after")
    def _endpoint_when_enabled(self) -> "JudgeConfig":
        if self.enabled and (not self.base_url or not self.model):
            raise ValueError("judge.enabled needs judge.base_url and judge.model")
        return self


class DomainEvalConfig(StrictModel):
    """Generation on the held-out domain split: greedy, batched, through the chat template."""

    max_new_tokens: int = Field(128, gt=0, description="tokens generated per answer")
    batch_size: int = Field(32, gt=0, description="prompts per generate() call (greedy, left-padded: "
                                                  "a bigger batch decodes in fewer steps)")
    max_rows: int | None = Field(None, gt=0, description="evaluate the first N test rows; null = all")
    metrics: list[DomainMetric] = Field(
        default_factory=lambda: ["exact_match", "token_f1", "rouge_l"], min_length=1,
        description="text metrics computed per row and averaged",
    )
    label_mode: Literal["auto", "label", "text"] = Field(
        "auto",
        description="label: also accuracy and macro-F1 over the label set; auto: label when `labels` is set "
                    "or the domain source uses label columns",
    )
    labels: list[str] | None = Field(None, description="the label set; null = the distinct reference answers")
    primary_metric: DomainScoreName | None = Field(
        None, description="the domain score used in compare; null = macro_f1 for label tasks, else rouge_l"
    )
    judge: JudgeConfig = Field(default_factory=JudgeConfig)


def _default_tasks() -> list[GeneralTask]:
    return [GeneralTask(name=n) for n in ("mmlu", "ifeval", "gsm8k", "arc_challenge")]


class EvalConfig(StrictModel):
    """Both evaluation axes plus the verdict thresholds; identical for base and tuned models."""

    general_tasks: list[GeneralTask] = Field(
        default_factory=_default_tasks, description="lm-eval benchmarks; an empty list skips the general axis"
    )
    offline: bool | Literal["auto"] = Field(
        "auto",
        description="true: the shipped task set over data/; false: standard lm-eval tasks from the hub; "
                    "auto: offline when HF_HUB_OFFLINE or HF_DATASETS_OFFLINE is set",
    )
    data_dir: str | None = Field(None, description="folder with the offline benchmark data; null = the project's data/")
    batch_size: int = Field(8, gt=0, description="lm-eval requests per forward pass")
    max_length: int | None = Field(None, gt=0, description="model context in tokens for lm-eval; null = the model's")
    device: str | None = Field(None, description="cpu, cuda, cuda:0 ...; null = cuda when available, else cpu")
    dtype: str = Field("auto", description="weights dtype for evaluation: float32, bfloat16, float16, or auto: "
                                           "bfloat16 where the device computes it natively (CUDA with bf16, "
                                           "a CPU with AVX512-BF16 or AMX), else float32 on a CPU and the "
                                           "checkpoint's dtype on a GPU")
    apply_chat_template: bool = Field(
        False, description="render lm-eval prompts through the chat template (standard reporting uses false)"
    )
    domain: DomainEvalConfig = Field(default_factory=DomainEvalConfig)
    tolerance: float = Field(
        0.02, ge=0, description=(
            "absolute change on 0-1 scores. A general score counts as degraded (improved) only when its paired 95% "
            "interval excludes zero and the change is below -tolerance (above +tolerance); as retained when the "
            "interval's lower end is at or above -tolerance; else inconclusive. Also the default domain gain asked "
            "for (domain_target) and the interval half-width the advice's item counts aim at"),
    )
    domain_target: float | None = Field(
        None, description="domain score a tuned model must reach; null = base domain score + tolerance"
    )
    instruction_following_prefixes: list[str] = Field(
        default_factory=lambda: ["ifeval/"],
        description="general score keys starting with these count as instruction following in the verdict",
    )

    @field_validator("general_tasks", mode="before")
    @classmethod
    def _names_as_shorthand(cls, value: Any) -> Any:
        if isinstance(value, list):
            return [{"name": v} if isinstance(v, str) else v for v in value]
        return value

    @model_validator(mode="after")
    def _unique_task_names(self) -> "EvalConfig":
        if dupes := repeated([t.name for t in self.general_tasks]):
            raise ValueError(f"general task names must be unique; repeated: {dupes}")
        return self
