"""Forgetting curves: held-out rows never train, their losses are logged at step 0, every
eval_every_steps and the last step, and the base model's own answers form a held-out set."""

from __future__ import annotations

import json

import polars as pl
import pytest

from mixtune.eval.curves import curves_markdown, curves_table, plot_curves
from mixtune.mix.sources import HELDOUT_ROWS, heldout_sources, training_sources
from mixtune.sections import StorageConfig
from mixtune.storage.artifacts import ArtifactStore
from mixtune.train.config import TrainConfig
from mixtune.train.forgetting import base_answer_rows, general_prompts
from mixtune.train.loop import train

from conftest import DEMO_CORPUS, A, U


def _chats(prefix: str, n: int) -> pl.DataFrame:
    return pl.DataFrame({"_row_id": list(range(n)), "messages": [[U(f"{prefix} question {i}?"), A(f"{prefix} answer {i}.")]
                                                               for i in range(n)], "num_tokens": [8] * n})


def _commit(store: ArtifactStore, stage: str, name: str, tables: dict[str, pl.DataFrame]):
    rows = sum(t.height for t in tables.values())
    return store.commit(stage=stage, name=name, key=f"{name}-key", tables=tables, rows_in=rows, rows_kept=rows)


@pytest.fixture
def sources(tmp_path):
    store = ArtifactStore(StorageConfig(root=str(tmp_path / "store")))
    train_rows = _chats("med", 30).with_columns(pl.lit("med").alias("_source"))
    split = _commit(store, "split", "domain", {"train": train_rows, "val": _chats("val", 12), "test": _chats("t", 3)})
    big, small = _commit(store, "validate", "math-big", {"data": _chats("math", 100)}), \
        _commit(store, "validate", "math-small", {"data": _chats("tiny", 10)})
    return store, split, {"math": [big, small]}


def test_heldout_rows_never_train_and_small_sources_keep_every_row(sources):
    store, split, categories = sources
    trained = {name: rows for name, _, rows, _ in training_sources(store, split, categories, ["_row_id", "messages"])}
    heldout = heldout_sources(store, split, categories, ["_row_id", "messages"])

    assert heldout["math"].height == HELDOUT_ROWS and heldout["domain"].height == HELDOUT_ROWS
    held_ids = set(heldout["math"]["_row_id"].to_list())
    assert trained["math-big"].height == 100 - HELDOUT_ROWS
    assert held_ids.isdisjoint(trained["math-big"]["_row_id"].to_list())
    assert trained["math-small"].height == 10  # too small to spare rows
    # The choice depends on the rows only: the same again, whatever else changes.
    again = heldout_sources(store, split, categories, ["_row_id", "messages"])
    assert again["math"].equals(heldout["math"])


def test_training_logs_heldout_losses_at_start_every_eval_and_end(tiny_model_dir, tmp_path):
    frames = {"med": _chats("med", 8)}
    manifest = pl.DataFrame([(b, p, "med", (2 * b + p) % 8) for b in range(5) for p in range(2)],
                            schema=["batch", "position", "source", "row_id"], orient="row")
    cfg = TrainConfig(global_batch_size=2, per_device_batch_size=2, max_length=128, learning_rate=5e-3, max_steps=5,
                      eval_every_steps=2, logging_steps=1, checkpoint_every_steps=None, lora={"rank": 4, "alpha": 8})
    logged: list[tuple[int, dict]] = []
    result = train(str(tiny_model_dir), frames, manifest, cfg, tmp_path / "out",
                   heldout_frames={"math": _chats("math", 3), "domain": _chats("med", 3)},
                   log_metrics=lambda step, metrics: logged.append((step, metrics)))

    assert sorted(result.heldout_losses) == ["domain", "math"]
    assert sorted(result.heldout_losses["math"]) == [0, 2, 4, 5]  # base, every 2 steps, the last
    heldout_steps = sorted(step for step, metrics in logged if "heldout/math/loss" in metrics)
    assert heldout_steps == [0, 2, 4, 5]
    # The domain rows are the ones trained on here: their loss must fall from the base model's.
    assert result.heldout_losses["domain"][5] < result.heldout_losses["domain"][0]


def test_base_answers_are_the_base_models_greedy_replies(tiny_model_dir):
    heldout = {"domain": _chats("med", 2), "math": _chats("math", 3), "code": _chats("code", 1)}
    prompts = general_prompts(heldout, 3)
    assert [p[-1]["content"] for p in prompts] == ["code question 0?", "math question 0?", "math question 1?"]
    rows = base_answer_rows(str(tiny_model_dir), prompts, max_new_tokens=6, batch_size=2)
    for messages, prompt in zip(rows["messages"].to_list(), prompts):
        assert messages[:-1] == prompt and messages[-1]["role"] == "assistant" and messages[-1]["content"]


def test_curves_table_and_plot(tmp_path):
    curves = {"d100": {"math": {0: 1.0, 6: 1.3}, "domain": {0: 2.0, 6: 1.5}}, "d75": {"math": {0: 1.0, 6: 1.05}}}
    rows = {(r["mix"], r["held-out set"]): r for r in curves_table(curves)}
    assert rows[("d100", "math")]["change"] == pytest.approx(0.3)
    assert rows[("d100", "domain")]["change"] == pytest.approx(-0.5)
    assert "| d75 | math | 1.000 | 1.050 (step 6) | +0.050 |" in curves_markdown(curves)
    assert plot_curves(curves, tmp_path / "curves.png").stat().st_size > 1000
    assert json.dumps(curves_table({})) == "[]"


def test_curves_are_appended_to_both_reports(tmp_path):
    from mixtune.eval.curves import add_to_report

    (tmp_path / "report.md").write_text("# report\n")
    (tmp_path / "report.html").write_text("<html><body>\n<h1>report</h1>\n</body></html>\n")
    add_to_report(tmp_path, {"d100": {"math": {0: 1.0, 6: 1.3}}})
    markdown, page = (tmp_path / "report.md").read_text(), (tmp_path / "report.html").read_text()
    assert "## Forgetting curves while training" in markdown and "| d100 | math | 1.000 | 1.300 (step 6) | +0.300 |" \
        in markdown and "![Forgetting curves](curves.png)" in markdown
    assert page.index("Forgetting curves while training") < page.index("</body>") and "base64," in page
    assert (tmp_path / "curves.png").exists()
    add_to_report(tmp_path / "nothing", {})  # no curves (e.g. every training run was cached before curves): no-op
