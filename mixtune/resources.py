"""Files that ship inside the package: run configs, catalogs and offline data.

They are found through ``importlib.resources``, so a plain ``pip install`` (not
only an editable one) runs the demo from any folder. In the repository they
live in the top-level ``configs/`` and ``data/`` folders, installed as the
``mixtune.configs`` and ``mixtune.data`` packages.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path


def config_file(name: str) -> Path:
    """A shipped config or catalog, e.g. ``config_file("demo.yaml")``."""
    return Path(str(files("mixtune.configs").joinpath(name)))


def data_dir() -> Path:
    """The folder of shipped data: demo domain data, category samples, offline benchmarks, NLTK data."""
    return Path(str(files("mixtune.data")))


DEMO_CONFIG = config_file("demo.yaml")
