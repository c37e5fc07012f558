"""prepare flow: download -> sanitize -> transform -> validate per source, then split.

    mixtune prepare configs/demo.yaml

Every stage is cached by its inputs' fingerprints, its parameters and its code
version, so a second run with nothing changed executes no stage, and a changed
sanitize rule re-runs sanitize and what follows, not download.
"""

from __future__ import annotations

from prefect import flow
from pydantic import BaseModel

from mixtune.artifacts import ArtifactRef
from mixtune.config import MixtuneConfig
from mixtune.sections import SourceConfig
from tasks._stage import bind
from tasks.download import download
from tasks.model import log_model
from tasks.sanitize import sanitize
from tasks.split import split
from tasks.transform import transform
from tasks.validate import validate


class PreparedData(BaseModel):
    """What the mix and evaluation stages need from prepare."""

    model_path: str
    domain: list[ArtifactRef]  # validated rows per domain source
    split: ArtifactRef  # train / val / test over all domain sources


def prepare_source(source: SourceConfig, config: MixtuneConfig) -> ArtifactRef:
    """One source from its URI to validated chat rows."""
    download_, sanitize_, transform_, validate_ = bind(config.storage, download, sanitize, transform, validate)
    raw = download_(source, config.storage)
    clean = sanitize_(raw, source, config.sanitize, config.model, config.storage)
    rows = transform_(clean, source, config.storage)
    return validate_(rows, config.validate_, config.sanitize, config.model, config.storage)


@flow(name="prepare", log_prints=True)
def prepare(config: MixtuneConfig) -> PreparedData:
    """Turn the configured domain sources into validated, split chat data."""
    model_path = log_model(config.model, config.storage)  # the tokenizer validate counts with
    domain = [prepare_source(source, config) for source in config.data.sources]
    (split_,) = bind(config.storage, split)
    return PreparedData(model_path=model_path, domain=domain, split=split_(domain, config.split, config.storage))
