"""Artifact store: tables + manifest, reconciled counts, stable fingerprints."""

from __future__ import annotations

import json

import polars as pl
import pytest

from mixtune.storage.artifacts import ArtifactRef, ArtifactStore, fingerprint, storage_options
from mixtune.sections import SplitConfig, StorageConfig


def test_fingerprint_ignores_dict_order_and_uses_artifact_content():
    assert fingerprint({"a": 1, "b": 2}) == fingerprint({"b": 2, "a": 1})
    ref_here = ArtifactRef(stage="s", name="n", uri="/x/1", fingerprint="abc")
    ref_there = ArtifactRef(stage="s", name="n", uri="s3://b/1", fingerprint="abc")
    assert fingerprint(ref_here, SplitConfig()) == fingerprint(ref_there, SplitConfig())
    assert fingerprint(SplitConfig(seed=1)) != fingerprint(SplitConfig(seed=2))


def test_commit_writes_tables_then_manifest_and_reads_back(tmp_path):
    store = ArtifactStore(StorageConfig(root=str(tmp_path / "root")))
    kept = pl.DataFrame({"_row_id": [0, 2], "text": ["a", "c"]})
    rejects = pl.DataFrame({"_row_id": [1], "reason": ["empty_content"]})
    parent = ArtifactRef(stage="download", name="d", uri="/p", fingerprint="f0")
    ref = store.commit(stage="validate", name="d", key="k" * 64, tables={"data": kept, "rejects": rejects},
                       parents=[parent], parameters={"max_length": 8}, rows_in=3, rows_kept=2, rows_rejected=1)
    assert ref.tables == {"data": 2, "rejects": 1}
    assert store.read_table(ref).equals(kept)
    assert store.read_table(ref, "rejects").equals(rejects)
    manifest = json.loads((tmp_path / "root" / "validate" / f"d-{'k' * 16}" / "manifest.json").read_text())
    assert manifest["counts"] == {"rows_in": 3, "rows_kept": 2, "rows_rejected": 1}
    assert manifest["parents"][0]["fingerprint"] == "f0"
    assert manifest["schema"]["data"] == {"_row_id": "Int64", "text": "String"}
    assert store.find("validate", "d", "k" * 64) == ref
    assert store.find("validate", "d", "z" * 64) is None


def test_commit_refuses_counts_that_do_not_reconcile(tmp_path):
    store = ArtifactStore(StorageConfig(root=str(tmp_path)))
    with pytest.raises(ValueError, match="do not reconcile"):
        store.commit(stage="s", name="n", key="k" * 64, tables={"data": pl.DataFrame({"a": [1]})},
                     rows_in=3, rows_kept=1, rows_rejected=1)


def test_same_frame_writes_same_bytes(tmp_path):
    store = ArtifactStore(StorageConfig(root=str(tmp_path)))
    frame = pl.DataFrame({"a": list(range(100)), "b": [str(i) for i in range(100)]})
    store.write_table(store.uri("x"), "t", frame)
    store.write_table(store.uri("y"), "t", frame)
    assert (tmp_path / "x/t/part-00000.parquet").read_bytes() == (tmp_path / "y/t/part-00000.parquet").read_bytes()


def test_storage_options_carry_endpoint_but_never_keys(monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "very-secret-value")
    cfg = StorageConfig(root="s3://bucket/prefix", endpoint_url="http://127.0.0.1:9000", region="eu-west-1")
    opts = storage_options(cfg)
    assert opts == {"client_kwargs": {"endpoint_url": "http://127.0.0.1:9000", "region_name": "eu-west-1"}}
    assert "very-secret-value" not in json.dumps(opts) + cfg.model_dump_json()
    assert storage_options(StorageConfig(root="/tmp/x")) == {}


def test_written_files_get_the_mode_open_would_give_not_a_private_temp_files(tmp_path):
    """Reports and manifests are for sharing: 0666 less the umask, as any file the user writes."""
    import os

    store = ArtifactStore(StorageConfig(root=str(tmp_path / "root")))
    store.write_bytes(store.uri("compare", "report.md"), b"# report\n")
    plain = tmp_path / "plain.txt"
    plain.write_bytes(b"x")
    written = tmp_path / "root" / "compare" / "report.md"
    assert os.stat(written).st_mode & 0o777 == os.stat(plain).st_mode & 0o777


def test_torn_manifest_counts_as_absent_with_a_warning_naming_it_and_is_recomputed(tmp_path, caplog):
    store = ArtifactStore(StorageConfig(root=str(tmp_path / "root")))
    frame = pl.DataFrame({"_row_id": [0, 1]})
    ref = store.commit(stage="split", name="d", key="k" * 64, tables={"data": frame}, rows_in=2, rows_kept=2)
    manifest_path = tmp_path / "root" / "split" / f"d-{'k' * 16}" / "manifest.json"
    whole = manifest_path.read_bytes()
    manifest_path.write_bytes(whole[: len(whole) // 2])  # what a crash or a full disk mid-write left
    with caplog.at_level("WARNING", logger="mixtune.storage.artifacts"):
        assert store.find("split", "d", "k" * 64) is None
    assert str(manifest_path) in caplog.text and "recomputing" in caplog.text
    with pytest.raises(ValueError, match="manifest.json: not valid JSON"):
        store.manifest(ref)
    assert store.commit(stage="split", name="d", key="k" * 64, tables={"data": frame}, rows_in=2,
                        rows_kept=2) == ref
    assert store.find("split", "d", "k" * 64) == ref
    assert manifest_path.read_bytes() == whole


def test_a_failed_write_leaves_the_old_file_whole_and_no_temporary_file(tmp_path, monkeypatch):
    import errno
    import os

    store = ArtifactStore(StorageConfig(root=str(tmp_path / "root")))
    uri = store.uri("stage", "a", "manifest.json")
    store.write_json(uri, {"version": 1})

    def disk_full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space left"):
        store.write_json(uri, {"version": 2, "padding": "x" * 100_000})
    monkeypatch.undo()
    assert store.read_json(uri) == {"version": 1}
    assert sorted(p.name for p in (tmp_path / "root" / "stage" / "a").iterdir()) == ["manifest.json"]


def test_concurrent_publishers_of_one_folder_never_collide(tmp_path):
    """Two runs on one fresh root built the same model at once; the second crashed renaming the shared
    `.partial` folder ('Directory not empty'). Each writer now fills its own folder; the first rename wins."""
    import threading

    from mixtune.storage.artifacts import publish_dir

    destination = tmp_path / "models" / "tiny-abc"
    barrier = threading.Barrier(4)
    errors: list[BaseException] = []

    def fill(partial):
        (partial / "config.json").write_text("{}")
        barrier.wait()  # every writer has a half-filled folder before any renames
        (partial / "model.safetensors").write_bytes(b"w" * 1000)

    def publish():
        try:
            publish_dir(fill, destination)
        except BaseException as error:  # noqa: BLE001 - the test reports any
            errors.append(error)

    threads = [threading.Thread(target=publish) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(p.name for p in destination.iterdir()) == ["config.json", "model.safetensors"]
    assert [p.name for p in destination.parent.iterdir()] == ["tiny-abc"]  # no partial folder left behind
