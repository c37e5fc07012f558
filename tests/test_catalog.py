"""The shipped catalogs: they parse, their offline files exist and match their column mappings."""

from __future__ import annotations

import json
import re
from pathlib import Path

import polars as pl
import pytest
import yaml

from mixtune.config import load_config
from mixtune.mix.spec import NOVA_CATEGORY_MAP, load_catalog

REPO = Path(__file__).resolve().parents[1]
ONLINE = load_catalog(REPO / "configs" / "catalog.yaml")
OFFLINE = load_catalog(REPO / "configs" / "catalog-offline.yaml")
OFFLINE_SOURCES = [(cat, src) for cat, sources in OFFLINE.items() for src in sources]


def mapped_columns(src) -> list[str]:
    """The file columns a source's column mapping reads."""
    cols = src.columns.model_dump(exclude={"kind"})
    return [c for c in cols.values() if c is not None] + ([src.system_column] if src.system_column else [])


def test_catalog_online_covers_every_nova_category_target_with_pinned_or_flagged_revisions():
    assert set(NOVA_CATEGORY_MAP.values()) <= set(ONLINE)
    for sources in ONLINE.values():
        for src in sources:
            assert src.uri.startswith("hf://") and src.license, src.name
            assert src.revision == "main" or re.fullmatch(r"[0-9a-f]{40}", src.revision), src.name


def test_catalog_offline_serves_a_subset_of_the_online_categories():
    assert set(OFFLINE) <= set(ONLINE)
    assert {"math", "code", "reasoning", "chat", "instruction-following"} <= set(OFFLINE)


@pytest.mark.parametrize("category, src", OFFLINE_SOURCES, ids=[s.name for _, s in OFFLINE_SOURCES])
def test_catalog_offline_file_exists_and_has_the_mapped_columns(category, src):
    path = Path(src.uri)
    assert path.is_file() and path.is_relative_to(REPO / "data" / "categories" / category)
    frame = pl.read_ndjson(path)
    missing = set(mapped_columns(src)) - set(frame.columns)
    assert not missing, f"{src.name}: mapped columns {sorted(missing)} not in {frame.columns}"
    assert 100 <= frame.height <= 500  # a sample, not a dataset
    assert src.license
    assert path.name in (path.parent / "PROVENANCE.md").read_text()


def test_catalog_offline_data_stays_small():
    total_bytes = sum(p.stat().st_size for p in (REPO / "data" / "categories").rglob("*") if p.is_file())
    assert total_bytes < 2_000_000


def test_catalog_offline_ships_no_benchmark_test_items():
    gsm8k_test = REPO / "data" / "gsm8k" / "test.jsonl"  # shipped for the general evaluation
    test_questions = {json.loads(line)["question"] for line in gsm8k_test.read_text().splitlines()}
    train = pl.read_ndjson(REPO / "data" / "categories" / "math" / "gsm8k_train_first300.jsonl")
    assert not set(train["question"]) & test_questions
    mbpp = pl.read_ndjson(REPO / "data" / "categories" / "code" / "mbpp_train_601_800.jsonl")
    assert mbpp["task_id"].min() >= 601  # 11-510 are MBPP's test problems


def test_catalog_offline_loads_in_a_run_config(tmp_path):
    run = {
        "data": {"sources": [{"name": "medquad", "uri": str(REPO / "data" / "medquad" / "medquad.jsonl")}]},
        "catalog": str(REPO / "configs" / "catalog-offline.yaml"),
        "mix": {"domain_percent": 75, "weights": {"math": 2, "code": 1, "instruction-following": 1}},
    }
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(run))
    cfg = load_config(tmp_path / "run.yaml")
    assert cfg.categories.keys() == OFFLINE.keys()
    assert cfg.mix.category_weights() == {"code": 0.25, "instruction-following": 0.25, "math": 0.5}


@pytest.mark.parametrize("category, src", OFFLINE_SOURCES, ids=[s.name for _, s in OFFLINE_SOURCES])
def test_catalog_offline_source_downloads_and_transforms_without_rejects(category, src):
    from mixtune.prepare.download import download
    from mixtune.prepare.transform import transform

    downloaded = download(src)
    result = transform(downloaded.frame, src)
    assert result.rejects.height == 0 and result.frame.height == downloaded.frame.height
    first = result.frame["messages"][0].to_list()
    assert [turn["role"] for turn in first] == ["user", "assistant"]
