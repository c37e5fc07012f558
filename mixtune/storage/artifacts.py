"""Artifact references, fingerprints and the storage they live in.

Every stage writes one artifact: a folder under the storage root holding one
folder of Parquet part files per table (``data``, ``rejects``, ``train`` ...)
and a ``manifest.json`` written last, so a folder without a manifest is an
interrupted write, never a result. The folder name is the artifact's
fingerprint, itself a hash of the stage's inputs, parameters and code version:
the same inputs always land in the same place.

The root is a local folder or ``s3://bucket/prefix`` on any S3-compatible
store through s3fs. Credentials come from the AWS environment or profile and
are never written into a reference, a manifest or a log.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Iterable

import fsspec
import polars as pl
from fsspec.core import url_to_fs
from pydantic import BaseModel, Field

from mixtune.sections import StorageConfig
from mixtune.storage.code_identity import code_identity
from mixtune.storage.faults import storage_faults

MANIFEST = "manifest.json"

log = logging.getLogger(__name__)


def fingerprint(*parts: Any) -> str:
    """A stable SHA-256 hex digest of JSON-able parts (dict order does not matter)."""
    blob = json.dumps(parts, sort_keys=True, default=_jsonable, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, ArtifactRef):
        return {"artifact": obj.fingerprint}  # an input is its content, not where it lives
    if isinstance(obj, BaseModel):
        return obj.model_dump(mode="json", by_alias=True)
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    raise TypeError(f"cannot fingerprint {type(obj).__name__}")


def code_version(*modules: ModuleType | str, exclude: Iterable[str] = ()) -> str:
    """Hash of the code the modules run: the source of every mixtune module they import,
    transitively, and the versions of the libraries that shape their output (``code_identity``)."""
    roots = [m if isinstance(m, str) else m.__name__ for m in modules]
    return fingerprint(code_identity(roots, exclude=exclude))[:16]


class ArtifactRef(BaseModel):
    """What one stage hands the next: where its output is and what it holds."""

    stage: str
    name: str = Field(description="the source or mix this artifact belongs to")
    uri: str = Field(description="folder holding the tables and manifest.json")
    fingerprint: str
    tables: dict[str, int] = Field(default_factory=dict, description="table name -> rows")
    rows_in: int = 0
    rows_kept: int = 0
    rows_rejected: int = 0


def storage_options(cfg: StorageConfig, uri: str | None = None) -> dict[str, Any]:
    """fsspec options for an s3:// URI (default: the root); no secrets, s3fs reads those itself."""
    if not (uri or cfg.root).startswith("s3://"):
        return {}
    opts: dict[str, Any] = {}
    client_kwargs: dict[str, Any] = {}
    if cfg.endpoint_url:
        client_kwargs["endpoint_url"] = cfg.endpoint_url
    if cfg.region:
        client_kwargs["region_name"] = cfg.region
    if client_kwargs:
        opts["client_kwargs"] = client_kwargs
    if cfg.profile:
        opts["profile"] = cfg.profile
    return opts


def _file_mode() -> int:
    """The mode ``open()`` gives a new file: 0666 less the umask (read by setting and restoring it,
    the only portable way; done once at import, before any thread of ours writes files)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


_FILE_MODE = _file_mode()


class ArtifactStore:
    """Reads and writes artifacts under one storage root through fsspec."""

    def __init__(self, cfg: StorageConfig) -> None:
        self.cfg = cfg
        self.fs, root = url_to_fs(cfg.root, **storage_options(cfg))
        self.root = root.rstrip("/")
        if self.is_local:
            with storage_faults(cfg):  # the first touch of the root, often in a flow, outside any stage
                self.fs.makedirs(self.root, exist_ok=True)

    def uri(self, *parts: str) -> str:
        """Full URI (``s3://...`` or an absolute path) for a path under the root."""
        path = "/".join([self.root, *parts])
        return path if self.is_local else self.fs.unstrip_protocol(path)

    @property
    def is_local(self) -> bool:
        protocol = self.fs.protocol
        return "file" in (protocol if isinstance(protocol, (tuple, list)) else (protocol,))

    def fs_path(self, uri: str) -> str:
        """The filesystem path of a URI under this store (no protocol), as fsspec calls take it."""
        return self.fs._strip_protocol(uri)

    # --- raw files ---

    def exists(self, uri: str) -> bool:
        return self.fs.exists(self.fs_path(uri))

    def write_bytes(self, uri: str, data: bytes) -> None:
        """Write a whole file atomically: a reader sees the old file, the new one, or none.

        Locally the bytes go to a temporary file in the same folder, are synced
        and renamed over the target (``os.replace``), so a crash or a full disk
        never leaves a torn file. An S3 object is atomic by itself: a PUT or a
        completed multipart upload, never half of one.
        """
        path = self.fs_path(uri)
        if not self.is_local:
            with self.fs.open(path, "wb") as f:
                f.write(data)
            return
        folder, name = path.rsplit("/", 1)
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=folder)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                # mkstemp makes the file private (0600); give it the mode open() would (0666 less umask).
                os.fchmod(f.fileno(), _FILE_MODE)
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException as error:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            if isinstance(error, OSError) and error.filename is None:  # a failed write() names no file
                raise OSError(error.errno, error.strerror, path) from error
            raise

    def read_bytes(self, uri: str) -> bytes:
        with self.fs.open(self.fs_path(uri), "rb") as f:
            return f.read()

    def write_json(self, uri: str, obj: Any) -> None:
        text = json.dumps(obj, indent=2, sort_keys=True, default=_jsonable) + "\n"
        self.write_bytes(uri, text.encode())

    def read_json(self, uri: str) -> Any:
        """The parsed file; a file that does not parse raises ``ValueError`` naming the URI."""
        try:
            return json.loads(self.read_bytes(uri))
        except ValueError as error:
            raise ValueError(f"{uri}: not valid JSON ({error})") from error

    def put_dir(self, local_dir: str, uri: str) -> None:
        """Upload a local folder (a model, a report) to a URI under the root."""
        if self.is_local:
            self.fs.makedirs(self.fs_path(uri), exist_ok=True)
        self.fs.put(local_dir.rstrip("/") + "/", self.fs_path(uri).rstrip("/") + "/", recursive=True)

    def put_file(self, local_path: str, uri: str) -> None:
        """Upload one local file (streamed, not read into memory); atomic per object on S3."""
        if self.is_local:
            self.write_bytes(uri, Path(local_path).read_bytes())
        else:
            self.fs.put_file(local_path, self.fs_path(uri))

    def list_names(self, uri: str) -> list[str]:
        """Names of the entries directly under a folder URI; empty when it does not exist."""
        path = self.fs_path(uri).rstrip("/")
        self.fs.invalidate_cache(path)  # s3fs caches listings; another worker may have written since
        if not self.fs.exists(path):
            return []
        return sorted(entry.rstrip("/").rsplit("/", 1)[-1] for entry in self.fs.ls(path, detail=False))

    def remove(self, uri: str) -> None:
        """Delete a file or a whole folder under the root."""
        self.fs.rm(self.fs_path(uri), recursive=True)

    def get_dir(self, uri: str, local_dir: str) -> None:
        self.fs.get(self.fs_path(uri).rstrip("/") + "/", local_dir.rstrip("/") + "/", recursive=True)

    def fetch_dir(self, uri: str, local_dir: Path) -> Path:
        """A local copy of a folder (HF loaders need local files), fetched once.

        Copied into a private ``<name>.partial-*`` folder and renamed
        (``publish_dir``), so a reader (another worker, a crashed run's
        successor, a concurrent run) sees all of it or none.
        """
        if local_dir.is_dir():
            return local_dir
        return publish_dir(lambda partial: self.get_dir(uri, str(partial)), local_dir)

    # --- tables ---

    def write_table(self, artifact_uri: str, table: str, frame: pl.DataFrame) -> None:
        buf = io.BytesIO()
        # Statistics off and one row group: same frame, same bytes, on any store.
        frame.write_parquet(buf, statistics=False, row_group_size=max(frame.height, 1))
        self.write_bytes(f"{artifact_uri}/{table}/part-00000.parquet", buf.getvalue())

    def read_table(self, ref: ArtifactRef | str, table: str = "data") -> pl.DataFrame:
        artifact_uri = ref.uri if isinstance(ref, ArtifactRef) else ref
        parts = sorted(self.fs.glob(self.fs_path(f"{artifact_uri}/{table}/*.parquet")))
        if not parts:
            raise FileNotFoundError(f"{artifact_uri}: no table {table!r}")
        frames = []
        for part in parts:
            with self.fs.open(part, "rb") as f:
                frames.append(pl.read_parquet(f))
        return pl.concat(frames, how="vertical") if len(frames) > 1 else frames[0]

    # --- whole artifacts ---

    def artifact_uri(self, stage: str, name: str, key: str) -> str:
        return self.uri(stage, f"{name}-{key[:16]}")

    def find(self, stage: str, name: str, key: str) -> ArtifactRef | None:
        """The complete artifact for this key, if an earlier run wrote one."""
        uri = self.artifact_uri(stage, name, key)
        manifest_uri = f"{uri}/{MANIFEST}"
        if not self.exists(manifest_uri):
            return None
        try:
            return ArtifactRef.model_validate(self.read_json(manifest_uri)["ref"])
        except (ValueError, KeyError, TypeError) as error:  # JSONDecodeError and ValidationError are ValueErrors
            # A torn manifest (a crash or a full disk mid-write, before writes were atomic) is no result.
            log.warning("%s does not parse (%s); treating the artifact as absent and recomputing it",
                        manifest_uri, error)
            return None

    def commit(
        self,
        *,
        stage: str,
        name: str,
        key: str,
        tables: dict[str, pl.DataFrame],
        parents: Iterable[ArtifactRef] = (),
        parameters: Any = None,
        rows_in: int,
        rows_kept: int,
        rows_rejected: int = 0,
        extra: dict[str, Any] | None = None,
    ) -> ArtifactRef:
        """Write every table, then manifest.json; counts must reconcile."""
        if rows_in != rows_kept + rows_rejected:
            raise ValueError(
                f"{stage}/{name}: counts do not reconcile: in {rows_in} != "
                f"kept {rows_kept} + rejected {rows_rejected}"
            )
        uri = self.artifact_uri(stage, name, key)
        for table, frame in tables.items():
            self.write_table(uri, table, frame)
        ref = ArtifactRef(
            stage=stage, name=name, uri=uri, fingerprint=key,
            tables={t: f.height for t, f in tables.items()},
            rows_in=rows_in, rows_kept=rows_kept, rows_rejected=rows_rejected,
        )
        manifest = {
            "ref": ref.model_dump(mode="json"),
            "stage": stage,
            "name": name,
            "fingerprint": key,
            "parents": [
                {"stage": p.stage, "name": p.name, "uri": p.uri, "fingerprint": p.fingerprint}
                for p in parents
            ],
            "parameters": parameters,
            "counts": {"rows_in": rows_in, "rows_kept": rows_kept, "rows_rejected": rows_rejected},
            "schema": {t: {c: str(d) for c, d in f.schema.items()} for t, f in tables.items()},
            **(extra or {}),
        }
        self.write_json(f"{uri}/{MANIFEST}", manifest)
        return ref

    def manifest(self, ref: ArtifactRef) -> dict[str, Any]:
        return self.read_json(f"{ref.uri}/{MANIFEST}")


def publish_dir(fill: Callable[[Path], Any], destination: Path) -> Path:
    """Fill a private folder beside ``destination``, then rename it into place; returns ``destination``.

    For folders whose content is fixed by their name (a fetched artifact, a
    built model): each writer gets its own ``<name>.partial-*`` folder, so two
    concurrent runs never delete or fill each other's, and when another run
    renamed its copy into place first, that copy is kept and this one dropped.
    """
    destination.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f"{destination.name}.partial-", dir=destination.parent))
    try:
        fill(partial)
        try:
            partial.rename(destination)  # atomic: a half-written folder is never seen as complete
        except OSError:
            if not destination.is_dir():
                raise
    finally:
        shutil.rmtree(partial, ignore_errors=True)  # gone after a rename; left over after a lost race
    return destination


def open_uri(uri: str, mode: str = "rb", storage: StorageConfig | None = None):
    """Open any fsspec URI; s3:// uses the storage section's endpoint and region."""
    return fsspec.open(uri, mode, **(storage_options(storage, uri) if storage else {}))
