"""download: read one source (files, a folder, s3://, https://, or a Hugging Face dataset) into a frame.

Input: a ``SourceConfig``. Output: one polars frame whose rows carry lineage,
``_row_id`` (Int64, 0..n-1), ``_source_file`` (the URI the row came from) and
``_source_row`` (Int64, 0-based record index within that file), plus a
content fingerprint of the bytes read.

Invariants:
- The same bytes give the same frame and the same fingerprint: folder files
  are read in sorted path order, and every row keeps its file and record index.
- Whole-file faults raise ``DataError`` naming the file (see ``mixtune.prepare.formats``);
  nothing is silently skipped. A folder reads only files whose extension names
  a data format, so a README or PROVENANCE.md beside the data is not read.
- ``stat_fingerprint`` identifies the input without reading it (size, mtime,
  ETag ...), so a cache keyed on it re-runs download when a file changes.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import polars as pl
from fsspec import AbstractFileSystem
from fsspec.core import url_to_fs

from mixtune.storage.artifacts import fingerprint, storage_options
from mixtune.errors import DataError
from mixtune.prepare.formats import format_of, json_text, parse_file, parse_json_text
from mixtune.sections import SourceConfig, StorageConfig

LINEAGE_COLUMNS = ("_row_id", "_source_file", "_source_row")
HF_PREFIX = "hf://"
# fsspec ``info`` keys that change when a file's content does (local, S3, HTTP).
STAT_KEYS = ("size", "mtime", "ETag", "etag", "LastModified", "Last-Modified",
             "VersionId", "Content-MD5", "Digest")


@dataclass(frozen=True)
class DownloadResult:
    """The frame with lineage, a SHA-256 over the bytes read (in file order), the files read."""

    frame: pl.DataFrame
    content_fingerprint: str
    files: list[str]


def download(source: SourceConfig, storage: StorageConfig | None = None) -> DownloadResult:
    """Read every file of the source (or the HF dataset), add lineage, keep ``max_rows``."""
    if _is_hf(source):
        return _download_hf(source)
    fs, paths = _list_files(source, storage)
    digest = hashlib.sha256()
    frames: list[pl.DataFrame] = []
    files: list[str] = []
    rows_read = 0
    for path in paths:
        uri = _uri(fs, path)
        raw = _read_bytes(fs, path, uri)
        # Length-prefixed so that moving bytes between files changes the digest.
        digest.update(len(raw).to_bytes(8, "big"))
        digest.update(raw)
        frame = parse_file(raw, uri, source.format)
        frames.append(_with_file_lineage(frame, uri))
        files.append(uri)
        rows_read += frame.height
        if source.max_rows is not None and rows_read >= source.max_rows:
            break  # later files are not needed, so they are not read
    frame = _concat(frames, source.uri)
    if source.max_rows is not None:
        frame = frame.head(source.max_rows)
    return DownloadResult(_with_row_ids(frame), digest.hexdigest(), files)


def stat_fingerprint(source: SourceConfig, storage: StorageConfig | None = None) -> str:
    """Cheap identity of the input, from metadata only: path, size, mtime / ETag per file.

    An https server that sends none of size, ETag or Last-Modified leaves only
    the URL, so new content at the same URL is not seen: use versioned URLs there.
    """
    if _is_hf(source):
        dataset_id = _hf_id(source)
        resolved = _hf_resolved_revision(dataset_id, source.revision)
        return fingerprint("hf", dataset_id, source.config_name, source.revision, resolved,
                           source.split)
    fs, paths = _list_files(source, storage)
    stats = []
    for path in paths:
        info = fs.info(path)
        stats.append([_uri(fs, path), {k: str(info[k]) for k in STAT_KEYS if k in info}])
    return fingerprint("files", source.format, stats)


# --- files ---


def _list_files(source: SourceConfig, storage: StorageConfig | None
                ) -> tuple[AbstractFileSystem, list[str]]:
    """The source's files in a stable order: one file, a folder's data files, or a glob."""
    options = storage_options(storage, source.uri) if storage else {}
    if source.uri.startswith(("http://", "https://")):
        # Credentials never sit in the URI (sections.WHERE_CREDENTIALS_GO): with trust_env, aiohttp
        # takes them from ~/.netrc (or $NETRC) for the host, and proxies from the environment.
        options = {"client_kwargs": {"trust_env": True}}
    fs, path = url_to_fs(source.uri, **options)
    # fsspec reuses filesystem instances and their listings; a long-lived
    # worker must see files written since its last look.
    fs.invalidate_cache()
    if source.uri.startswith(("http://", "https://")):
        return fs, [path]  # HTTP has no listing; a URL is one file
    if any(ch in path for ch in "*?["):
        matches = sorted(p for p in fs.glob(path) if fs.isfile(p))
        if not matches:
            raise DataError(source.uri, "no file matches this pattern")
        return fs, matches
    if fs.isdir(path):
        return fs, _folder_files(fs, path, source)
    if not fs.exists(path):
        raise DataError(source.uri, "file or folder does not exist")
    return fs, [path]


def _folder_files(fs: AbstractFileSystem, folder: str, source: SourceConfig) -> list[str]:
    found = sorted(fs.find(folder))
    wanted = None if source.format == "auto" else source.format

    def is_data(path: str) -> bool:
        name = path.rsplit("/", 1)[-1]
        fmt = format_of(name)
        # Hidden and marker files (".DS_Store", "_SUCCESS") are never data.
        return not name.startswith((".", "_")) and fmt is not None and fmt == (wanted or fmt)

    paths = [p for p in found if is_data(p)]
    if not paths:
        seen = ", ".join(p.rsplit("/", 1)[-1] for p in found[:10]) or "nothing"
        kind = f"{wanted} files" if wanted else "data files (.jsonl .json .csv .tsv .parquet, or .gz)"
        raise DataError(source.uri, f"folder holds no {kind}; found: {seen}")
    return paths


def _read_bytes(fs: AbstractFileSystem, path: str, uri: str) -> bytes:
    try:
        with fs.open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise DataError(uri, "file does not exist") from None
    except PermissionError as exc:
        raise DataError(uri, f"cannot read the file: {exc}") from None
    except IsADirectoryError:
        raise DataError(uri, "is a folder, not a file") from None


def _uri(fs: AbstractFileSystem, path: str) -> str:
    protocols = fs.protocol if isinstance(fs.protocol, (tuple, list)) else (fs.protocol,)
    return path if "file" in protocols else fs.unstrip_protocol(path)


# --- lineage ---


def _with_file_lineage(frame: pl.DataFrame, uri: str) -> pl.DataFrame:
    clash = [c for c in LINEAGE_COLUMNS if c in frame.columns]
    if clash:
        raise DataError(uri, f"column {clash[0]} is reserved for mixtune's lineage; rename it",
                        field=clash[0])
    return frame.with_columns(
        pl.lit(uri, dtype=pl.Utf8).alias("_source_file"),
        pl.int_range(0, frame.height, dtype=pl.Int64).alias("_source_row"),
    )


def _with_row_ids(frame: pl.DataFrame) -> pl.DataFrame:
    frame = frame.with_columns(pl.int_range(0, frame.height, dtype=pl.Int64).alias("_row_id"))
    data_columns = [c for c in frame.columns if c not in LINEAGE_COLUMNS]
    return frame.select(*LINEAGE_COLUMNS, *data_columns)


def _concat(frames: list[pl.DataFrame], source_uri: str) -> pl.DataFrame:
    if len(frames) == 1:
        return frames[0]
    frames = _one_type_per_column(frames, source_uri)
    try:
        # Files may differ in columns (missing ones become null) but not in meaning.
        return pl.concat(frames, how="diagonal_relaxed")
    except Exception as exc:  # noqa: BLE001 - polars raises several schema errors
        raise DataError(source_uri, f"files do not form one table: {exc}") from None


def _one_type_per_column(frames: list[pl.DataFrame], source_uri: str) -> list[pl.DataFrame]:
    """Frames whose shared columns have one type, without changing a value's text.

    polars' relaxed concat would cast to a common type and write a struct into a text
    column as '{"nested"}' or a float as 19.9. Here integer widths may differ; a column that
    is nested in one file and nested differently, or JSON text (``formats``: turns that do
    not share one type), in another becomes JSON text in every file, so an odd row is
    rejected later with its reason. Any other difference fails the source, naming both files.
    """
    columns = list(dict.fromkeys(c for f in frames for c in f.columns))
    as_json_text = []
    for column in columns:
        typed = [(f.schema[column], f) for f in frames if f.schema.get(column, pl.Null) != pl.Null]
        kinds = list(dict.fromkeys(dtype for dtype, _ in typed))
        if len(kinds) <= 1 or all(k.is_integer() for k in kinds):
            continue
        if all(k.is_nested() or k == pl.String for k in kinds) and all(
                _is_json_text(f.get_column(column)) for dtype, f in typed if dtype == pl.String):
            as_json_text.append(column)
            continue
        (first, first_frame), (other, other_frame) = typed[0], next(t for t in typed if t[0] != typed[0][0])
        raise DataError(source_uri, f"files do not form one table: column {column!r} holds {first} in "
                                    f"{first_frame['_source_file'][0]} but {other} in "
                                    f"{other_frame['_source_file'][0]}", field=column)
    return [
        frame.with_columns(
            pl.Series(c, [None if v is None else json_text(v) for v in frame.get_column(c).to_list()],
                      dtype=pl.String)
            for c in as_json_text if frame.schema.get(c, pl.Null).is_nested())
        for frame in frames
    ]


def _is_json_text(texts: pl.Series) -> bool:
    """Every value is JSON text of an array or object (text in prose form never is)."""
    for text in texts.drop_nulls().to_list():
        try:
            if not isinstance(parse_json_text(text), (list, dict)):
                return False
        except ValueError:  # json.JSONDecodeError included
            return False
    return True


# --- Hugging Face datasets ---


def _is_hf(source: SourceConfig) -> bool:
    return source.format == "hf" or source.uri.startswith(HF_PREFIX)


def unpinned_revision(source: SourceConfig) -> str | None:
    """Why a hub source may read different data next time, or None when it is pinned to a commit."""
    if not _is_hf(source):
        return None
    revision = source.revision
    if revision and len(revision) == 40 and all(c in "0123456789abcdef" for c in revision.lower()):
        return None
    shown = f"revision {revision!r}" if revision else "no revision"
    return (f"source {source.name!r} ({source.uri}) has {shown}, which moves with the hub: a re-run may "
            f"read different rows. Pin a commit SHA for reproducible runs; this run's data fingerprint "
            f"is in the download manifest.")


def _hf_id(source: SourceConfig) -> str:
    return source.uri.removeprefix(HF_PREFIX).strip("/")


def _download_hf(source: SourceConfig) -> DownloadResult:
    import datasets  # imported here: 1 s, and only HF sources need it

    dataset_id = _hf_id(source)
    where = f"config {source.config_name or 'default'}, revision {source.revision or 'latest'}, " \
            f"split {source.split}"
    try:
        dataset = datasets.load_dataset(
            dataset_id, name=source.config_name, revision=source.revision, split=source.split
        )
    except Exception as exc:  # noqa: BLE001 - hub, network and builder errors all mean "cannot load"
        raise DataError(
            f"{HF_PREFIX}{dataset_id}",
            f"cannot load Hugging Face dataset {dataset_id!r} ({where}): {type(exc).__name__}: "
            f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''}",
        ) from exc
    if source.max_rows is not None:
        dataset = dataset.select(range(min(source.max_rows, len(dataset))))
    frame = dataset.to_polars()
    if frame.height == 0:
        raise DataError(f"{HF_PREFIX}{dataset_id}", f"dataset split is empty ({where})")
    uri = f"{HF_PREFIX}{dataset_id}"
    content = fingerprint("hf", dataset_id, source.config_name, source.revision, source.split,
                          frame_fingerprint(frame))
    return DownloadResult(_with_row_ids(_with_file_lineage(frame, uri)), content, [uri])


def frame_fingerprint(frame: pl.DataFrame) -> str:
    """SHA-256 of a frame's Arrow IPC bytes: its content, whatever loaded it."""
    return hashlib.sha256(frame.write_ipc(None, compression="uncompressed").getvalue()).hexdigest()


def _hf_resolved_revision(dataset_id: str, revision: str | None) -> str | None:
    """The commit a branch or tag points at now, so an unpinned source sees new commits.

    Offline (or hub unreachable) gives None: the key then holds the requested
    revision only, and a pinned SHA is all a reproducible run needs anyway.
    """
    if revision is not None and len(revision) == 40:
        return revision
    try:
        from huggingface_hub import HfApi

        return HfApi().dataset_info(dataset_id, revision=revision).sha
    except Exception:  # noqa: BLE001 - offline, private or missing: fall back to the request
        return None

