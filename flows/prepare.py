"""prepare flow: download -> sanitize -> transform -> validate per source, then split.

    mixtune prepare configs/demo.yaml

Domain sources are split into train/val/test; the curated category sources a
mix draws from go through the same cached stages and are used whole for
training. Every stage is cached by its inputs' fingerprints, its parameters
and its code version: a second run with nothing changed executes no stage, a
changed sanitize rule re-runs sanitize and what follows, not download.
"""

from __future__ import annotations

from typing import Any

from prefect import Task, flow
from pydantic import BaseModel, Field

from mixtune.storage.artifacts import ArtifactRef
from mixtune.config import MixtuneConfig, resolve_config
from mixtune.sections import SourceConfig
from mixtune.tasks._names import field, flow_run_namer
from mixtune.tasks._stage import bind
from mixtune.tasks.download import download
from mixtune.tasks.model import base_model
from mixtune.tasks.sanitize import sanitize
from mixtune.tasks.split import split
from mixtune.tasks.transform import transform
from mixtune.tasks.validate import validate


class PreparedData(BaseModel):
    """What the mix, training and evaluation stages need from prepare."""

    model_path: str
    domain: list[ArtifactRef]  # validated rows per domain source
    split: ArtifactRef  # train / val / test over all domain sources
    categories: dict[str, list[ArtifactRef]] = Field(default_factory=dict)  # validated rows per source

    def fingerprints(self) -> dict[str, Any]:
        """The data's content, for a run key: the split's fingerprint and each category source's."""
        return {"split": self.split.fingerprint,
                "categories": {c: sorted(r.fingerprint for r in refs) for c, refs in sorted(self.categories.items())}}


def prepare_source(source: SourceConfig, config: MixtuneConfig, stages: list[Task]) -> ArtifactRef:
    """One source from its URI to validated chat rows."""
    download_, sanitize_, transform_, validate_ = stages
    raw = download_(source, config.storage)
    clean = sanitize_(raw, source, config.sanitize, config.model, config.storage)
    rows = transform_(clean, source, config.storage)
    return validate_(rows, config.validate_, config.sanitize, config.model, config.storage)


@flow(name="prepare", log_prints=True, flow_run_name=flow_run_namer("prepare", lambda p: field(p["config"], "name")))
def prepare(config: MixtuneConfig, categories: list[str] | None = None) -> PreparedData:
    """Validated, split domain data plus the category sources (default: those the mix weights)."""
    config = resolve_config(config)  # a deployment passes it unresolved
    stages = bind(config.storage, download, sanitize, transform, validate, split)
    model_path = base_model(config.model, config.storage)  # the tokenizer validate counts with
    domain = [prepare_source(source, config, stages[:4]) for source in config.data.sources]
    domain_split = stages[4](domain, config.split, config.storage)
    wanted = sorted(config.mix.category_weights()) if categories is None else sorted(categories)
    prepared_categories = {
        category: [prepare_source(source, config, stages[:4]) for source in config.categories[category]]
        for category in wanted
    }
    return PreparedData(model_path=model_path, domain=domain, split=domain_split,
                        categories=prepared_categories)
