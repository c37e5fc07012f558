"""The prepare flow on a real Prefect API: artifacts, lineage, rejects, caching."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import polars as pl
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect_server import stage_of

from mixtune.flows.prepare import prepare
from mixtune.storage.artifacts import ArtifactStore
from mixtune.config import parse_config
from mixtune.errors import RejectShareExceeded

pytestmark = pytest.mark.usefixtures("prefect_server")
REPO = Path(__file__).resolve().parents[1]


def write_domain_rows(path: Path, rows: int = 60, bad_rows: tuple[int, ...] = ()) -> Path:
    """Real MedQuAD rows; the listed rows get an empty answer (a reject)."""
    src = pl.read_ndjson(REPO / "data" / "medquad" / "medquad.jsonl").head(rows)
    answers = [("  " if i in bad_rows else a) for i, a in enumerate(src["answer"])]
    src = src.with_columns(pl.Series("answer", answers))
    src = src.with_columns(pl.when(pl.int_range(pl.len()) == 3).then(pl.lit("User: what is it?"))
                           .otherwise(pl.col("question")).alias("question"))
    src.write_ndjson(path)
    return path


def demo_like_config(tmp_path: Path, data: Path, **sections) -> dict:
    return {
        "name": "t",
        "data": {"sources": [{"name": "med", "uri": str(data),
                              "columns": {"kind": "prompt_response", "prompt": "question", "response": "answer"},
                              "system_prompt": "Be careful."}]},
        "validate": {"max_length": 512, "on_too_long": "truncate", "max_reject_percent": 10},
        "split": {"group_column": "focus"},
        "model": {"name_or_path": "mixtune:tiny", "tiny": {"vocab_size": 400, "corpus_files": [str(data)]}},
        "storage": {"root": str(tmp_path / "store")},
        **sections,
    }


async def _task_states(flow_state, timeout_s: float = 30) -> dict[str, list[str]]:
    """Final task run states by stage, as the UI shows them.

    Prefect 3 records states from events, asynchronously and not always in
    order, so read until every run is final and two reads a second apart agree.
    """
    deadline = time.monotonic() + timeout_s
    flow_run = FlowRunFilter(id=FlowRunFilterId(any_=[flow_state.state_details.flow_run_id]))
    previous = None
    async with get_client() as client:
        while True:
            runs = await client.read_task_runs(flow_run_filter=flow_run)
            states: dict[str, list[str]] = {}
            for run in sorted(runs, key=lambda r: r.name):
                states.setdefault(stage_of(run.name), []).append(run.state.name if run.state else "<none>")
            settled = runs and all(r.state is not None and r.state.is_final() for r in runs)
            if (settled and states == previous) or time.monotonic() > deadline:
                return states
            previous = states if settled else None
            await asyncio.sleep(1.0)


def task_states(flow_state) -> dict[str, list[str]]:
    return asyncio.run(_task_states(flow_state))


def test_prepare_writes_every_stage_with_reconciled_counts_and_rejects(tmp_path):
    data = write_domain_rows(tmp_path / "med.jsonl", bad_rows=(5, 7))
    cfg = parse_config(demo_like_config(tmp_path, data))
    prepared = prepare(cfg)
    store = ArtifactStore(cfg.storage)
    validated = prepared.domain[0]
    assert (validated.rows_in, validated.rows_kept, validated.rows_rejected) == (60, 58, 2)
    rejects = store.read_table(validated, "rejects").sort("_source_row")
    assert rejects["_source_row"].to_list() == [5, 7]
    assert set(rejects["reason"]) == {"empty_content"}
    assert rejects["_source_file"].to_list() == [str(data)] * 2
    manifest = store.manifest(validated)
    assert [p["stage"] for p in manifest["parents"]] == ["transform"]
    kept = store.read_table(validated)
    user_turn = kept.filter(pl.col("_source_row") == 3)["messages"][0][1]["content"]
    assert user_turn == "User : what is it?"  # role string defused by sanitize
    split = prepared.split
    assert sum(split.tables[s] for s in ("train", "val", "test")) == 58
    train_focus = set(store.read_table(split, "train")["focus"])
    test_focus = set(store.read_table(split, "test")["focus"])
    assert not train_focus & test_focus


def test_prepare_second_run_is_all_cached_and_rule_change_reruns_from_sanitize(tmp_path):
    data = write_domain_rows(tmp_path / "med.jsonl")
    cfg = parse_config(demo_like_config(tmp_path, data))
    first = prepare(cfg, return_state=True)
    assert set(sum(task_states(first).values(), [])) == {"Completed"}
    second = prepare(cfg, return_state=True)
    states = task_states(second)
    assert states.pop("base-model") == ["Completed"]  # re-checks the model folder each run: cheap, never stale
    assert set(sum(states.values(), [])) == {"Cached"}
    assert second.result().split == first.result().split

    changed = parse_config(demo_like_config(
        tmp_path, data, sanitize={"extra_rules": [{"name": "no_urls", "pattern": r"https?://\S+"}]}))
    third = task_states(prepare(changed, return_state=True))
    assert third["download"] == ["Cached"]
    assert third["sanitize"] == ["Completed"]
    assert third["validate"] == ["Completed"] and third["split"] == ["Completed"]


def test_new_data_at_same_path_reruns_download(tmp_path):
    data = write_domain_rows(tmp_path / "med.jsonl", rows=40)
    cfg = parse_config(demo_like_config(tmp_path, data))
    prepare(cfg)
    write_domain_rows(data, rows=50)
    rerun = prepare(cfg, return_state=True)
    assert task_states(rerun)["download"] == ["Completed"]
    assert rerun.result().domain[0].rows_in == 50


def test_prepare_fails_with_summary_when_reject_share_exceeds_limit(tmp_path):
    data = write_domain_rows(tmp_path / "med.jsonl", rows=40, bad_rows=(1, 2, 3, 4))
    cfg = parse_config(demo_like_config(tmp_path, data, validate={"max_length": 512, "on_too_long": "truncate", "max_reject_percent": 5}))
    with pytest.raises(RejectShareExceeded) as err:
        prepare(cfg)
    assert "4 of 40 rows rejected (10.0%)" in str(err.value) and "empty_content: 4" in str(err.value)
    rejects_uri = str(err.value).rsplit(" in ", 1)[1]
    assert pl.read_parquet(f"{rejects_uri}/part-00000.parquet").height == 4  # nothing lost
