"""The evaluate flow and the compare task on a real Prefect API: both axes, base cache, report, artifacts."""

from __future__ import annotations

import asyncio
import json
import shutil
import uuid
from pathlib import Path

import polars as pl
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
from s3_server import create_bucket, s3_endpoint  # noqa: F401  (fixture)
from test_prepare_flow import demo_like_config, task_states, write_domain_rows

from mixtune.flows.evaluate import evaluate
from mixtune.flows.prepare import prepare
from mixtune.storage.artifacts import ArtifactRef, ArtifactStore, fingerprint
from mixtune.eval.compare import (
    BOTH_IMPROVED,
    DOMAIN_BELOW_TARGET,
    GENERAL_DEGRADED,
    GENERAL_RETAINED,
    IF_DEGRADED,
    INCONCLUSIVE_VERDICT,
)
from mixtune.config import MixtuneConfig, parse_config
from mixtune.eval.benchmarks import PROJECT_DATA_DIR
from mixtune.sections import StorageConfig, TrackingConfig
from mixtune.models.tiny import local_model_cache
from mixtune.tracking import mlflow_run, tracking_uri
from mixtune.tasks._stage import _key, bind
from mixtune.tasks.compare import compare
from mixtune.eval import under_test
from mixtune.eval.under_test import eval_dtype, local_model_files, native_bf16
from mixtune.models import model_path as local_model_path

pytestmark = pytest.mark.usefixtures("prefect_server")

# One lm-eval call per model (arc and ifeval share limit and max_gen_toks); ifeval keeps the
# instruction-following verdict path live. mmlu's 57 subjects are covered in test_eval_general.
EVAL = {
    "offline": True, "device": "cpu", "dtype": "float32", "batch_size": 16,
    "general_tasks": [{"name": "arc_challenge", "limit": 3, "max_gen_toks": 8},
                      {"name": "ifeval", "limit": 3, "max_gen_toks": 8}],
    "domain": {"max_rows": 6, "max_new_tokens": 8, "batch_size": 6},
}
HEADINGS = (BOTH_IMPROVED, GENERAL_RETAINED, GENERAL_DEGRADED, IF_DEGRADED, DOMAIN_BELOW_TARGET, INCONCLUSIVE_VERDICT)


def commit_lora_artifact(cfg: MixtuneConfig, name: str) -> ArtifactRef:
    """What training hands evaluation: a `train` artifact with a PEFT adapter that changes the model."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = local_model_path(cfg.model, cfg.storage)
    store = ArtifactStore(cfg.storage)
    key = fingerprint("test-train", name)
    adapter_dir = Path(store.artifact_uri("train", name, key)) / "adapter"
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base),
                           LoraConfig(r=4, lora_alpha=64, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # LoRA B starts at zero (adapter = no-op); a trained one is not
        for param_name, param in model.named_parameters():
            if "lora_B" in param_name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.5)
    model.save_pretrained(adapter_dir)
    AutoTokenizer.from_pretrained(base).save_pretrained(adapter_dir)
    return store.commit(stage="train", name=name, key=key, tables={}, rows_in=0, rows_kept=0,
                        extra={"method": "lora"})


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Prepare once, then evaluate base, tuned, and base again (the cache hit), shared by the module."""
    tmp = tmp_path_factory.mktemp("evaluate")
    data = write_domain_rows(tmp / "med.jsonl", rows=40)
    cfg = parse_config(demo_like_config(tmp, data, eval=EVAL,
                                        split={"group_column": "focus", "train": 0.6, "val": 0.1, "test": 0.3}))
    prepared = prepare(cfg)
    trained = commit_lora_artifact(cfg, "mix-a")
    base = evaluate(cfg, prepared, return_state=True)
    tuned = evaluate(cfg, prepared, trained=trained, return_state=True)
    base_again = evaluate(cfg, prepared, return_state=True)
    return cfg, trained, base, tuned, base_again


def test_both_axes_are_scored_for_base_and_tuned(runs):
    cfg, trained, base, tuned, _ = runs
    for state, name in ((base, "base"), (tuned, "mix-a")):
        result = state.result()
        assert result.run == name
        assert {"arc_challenge/acc", "arc_challenge/acc_norm", "ifeval/prompt_level_strict_acc",
                "domain/exact_match", "domain/token_f1", "domain/rouge_l"} <= set(result.scores)
        assert all(0.0 <= v <= 1.0 for k, v in result.scores.items() if k != "domain/rows")
        assert result.scores["domain/rows"] == 6.0
    store = ArtifactStore(cfg.storage)
    parents = store.manifest(tuned.result().domain)["parents"]
    assert [p["stage"] for p in parents] == ["split", "train"]
    assert parents[1]["fingerprint"] == trained.fingerprint
    for ref in (tuned.result().domain, tuned.result().general, base.result().general):  # what the scores ran in
        assert store.manifest(ref)["precision"] == {"device": "cpu", "dtype": "float32"}


def test_predictions_are_stored_with_per_row_scores_that_average_to_the_reported_means(runs):
    cfg, _, base, _, _ = runs
    store = ArtifactStore(cfg.storage)
    result = base.result()
    predictions = store.read_table(result.domain, "predictions")
    assert predictions.height == 6
    assert {"_source", "_row_id", "_source_file", "_source_row", "prompt", "reference", "prediction",
            "exact_match", "token_f1", "rouge_l"} <= set(predictions.columns)
    assert set(predictions["_source"]) == {"med"}
    split_uri = store.manifest(result.domain)["parents"][0]["uri"]
    assert predictions["_row_id"].to_list() == store.read_table(split_uri, "test")["_row_id"].head(6).to_list()
    for metric in ("exact_match", "token_f1", "rouge_l"):
        assert result.scores[f"domain/{metric}"] == pytest.approx(predictions[metric].mean())
    samples = store.read_table(result.general, "samples")
    assert samples.group_by("task").len().sort("task").rows() == [("arc_challenge_offline", 3), ("ifeval_offline", 3)]
    arc = samples.filter(pl.col("task") == "arc_challenge_offline")
    assert arc["score"].mean() == pytest.approx(result.scores["arc_challenge/acc"])


def test_the_adapter_is_evaluated_not_the_base(runs):
    cfg, _, base, tuned, _ = runs
    store = ArtifactStore(cfg.storage)
    base_samples = store.read_table(base.result().general, "samples")["response"].to_list()
    tuned_samples = store.read_table(tuned.result().general, "samples")["response"].to_list()
    assert base_samples != tuned_samples  # log-likelihoods and generations of another model
    assert base.result().general.uri != tuned.result().general.uri


def test_base_evaluation_is_cached_on_the_second_call(runs):
    _, _, base, tuned, base_again = runs
    assert {state for states in task_states(base).values() for state in states} == {"Completed"}
    assert task_states(tuned) == {"eval_general": ["Completed"], "eval_domain": ["Completed"]}
    assert task_states(base_again) == {"eval_general": ["Cached"], "eval_domain": ["Cached"]}
    assert base_again.result() == base.result()


async def _artifact_data(key: str) -> str:
    async with get_client() as client:
        found = await client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))
    assert found, f"no Prefect artifact {key!r}"
    return max(found, key=lambda a: a.created).data


def test_compare_writes_the_report_verdicts_prefect_artifacts_and_mlflow(runs):
    from mlflow import MlflowClient

    cfg, _, base, tuned, _ = runs
    tracking = TrackingConfig(experiment="compare-test")
    with mlflow_run(tracking, cfg.storage, "sweep") as parent:
        parent_id = parent.info.run_id
        for mix in ("mix-a", "unchanged"):  # what mix-run leaves behind: a child run per mix
            with mlflow_run(tracking, cfg.storage, mix, parent_run_id=parent_id):
                pass
    base_refs = [base.result().general, base.result().domain]
    (compare_,) = bind(cfg.storage, compare)
    # "unchanged" is the base's own evaluation: every paired change is 0, and with 3 to 6 items the rule of
    # three leaves each interval at ±3/n: too wide to call anything, so its verdict is known exactly.
    ref = compare_(base_refs, {"mix-a": [tuned.result().general, tuned.result().domain], "unchanged": base_refs},
                   cfg.eval, cfg.storage, tracking, parent_id)

    store = ArtifactStore(cfg.storage)
    manifest = store.manifest(ref)
    verdicts = manifest["verdicts"]
    assert verdicts["unchanged"] == (f"{INCONCLUSIVE_VERDICT}: domain ROUGE-L (n=6), ARC-Challenge acc_norm (n=3), "
                                     "IFEval prompt-level strict acc (n=3)")
    assert verdicts["mix-a"].startswith(HEADINGS)
    checks = {c["metric"]: c for c in manifest["checks"]["unchanged"]}
    assert checks["domain/rouge_l"]["outcome"] == "inconclusive"
    assert checks["domain/rouge_l"]["n_needed"] > 6 and "eval.domain.max_rows" in checks["domain/rouge_l"]["advice"]
    recommendation = manifest["recommendation"]
    assert recommendation["kind"] in ("ship", "none", "inconclusive") and recommendation["sentence"]
    table = store.read_table(ref, "comparison")
    assert table["run"].to_list() == ["base", "mix-a", "unchanged"]
    assert table["verdict"].to_list() == ["base", verdicts["mix-a"], verdicts["unchanged"]]
    assert table["arc_challenge/acc_norm n"].to_list() == [3, 3, 3] and table["domain_n"].to_list() == [6, 6, 6]
    assert (table.row(2, named=True)["domain_ci_low"], table.row(2, named=True)["domain_ci_high"]) == (-0.5, 0.5)
    markdown = store.read_bytes(f"{ref.uri}/report.md").decode()
    assert markdown.splitlines()[2] == f"**{recommendation['sentence']}**"
    assert markdown.splitlines()[4].startswith("Base model: mixtune:tiny (random weights")  # what was tested
    assert verdicts["mix-a"] in markdown and "| unchanged |" in markdown
    assert "| run | verdict | domain ROUGE-L (n=6) | ARC-Challenge acc_norm (n=3) |" in markdown
    assert store.read_bytes(f"{ref.uri}/pareto.png")[:8] == b"\x89PNG\r\n\x1a\n"
    assert "data:image/png;base64," in store.read_bytes(f"{ref.uri}/report.html").decode()

    pane = asyncio.run(_artifact_data("mix-comparison"))
    assert pane.startswith(f"**{recommendation['sentence']}**")
    assert "| run | verdict |" in pane and f"Report with plot: `{ref.uri}/report.html`" in pane
    assert f"MLflow parent run: `{parent_id}`" in pane  # a file store has no UI address
    scores_rows = json.loads(asyncio.run(_artifact_data("mix-scores")))
    assert [(r["run"], r["verdict"]) for r in scores_rows] == list(zip(table["run"], table["verdict"]))

    client = MlflowClient(tracking_uri(tracking, cfg.storage))
    logged = client.get_run(parent_id).data
    assert logged.metrics["unchanged/delta/domain"] == 0.0
    assert logged.metrics["mix-a/domain"] == pytest.approx(table["domain"][1])
    assert logged.tags["verdict.unchanged"] == verdicts["unchanged"]
    assert logged.tags["recommendation"] == recommendation["sentence"]
    assert logged.tags["mlflow.note.content"].startswith(f"**{recommendation['sentence']}**")
    assert {a.path for a in client.list_artifacts(parent_id, "comparison")} == {
        "comparison/report.md", "comparison/report.html", "comparison/pareto.png"}
    experiment = client.get_experiment_by_name("compare-test")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"  # opens on the runs table
    children = {r.info.run_name: r for r in client.search_runs(
        [experiment.experiment_id], f"tags.`mlflow.parentRunId` = '{parent_id}'")}
    unchanged = children["unchanged"].data
    assert unchanged.tags["verdict"] == verdicts["unchanged"] and unchanged.tags["recommended"] == "no"
    assert unchanged.tags["checks_not_passed"] == (
        "domain/rouge_l, arc_challenge/acc_norm, ifeval/prompt_level_strict_acc")
    assert unchanged.metrics["vs_base/domain/rouge_l/delta"] == 0.0
    assert unchanged.metrics["vs_base/domain/rouge_l/n"] == 6.0
    mix_a = children["mix-a"].data
    assert mix_a.tags["verdict"] == verdicts["mix-a"]
    arc_delta = table["arc_challenge/acc_norm delta"][1]
    assert mix_a.metrics["vs_base/arc_challenge/acc_norm/delta"] == pytest.approx(arc_delta)
    assert {"vs_base/general/ci_low", "vs_base/general/ci_high"} <= set(mix_a.metrics)


def test_local_model_files_follow_the_training_method(tmp_path):
    cfg = parse_config(demo_like_config(tmp_path, tmp_path / "unused.jsonl"))
    store = ArtifactStore(cfg.storage)
    full = store.commit(stage="train", name="full-run", key="k1", tables={}, rows_in=0, rows_kept=0,
                        extra={"method": "full"})
    (Path(full.uri) / "model").mkdir()
    assert local_model_files(full, store) == Path(full.uri) / "model"
    missing = store.commit(stage="train", name="lora-run", key="k2", tables={}, rows_in=0, rows_kept=0,
                           extra={"method": "lora"})
    with pytest.raises(FileNotFoundError, match="no adapter/ folder"):
        local_model_files(missing, store)
    unknown = store.commit(stage="train", name="odd-run", key="k3", tables={}, rows_in=0, rows_kept=0)
    with pytest.raises(ValueError, match="method is None"):
        local_model_files(unknown, store)


def test_cache_key_follows_model_revision_eval_settings_trained_model_and_benchmark_bytes(tmp_path):
    data_dir = tmp_path / "data"
    shutil.copytree(PROJECT_DATA_DIR / "arc_challenge", data_dir / "arc_challenge")
    cfg = parse_config(demo_like_config(tmp_path, tmp_path / "unused.jsonl",
                                        model={"name_or_path": "org/model", "revision": "abc"},
                                        eval={"offline": True, "data_dir": str(data_dir)}))

    def key(**changes) -> str:
        return _key("eval_general", {"model": cfg.model, "trained": None, "eval_cfg": cfg.eval,
                                     "storage": cfg.storage} | changes)

    base = key()
    assert key() == base  # what a sweep relies on: nothing about the mix is in it
    assert key(model=cfg.model.model_copy(update={"revision": "def"})) != base
    assert key(eval_cfg=cfg.eval.model_copy(update={"batch_size": 4})) != base
    # Verdict settings are compare's business: a new tolerance re-judges, it does not re-evaluate.
    assert key(eval_cfg=cfg.eval.model_copy(update={"tolerance": 0.05, "domain_target": 0.5})) == base
    trained = ArtifactRef(stage="train", name="mix-a", uri=str(tmp_path / "t"), fingerprint="f")
    assert key(trained=trained) != base
    with open(data_dir / "arc_challenge" / "ARC-Challenge-Test.jsonl", "a", encoding="utf-8") as f:
        f.write("\n")
    assert key() != base


def test_auto_precision_is_resolved_into_the_cache_key(tmp_path, monkeypatch):
    """`dtype: auto` means bf16 only where the hardware has it: a machine without it must not reuse bf16 scores."""
    cfg = parse_config(demo_like_config(tmp_path, tmp_path / "unused.jsonl", model={"name_or_path": "org/model"},
                                        eval={"offline": True, "device": "cpu", "general_tasks": []}))

    def key() -> str:
        return _key("eval_general", {"model": cfg.model, "trained": None, "eval_cfg": cfg.eval,
                                     "storage": cfg.storage})

    here, native_here = key(), native_bf16("cpu")
    assert eval_dtype("auto", "cpu") == ("bfloat16" if native_here else "float32")
    assert eval_dtype("float16", "cpu") == "float16"  # an explicit dtype is used as given
    # A CPU without native bf16 cannot be had here when this one has it: stand one in.
    monkeypatch.setattr(under_test, "native_bf16", lambda device: False)
    assert eval_dtype("auto", "cpu") == "float32"
    assert (key() != here) == native_here


def test_remote_trained_model_is_fetched_once_into_the_local_cache(s3_endpoint):  # noqa: F811
    bucket = f"evaluate-{uuid.uuid4().hex[:8]}"  # the cache folder is named by the root: keep it unique
    create_bucket(s3_endpoint, bucket)
    store = ArtifactStore(StorageConfig(root=f"s3://{bucket}/store", endpoint_url=s3_endpoint))
    uri = store.artifact_uri("train", "mix-a", "k1")
    store.write_bytes(f"{uri}/adapter/adapter_config.json", b'{"r": 4}')
    ref = store.commit(stage="train", name="mix-a", key="k1", tables={}, rows_in=0, rows_kept=0,
                       extra={"method": "lora"})
    local = local_model_files(ref, store)
    assert local.name == "adapter" and (local / "adapter_config.json").read_bytes() == b'{"r": 4}'
    store.fs.rm(store.fs_path(f"{uri}/adapter"), recursive=True)
    assert local_model_files(ref, store) == local  # served from the cache, not fetched again
    shutil.rmtree(local_model_cache(store))
