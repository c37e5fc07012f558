"""One strict config for a whole mixtune run.

A YAML file parses into ``MixtuneConfig``; the same object is the Prefect flow's
parameters, so the UI, a schedule, the CLI and a test all pass the same thing.
Unknown keys are errors (with their path), so a typo never silently falls back
to a default. Relative paths resolve against the config file's folder, so a
config runs the same from any working directory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import ConfigDict, Field, ValidationError, model_validator
from pydantic_core import PydanticCustomError

from mixtune.errors import ConfigError, read_yaml, validation_problem
from mixtune.eval.config import EvalConfig
from mixtune.train.config import TrainConfig
from mixtune.mix.spec import CategoryCatalog, MixSpec, resolve_catalog
from mixtune.sections import (  # noqa: F401  (re-exported: one import for users)
    CREDENTIALS_IN_URI,
    TINY_MODEL,
    DataConfig,
    ModelConfig,
    SanitizeConfig,
    SourceConfig,
    SplitConfig,
    StorageConfig,
    StrictModel,
    TrackingConfig,
    ValidateConfig,
)


class MixtuneConfig(StrictModel):
    name: str = "mixtune"
    data: DataConfig
    sanitize: SanitizeConfig = Field(default_factory=SanitizeConfig)
    validate_: ValidateConfig = Field(default_factory=ValidateConfig, alias="validate")
    split: SplitConfig = Field(default_factory=SplitConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    storage: StorageConfig = Field(default_factory=StorageConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    # --- sections owned by later stages (mix, categories, train, eval) go below ---
    catalog: str | None = Field(None, description="catalog YAML file; relative to this config")
    categories: CategoryCatalog = Field(
        default_factory=dict, description="category -> sources; replaces/extends the catalog's"
    )
    mix: MixSpec = Field(default_factory=MixSpec)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)

    model_config = ConfigDict(extra="forbid", validate_assignment=True, populate_by_name=True)

    @model_validator(mode="after")
    def _one_length_limit(self) -> "MixtuneConfig":
        # Validation passes rows up to validate.max_length tokens; training must not cut them again
        # (a cut answer loses its end-of-turn token, or all of its supervised tokens).
        limit = self.validate_.max_length
        if self.train.max_length is None:
            self.train.max_length = limit
        elif self.train.max_length < limit:
            raise PydanticCustomError(
                "length_limits_disagree",
                "train.max_length ({train}) is below validate.max_length ({limit}): training would cut rows "
                "that validation passed, dropping answers' end-of-turn tokens or every answer token. Set "
                "train.max_length to at least {limit} (or leave it unset: it follows validate.max_length), "
                "or lower validate.max_length to {train} so validation rejects or truncates those rows",
                {"train": self.train.max_length, "limit": limit},
            )
        return self

    def dump(self) -> dict[str, Any]:
        """The resolved config as plain data, with YAML key names."""
        return self.model_dump(mode="json", by_alias=True)


# --- loading ---


def parse_config(data: Any, source: str | None = None) -> MixtuneConfig:
    """Validate plain data; raise ConfigError listing every bad key path."""
    if not isinstance(data, dict):
        raise ConfigError([f"<root>: expected a mapping, got {type(data).__name__}"], source)
    try:
        return MixtuneConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError([validation_problem(e) for e in exc.errors()], source) from None


def _is_local(uri: str) -> bool:
    return "://" not in uri and not uri.startswith("hf:")


def _resolve_paths(cfg: MixtuneConfig, base: Path) -> MixtuneConfig:
    def fix(p: str) -> str:
        return str((base / p).resolve()) if _is_local(p) and not Path(p).is_absolute() else p

    for src in cfg.data.sources:
        src.uri = fix(src.uri)
    cfg.storage.root = fix(cfg.storage.root)
    cfg.model.tiny.corpus_files = [fix(p) for p in cfg.model.tiny.corpus_files]
    if cfg.model.name_or_path != TINY_MODEL and (base / cfg.model.name_or_path).exists():
        cfg.model.name_or_path = fix(cfg.model.name_or_path)
    if cfg.eval.data_dir is not None:
        cfg.eval.data_dir = fix(cfg.eval.data_dir)
    resolve_catalog(cfg, base)  # mix_spec: merge the catalog file, resolve its paths, check the mix
    return cfg


def resolve_config(cfg: MixtuneConfig, base: str | Path | None = None) -> MixtuneConfig:
    """Resolve relative paths and merge the catalog, as ``load_config`` does.

    For a config that arrives as flow parameters (a deployment, the Prefect
    UI): relative paths resolve against ``base``, default the working
    directory. Idempotent: a config from ``load_config`` comes back unchanged.
    """
    return _resolve_paths(cfg, Path(base or Path.cwd()).resolve())


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> MixtuneConfig:
    """Read a YAML config; relative paths resolve against the file's folder."""
    path = Path(path)
    data = read_yaml(path)
    if overrides:
        data = deep_merge(data or {}, overrides)
    return _resolve_paths(parse_config(data, str(path)), path.parent.resolve())


def deep_merge(base: dict[str, Any], updates: dict[str, Any]) -> dict[str, Any]:
    """Return ``base`` with ``updates`` merged in, nested mappings merged key by key."""
    merged = dict(base)
    for key, value in updates.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged
