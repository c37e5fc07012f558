"""download: every format, folders, lineage, fingerprints, S3/HTTP, and each whole-file error."""

from __future__ import annotations

import functools
import gzip
import http.server
import json
import os
import threading
from pathlib import Path

import polars as pl
import pytest
from s3_server import create_bucket, s3_endpoint  # noqa: F401  (fixture)

from mixtune.prepare.download import download, stat_fingerprint
from mixtune.errors import DataError
from mixtune.sections import SourceConfig, StorageConfig

RECORDS = [
    {"id": "007", "question": "What is A?", "answer": "A is a letter."},
    {"id": "008", "question": "Is ünïcode kept?", "answer": "Yes: “quotes” too."},
    {"id": "010", "question": "Third?", "answer": "Third."},
]
DATA_COLUMNS = ["id", "question", "answer"]


def source(uri: Path | str, **kw) -> SourceConfig:
    return SourceConfig(name="src", uri=str(uri), **kw)


def encode(records: list[dict], fmt: str) -> bytes:
    """The records as one file's bytes in the given format."""
    if fmt == "jsonl":
        return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode()
    if fmt == "json":
        return json.dumps(records, ensure_ascii=False, indent=1).encode()
    frame = pl.DataFrame(records)
    if fmt in ("csv", "tsv"):
        return frame.write_csv(separator="," if fmt == "csv" else "\t").encode()
    import io

    buf = io.BytesIO()
    frame.write_parquet(buf)
    return buf.getvalue()


def write(path: Path, data: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


# --- formats ---


@pytest.mark.parametrize("fmt", ["jsonl", "json", "csv", "tsv", "parquet"])
@pytest.mark.parametrize("gzipped", [False, True], ids=["plain", "gz"])
def test_download_reads_each_format_with_lineage(tmp_path, fmt, gzipped):
    raw = encode(RECORDS, fmt)
    path = write(tmp_path / (f"rows.{fmt}" + (".gz" if gzipped else "")),
                 gzip.compress(raw) if gzipped else raw)

    result = download(source(path))

    assert result.frame.columns == ["_row_id", "_source_file", "_source_row", *DATA_COLUMNS]
    assert result.frame.select(DATA_COLUMNS).to_dicts() == RECORDS
    assert result.frame["_row_id"].to_list() == [0, 1, 2]
    assert result.frame["_source_row"].to_list() == [0, 1, 2]
    assert result.frame["_source_file"].unique().to_list() == [str(path)]
    assert result.frame.schema["_row_id"] == pl.Int64
    assert result.frame.schema["_source_row"] == pl.Int64
    assert result.files == [str(path)]


def test_download_explicit_format_overrides_the_extension(tmp_path):
    path = write(tmp_path / "export.txt", encode(RECORDS, "jsonl"))
    assert download(source(path, format="jsonl")).frame.height == 3
    with pytest.raises(DataError, match="cannot tell the format"):
        download(source(path))


def test_download_csv_keeps_every_column_as_text(tmp_path):
    path = write(tmp_path / "rows.csv", "id,score,answer\n007,1.50,yes\n010,2,no\n")
    frame = download(source(path)).frame
    assert frame.schema["id"] == pl.Utf8 and frame.schema["score"] == pl.Utf8
    assert frame["id"].to_list() == ["007", "010"]
    assert frame["score"].to_list() == ["1.50", "2"]


def test_download_jsonl_blank_lines_do_not_count_as_records(tmp_path):
    path = write(tmp_path / "rows.jsonl", '{"q": "a"}\n\n{"q": "b"}\n\n')
    frame = download(source(path)).frame
    assert frame["q"].to_list() == ["a", "b"]
    assert frame["_source_row"].to_list() == [0, 1]


def test_download_keeps_nested_messages(tmp_path):
    conversation = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    path = write(tmp_path / "chat.jsonl", json.dumps({"messages": conversation}) + "\n")
    frame = download(source(path)).frame
    assert frame["messages"].to_list() == [conversation]


# --- folders, max_rows ---


def test_download_folder_reads_data_files_in_sorted_path_order(tmp_path):
    folder = tmp_path / "data"
    write(folder / "b.jsonl", encode(RECORDS[1:], "jsonl"))
    write(folder / "a.jsonl", encode(RECORDS[:1], "jsonl"))
    write(folder / "sub" / "c.csv", "id,question,answer\n011,Q?,A.\n")
    write(folder / "PROVENANCE.md", "# not data\n")
    write(folder / "_SUCCESS", "")
    write(folder / ".hidden.jsonl", "not json\n")

    result = download(source(folder))

    expected_files = [str(folder / "a.jsonl"), str(folder / "b.jsonl"), str(folder / "sub" / "c.csv")]
    assert result.files == expected_files
    frame = result.frame
    assert frame["id"].to_list() == ["007", "008", "010", "011"]
    assert frame["_row_id"].to_list() == [0, 1, 2, 3]
    assert frame["_source_file"].to_list() == [expected_files[0], *[expected_files[1]] * 2,
                                               expected_files[2]]
    assert frame["_source_row"].to_list() == [0, 0, 1, 0]


def test_download_folder_fills_missing_columns_with_null(tmp_path):
    write(tmp_path / "d" / "a.jsonl", '{"q": "a", "extra": "x"}\n')
    write(tmp_path / "d" / "b.jsonl", '{"q": "b"}\n')
    frame = download(source(tmp_path / "d")).frame
    assert frame["extra"].to_list() == ["x", None]


def test_download_folder_without_data_files_says_so(tmp_path):
    write(tmp_path / "d" / "README.md", "hello")
    with pytest.raises(DataError, match="folder holds no data files.*README.md"):
        download(source(tmp_path / "d"))


def test_download_glob_reads_matching_files_only(tmp_path):
    write(tmp_path / "part-1.jsonl", encode(RECORDS[:1], "jsonl"))
    write(tmp_path / "part-2.jsonl", encode(RECORDS[1:2], "jsonl"))
    write(tmp_path / "other.jsonl", encode(RECORDS[2:], "jsonl"))
    result = download(source(tmp_path / "part-*.jsonl"))
    assert result.frame["id"].to_list() == ["007", "008"]


def test_download_max_rows_keeps_the_first_rows_and_skips_later_files(tmp_path):
    write(tmp_path / "d" / "a.jsonl", encode(RECORDS, "jsonl"))
    write(tmp_path / "d" / "b.jsonl", "this file is never read\n")
    result = download(source(tmp_path / "d", max_rows=2))
    assert result.frame["id"].to_list() == ["007", "008"]
    assert result.frame["_row_id"].to_list() == [0, 1]
    assert result.files == [str(tmp_path / "d" / "a.jsonl")]


# --- fingerprints ---


def test_content_fingerprint_follows_the_bytes(tmp_path):
    path = write(tmp_path / "rows.jsonl", encode(RECORDS, "jsonl"))
    first = download(source(path)).content_fingerprint
    assert download(source(path)).content_fingerprint == first

    write(path, encode(RECORDS, "jsonl"))  # rewritten, same bytes
    assert download(source(path)).content_fingerprint == first

    write(path, encode(RECORDS[:2], "jsonl"))
    assert download(source(path)).content_fingerprint != first


def test_content_fingerprint_sees_bytes_moving_between_files(tmp_path):
    write(tmp_path / "x" / "a.jsonl", '{"q": "a"}\n{"q": "b"}\n')
    write(tmp_path / "x" / "b.jsonl", '{"q": "c"}\n')
    write(tmp_path / "y" / "a.jsonl", '{"q": "a"}\n')
    write(tmp_path / "y" / "b.jsonl", '{"q": "b"}\n{"q": "c"}\n')
    assert (download(source(tmp_path / "x")).content_fingerprint
            != download(source(tmp_path / "y")).content_fingerprint)


def test_stat_fingerprint_changes_when_a_file_is_rewritten(tmp_path):
    path = write(tmp_path / "rows.jsonl", encode(RECORDS, "jsonl"))
    first = stat_fingerprint(source(path))
    assert stat_fingerprint(source(path)) == first

    write(path, encode(RECORDS[:2], "jsonl"))  # new size
    second = stat_fingerprint(source(path))
    assert second != first

    # Same size, written later: only the mtime tells them apart.
    write(path, encode(RECORDS[:2], "jsonl").replace(b"A is", b"B is"))
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert stat_fingerprint(source(path)) != second


def test_stat_fingerprint_sees_a_new_file_in_a_folder(tmp_path):
    write(tmp_path / "d" / "a.jsonl", encode(RECORDS, "jsonl"))
    first = stat_fingerprint(source(tmp_path / "d"))
    write(tmp_path / "d" / "b.jsonl", encode(RECORDS, "jsonl"))
    assert stat_fingerprint(source(tmp_path / "d")) != first


# --- whole-file errors: each names the file and where ---


def test_malformed_jsonl_line_names_file_and_line(tmp_path):
    path = write(tmp_path / "bad.jsonl", '{"q": "a"}\n\n{"q": "b",}\n{"q": "c"}\n')
    with pytest.raises(DataError) as err:
        download(source(path))
    assert err.value.file == str(path) and err.value.line == 3
    assert f"{path} line 3: not valid JSON: Expecting property name" in str(err.value)


def test_jsonl_line_that_is_not_an_object_names_the_line(tmp_path):
    path = write(tmp_path / "bad.jsonl", '{"q": "a"}\n[1, 2]\n')
    with pytest.raises(DataError, match=r"line 2: expected a JSON object, got an array"):
        download(source(path))


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_non_utf8_bytes_name_file_and_byte_offset(tmp_path, fmt):
    good = encode(RECORDS[:1], fmt)
    path = write(tmp_path / f"latin1.{fmt}", good + "café".encode("latin-1"))
    with pytest.raises(DataError) as err:
        download(source(path))
    assert err.value.byte_offset == len(good) + 3
    assert f"{path} byte {len(good) + 3}: not valid UTF-8" in str(err.value)


@pytest.mark.parametrize("name,content", [
    ("empty.jsonl", b""), ("blank.jsonl", b"\n \n"), ("empty.csv", b""),
    ("header_only.csv", b"id,question\n"), ("empty.json", b"[]"),
    ("empty.jsonl.gz", gzip.compress(b"")), ("empty.parquet", b""),
])
def test_empty_file_says_it_is_empty(tmp_path, name, content):
    path = write(tmp_path / name, content)
    with pytest.raises(DataError, match="file is empty") as err:
        download(source(path))
    assert err.value.file == str(path)


@pytest.mark.parametrize("content,detail", [
    ('{"q": "a"}', "expected a JSON array of objects, got an object"),
    ('[{"q": "a"}, "b"]', "element 1 is a string"),
])
def test_json_that_is_not_an_array_of_objects_says_so(tmp_path, content, detail):
    path = write(tmp_path / "rows.json", content)
    with pytest.raises(DataError, match=detail):
        download(source(path))


def test_malformed_json_array_names_the_line(tmp_path):
    path = write(tmp_path / "rows.json", '[\n{"q": "a"},\n{"q": }\n]')
    with pytest.raises(DataError) as err:
        download(source(path))
    assert err.value.line == 3


def test_missing_file_is_named(tmp_path):
    path = tmp_path / "nowhere" / "rows.jsonl"
    with pytest.raises(DataError, match="does not exist") as err:
        download(source(path))
    assert err.value.file == str(path)
    with pytest.raises(DataError, match="does not exist"):
        stat_fingerprint(source(path))


def test_broken_parquet_and_gzip_files_are_named(tmp_path):
    with pytest.raises(DataError, match="not a readable Parquet file"):
        download(source(write(tmp_path / "x.parquet", b"PAR1 not really")))
    with pytest.raises(DataError, match="not a valid gzip file"):
        download(source(write(tmp_path / "x.jsonl.gz", b"\x1f\x8b truncated")))


def test_input_column_named_like_lineage_is_refused(tmp_path):
    path = write(tmp_path / "rows.jsonl", '{"_row_id": 5, "q": "a"}\n')
    with pytest.raises(DataError, match="_row_id is reserved"):
        download(source(path))


def test_unreachable_hf_dataset_names_the_dataset(tmp_path):
    # The hub is offline here (HF_DATASETS_OFFLINE=1): load_dataset fails fast, for real.
    cfg = source("hf://mixtune-tests/no-such-dataset", revision="v1", split="test")
    with pytest.raises(DataError, match="cannot load Hugging Face dataset "
                                        "'mixtune-tests/no-such-dataset'") as err:
        download(cfg)
    assert err.value.file == "hf://mixtune-tests/no-such-dataset"
    assert "revision v1, split test" in str(err.value)


def test_hf_stat_fingerprint_is_offline_identity():
    base = source("hf://org/set", revision="v1")
    assert stat_fingerprint(base) == stat_fingerprint(source("hf://org/set", revision="v1"))
    assert stat_fingerprint(base) != stat_fingerprint(source("hf://org/set", revision="v2"))
    assert stat_fingerprint(base) != stat_fingerprint(source("hf://org/set", revision="v1",
                                                             split="test"))


# --- remote: S3 (moto on loopback) and HTTP (stdlib server on loopback) ---


def test_download_reads_an_s3_folder(s3_endpoint):  # noqa: F811
    import boto3

    create_bucket(s3_endpoint, "mixtune-data")
    client = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    client.put_object(Bucket="mixtune-data", Key="qa/b.jsonl", Body=encode(RECORDS[1:], "jsonl"))
    client.put_object(Bucket="mixtune-data", Key="qa/a.csv.gz",
                      Body=gzip.compress(encode(RECORDS[:1], "csv")))
    storage = StorageConfig(root="s3://mixtune-data/store", endpoint_url=s3_endpoint,
                            region="us-east-1")
    cfg = source("s3://mixtune-data/qa")

    result = download(cfg, storage)

    assert result.files == ["s3://mixtune-data/qa/a.csv.gz", "s3://mixtune-data/qa/b.jsonl"]
    assert result.frame.select(DATA_COLUMNS).to_dicts() == RECORDS
    assert result.frame["_source_file"].to_list() == [result.files[0], *[result.files[1]] * 2]

    before = stat_fingerprint(cfg, storage)
    client.put_object(Bucket="mixtune-data", Key="qa/b.jsonl", Body=encode(RECORDS[2:], "jsonl"))
    assert stat_fingerprint(cfg, storage) != before
    assert download(cfg, storage).frame.height == 2


@pytest.fixture
def http_folder(tmp_path):
    """A stdlib HTTP server on 127.0.0.1 serving tmp_path; yields its base URL."""
    handler = functools.partial(_QuietHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield tmp_path, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        thread.join()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


def test_download_reads_an_http_file_and_stats_it(http_folder):
    folder, base_url = http_folder
    write(folder / "rows.jsonl", encode(RECORDS, "jsonl"))
    cfg = source(f"{base_url}/rows.jsonl")

    result = download(cfg)
    assert result.frame.select(DATA_COLUMNS).to_dicts() == RECORDS
    assert result.files == [f"{base_url}/rows.jsonl"]

    before = stat_fingerprint(cfg)
    write(folder / "rows.jsonl", encode(RECORDS[:1], "jsonl"))
    assert stat_fingerprint(cfg) != before


def test_http_file_that_is_missing_is_named(http_folder):
    _, base_url = http_folder
    with pytest.raises(DataError, match="does not exist"):
        download(source(f"{base_url}/missing.jsonl"))


def test_unpinned_hub_revision_is_named_and_a_commit_sha_is_not():
    from mixtune.prepare.download import unpinned_revision

    floating = SourceConfig(name="m", uri="hf://allenai/tulu-3-sft-personas-math", revision="main")
    assert "revision 'main'" in unpinned_revision(floating) and "'m'" in unpinned_revision(floating)
    assert "no revision" in unpinned_revision(floating.model_copy(update={"revision": None}))
    pinned = floating.model_copy(update={"revision": "83ecd36fe1ca604781d4ed0b4541b120fb7a2ee7"})
    assert unpinned_revision(pinned) is None
    assert unpinned_revision(SourceConfig(name="f", uri="/data/x.jsonl")) is None
