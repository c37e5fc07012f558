"""MLflow tracking: one parent run per pipeline or sweep, one child run per mix.

Parameters are the resolved config, flattened to dotted keys
(``mix.domain_percent``), so runs can be filtered in the MLflow UI the way
users already think of them; the catalog's per-source details are cut to each
category's source names (``categories.math``: ``gsm8k-train, aqua-cot``) and
floats to 6 significant digits (``config_params``). The whole resolved config
is the run's ``config/resolved_config.json``. The config holds no secrets by
design (S3 keys and API keys come from the environment), and ``redact`` is a
second guard for anything that looks like one.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import re
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from mixtune.errors import MixtuneError, causes
from mixtune.sections import StorageConfig, TrackingConfig
from mixtune.storage.artifacts import ArtifactRef, ArtifactStore
from mixtune.tracking_runs import RUN_KEY_TAG, close_stale_runs, find_run, identity_tags

# MLflow rejects longer param values; a longer one is cut with a marker.
_MAX_PARAM_CHARS = 6000
_SECRET_KEY = re.compile(r"(.*[_-])?(secret|password|token|api_key|access_key|secret_key)", re.IGNORECASE)


def tracking_uri(tracking: TrackingConfig, storage: StorageConfig) -> str:
    """The configured URI, else a sqlite file beside a local storage root."""
    if tracking.mlflow_tracking_uri:
        return tracking.mlflow_tracking_uri
    if storage.root.startswith("s3://"):
        return f"sqlite:///{Path('.mixtune/mlflow.db').resolve()}"
    return f"sqlite:///{Path(storage.root).resolve().parent / 'mlflow.db'}"


TRACKING_CHECK_TIMEOUT_S = 5.0


def check_tracking_reachable(uri: str, timeout_s: float = TRACKING_CHECK_TIMEOUT_S) -> None:
    """Raise ``MixtuneError`` naming ``tracking.mlflow_tracking_uri`` when an MLflow server does not answer.

    One GET of the server's ``/health`` with a short timeout, at the start of a
    run: a server that is down is reported in seconds, not after MLflow's own
    retries (minutes). File and database URIs are not servers and pass.
    """
    if not uri.startswith(("http://", "https://")):
        return
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout_s):
            return
    except urllib.error.HTTPError:
        return  # it answered: a server behind a proxy may not serve /health, yet it is up
    except (OSError, ValueError) as error:
        reason = getattr(error, "reason", error)
        raise MixtuneError(
            f"tracking.mlflow_tracking_uri: no MLflow server answers at {uri} within {timeout_s:g} s ({reason}); "
            "start it (mlflow server), fix the URI, or leave the setting out to track into a local sqlite file"
        ) from None


def _artifact_location(tracking: TrackingConfig, storage: StorageConfig) -> str | None:
    """Artifacts next to the data for file-based stores; a server decides its own."""
    uri = tracking_uri(tracking, storage)
    if uri.startswith(("http://", "https://", "databricks")):
        return None
    root = storage.root.rstrip("/")
    return f"{root}/_mlflow" if root.startswith("s3://") else Path(root, "_mlflow").resolve().as_uri()


_PARAM_DIGITS = 6  # significant digits of a float param: 0.1 + 0.2 reads 0.3


def _readable(value: Any) -> Any:
    """A float to ``_PARAM_DIGITS`` significant digits, still written as a float (``75.0``, ``0.0002``)."""
    return float(f"{value:.{_PARAM_DIGITS}g}") if isinstance(value, float) else value


def flatten(data: Any, prefix: str = "") -> dict[str, str]:
    """Nested config -> {"a.b.c": "value"}; lists of mappings are indexed ("sources.0.name").

    Floats, alone or in a list, keep at most 6 significant digits
    (``0.30000000000000004`` -> ``0.3``); a value longer than MLflow takes is
    cut with ``...``.
    """
    flat: dict[str, str] = {}
    if isinstance(data, dict):
        for key, value in data.items():
            flat.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    elif isinstance(data, list) and any(isinstance(v, (dict, list)) for v in data):
        for i, value in enumerate(data):
            flat.update(flatten(value, f"{prefix}.{i}"))
    else:
        text = str([_readable(v) for v in data] if isinstance(data, list) else _readable(data))
        flat[prefix] = text if len(text) <= _MAX_PARAM_CHARS else text[: _MAX_PARAM_CHARS - 3] + "..."
    return flat


def config_params(config_dump: dict[str, Any]) -> dict[str, str]:
    """What ``log_config`` logs as params: the flattened, redacted config, without the catalog's internals.

    ``categories`` (the catalog file merged with the config's own entries:
    every source's URI, format, revision, columns, license, ...) becomes one
    param per category naming its sources, ``categories.math`` =
    ``gsm8k-train, aqua-cot``; which catalog (``catalog``), the mix's weights
    and everything else stay as they are.
    """
    dump = dict(config_dump)
    if isinstance(dump.get("categories"), dict):
        dump["categories"] = {category: ", ".join(str(s.get("name")) for s in sources)
                              for category, sources in dump["categories"].items()}
    return redact(flatten(dump))


def redact(params: dict[str, str]) -> dict[str, str]:
    """Drop values whose key names a secret; the config should never hold one."""
    return {k: ("<redacted>" if _SECRET_KEY.fullmatch(k.rsplit(".", 1)[-1]) else v) for k, v in params.items()}


def _experiment_id(mlflow: Any, tracking: TrackingConfig, storage: StorageConfig) -> str:
    experiment = mlflow.get_experiment_by_name(tracking.experiment)
    if experiment is not None:
        return experiment.experiment_id
    return mlflow.create_experiment(tracking.experiment, artifact_location=_artifact_location(tracking, storage))


@contextmanager
def mlflow_run(
    tracking: TrackingConfig,
    storage: StorageConfig,
    run_name: str,
    *,
    parent_run_id: str | None = None,
    run_id: str | None = None,
    tags: dict[str, str] | None = None,
    key: str | None = None,
) -> Iterator[Any]:
    """Start (or resume, with ``run_id``) a run; a child when ``parent_run_id`` is given.

    With ``key`` (``tracking_runs.run_key``) the experiment's run tagged with
    that key is resumed (``tracking_runs.find_run``) and a new run gets the
    tag: an identical re-run writes into the runs it wrote before.

    First every RUNNING run of the experiment left by a dead process of this
    host is set to KILLED (``tracking_runs.close_stale_runs``); the run started
    carries this process's host and pid (``tracking_runs.identity_tags``).
    Raises ``MixtuneError`` when an MLflow server does not answer.
    """
    import mlflow

    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    client_uri = tracking_uri(tracking, storage)
    check_tracking_reachable(client_uri)
    if client_uri.startswith("sqlite:///"):  # sqlite creates the file, never its folder
        Path(client_uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(client_uri)
    if storage.endpoint_url and storage.root.startswith("s3://"):
        os.environ.setdefault("MLFLOW_S3_ENDPOINT_URL", storage.endpoint_url)
    try:
        experiment_id = _experiment_id(mlflow, tracking, storage)
        client = mlflow.MlflowClient(client_uri)
        close_stale_runs(client, experiment_id)
        if key is not None:
            run_id = run_id or find_run(client, experiment_id, key)
            tags = {**(tags or {}), RUN_KEY_TAG: key}
        tags = {**(tags or {}), **identity_tags()}  # on a resumed run too: this process holds it now
        # nested=True lets a child start while its parent is active in this thread;
        # parent_run_id makes the link explicit when the parent lives elsewhere.
        with mlflow.start_run(run_id=run_id, experiment_id=None if run_id else experiment_id,
                              run_name=None if run_id else run_name, tags=tags,
                              parent_run_id=parent_run_id, nested=True) as run:
            yield run
    except Exception as exc:
        if (fault := tracking_store_fault(exc, client_uri)) is not None:
            raise fault from exc
        raise


def tracking_store_fault(exc: BaseException, uri: str) -> MixtuneError | None:
    """A sqlite tracking database on a full disk as one user-facing error naming its file; else None.

    sqlite says "database or disk is full" and names no file (MLflow and
    SQLAlchemy wrap it twice). An error already meant for the user anywhere
    in the chain (a stage's ``StorageError`` that the failing end-of-run
    was handling) is left to the console, which shows that one.
    """
    chain = list(causes(exc))
    if any(isinstance(cause, MixtuneError) for cause in chain) or not uri.startswith("sqlite:///"):
        return None
    if not any("database or disk is full" in str(cause) for cause in chain):
        return None
    database = uri.removeprefix("sqlite:///")
    return MixtuneError(f"tracking.mlflow_tracking_uri: the MLflow database {database}: no space left on device "
                        "(sqlite: database or disk is full); free space on that disk or point "
                        "tracking.mlflow_tracking_uri at another one")


# MLflow's rule for param and metric keys (mlflow.utils.validation): these characters only (no ':'
# so keys also work on Windows), at most 250 of them, and unchanged by posixpath.normpath.
_PARAM_KEY_CHARS = re.compile(r"[^\w.\- /]")
_MAX_PARAM_KEY_CHARS = 250


def _valid_param_key(key: str) -> bool:
    return (not _PARAM_KEY_CHARS.search(key) and len(key) <= _MAX_PARAM_KEY_CHARS
            and posixpath.normpath(key) == key and not key.startswith(("/", "..")) and key != ".")


def param_keys(keys: list[str]) -> dict[str, str]:
    """Config key -> an MLflow param key for it: the key itself when MLflow takes it.

    A name the config accepts but MLflow does not (``mix.weights.code (python)``:
    parentheses; a 300-character key) gets its other characters replaced by
    ``_`` and, when that is not enough to make it valid and unique, a short hash
    of the original key appended; ``log_config`` logs this mapping beside the params.
    """
    mapped: dict[str, str] = {}
    taken = {k for k in keys if _valid_param_key(k)}
    for key in keys:
        if key in taken:
            mapped[key] = key
            continue
        # '/' too: a mapped key is never read as a path.
        safe = re.sub(r"[^\w.\- ]", "_", key)
        if safe in taken or not _valid_param_key(safe):
            digest = hashlib.sha256(key.encode()).hexdigest()[:8]
            safe = f"{safe[:_MAX_PARAM_KEY_CHARS - 9]}-{digest}"
        taken.add(safe)
        mapped[key] = safe
    return mapped


def log_config(mlflow: Any, config_dump: dict[str, Any]) -> None:
    """The resolved config as params (``config_params``) and, whole and unchanged, as one JSON artifact.

    Whatever ``config check`` accepts is logged: keys MLflow cannot take are
    renamed (``param_keys``) and the renaming is kept in ``config/param_keys.json``.
    """
    params = config_params(config_dump)
    keys = param_keys(sorted(params))
    renamed = {keys[k]: k for k in sorted(params) if keys[k] != k}
    items = sorted((keys[k], v) for k, v in params.items())
    for start in range(0, len(items), 100):  # MLflow caps a batch at 100 params
        mlflow.log_params(dict(items[start:start + 100]))
    mlflow.log_dict(config_dump, "config/resolved_config.json")
    if renamed:
        mlflow.log_dict(renamed, "config/param_keys.json")  # MLflow key -> config key


def log_realized_mix(mlflow, manifest: ArtifactRef, storage: StorageConfig) -> None:
    """The realized mix on the active MLflow run: a param per source and category, and the table.

    A resumed run has both already (its key covers the data and the mix, so
    they are the same): MLflow takes an equal param again, but ``log_table``
    would append the table to itself, so an existing table is kept.
    """
    summary = ArtifactStore(storage).read_table(manifest, "summary")
    params = {}
    for row in summary.to_dicts():
        label = {"source": f"source.{row['source']}", "category": f"category.{row['category']}"}.get(row["level"], "total")
        for field in ("realized_samples", "realized_tokens", "realized_share"):
            params[f"realized_mix.{label}.{field.removeprefix('realized_')}"] = _readable(row[field])
    mlflow.log_params(params)
    run_id = mlflow.active_run().info.run_id
    if "mix/realized_mix.json" not in {f.path for f in mlflow.MlflowClient().list_artifacts(run_id, "mix")}:
        mlflow.log_table(summary.to_pandas(), artifact_file="mix/realized_mix.json")


# MLflow's UI keeps a shared runs-table view (columns, filter) as an experiment tag with this prefix
# and opens it from the URL parameter ``viewStateShareKey`` (read from MLflow 3's bundled UI code).
SHARED_VIEW_TAG_PREFIX = "mlflow.sharedViewState."


def comparison_view_key(parent_run_id: str) -> str:
    """The shared-view key of a sweep's side-by-side table of its mixes: one per parent run."""
    return f"mixtune-{parent_run_id}"


def comparison_view_state(parent_run_id: str, metrics: list[str], tags: list[str], params: list[str],
                          order_by_metric: str | None = None) -> dict[str, Any]:
    """The runs-table view of one sweep's mixes: the parent's child runs with these columns, sorted by
    ``order_by_metric`` (highest first; else by name).

    Column ids are MLflow's canonical keys (``metrics.`name```); the state is
    plain JSON, which the UI reads as well as its own compressed form. It must
    not sort by start time: the UI then nests child runs under their parent,
    collapsed, and a shared view cannot expand them (``runsExpanded`` is not
    shared), so the mixes would hide behind one parent row.
    """
    columns = ([f"tags.`{t}`" for t in tags] + [f"metrics.`{m}`" for m in metrics]
               + [f"params.`{p}`" for p in params])
    order = ({"orderByKey": f"metrics.`{order_by_metric}`", "orderByAsc": False} if order_by_metric
             else {"orderByKey": "attributes.run_name", "orderByAsc": True})
    return {"searchFilter": f"tags.`mlflow.parentRunId` = '{parent_run_id}'", "selectedColumns": columns, **order}


def comparison_view_url(tracking_uri_: str, experiment_id: str, parent_run_id: str) -> str | None:
    """The runs table of a sweep's mixes, side by side, on a tracking server; None for a file store."""
    if not tracking_uri_.startswith(("http://", "https://")):
        return None
    return (f"{tracking_uri_.rstrip('/')}/#/experiments/{experiment_id}/runs"
            f"?viewStateShareKey={comparison_view_key(parent_run_id)}")


def run_url(tracking_uri_: str, experiment_id: str, run_id: str) -> str | None:
    """The MLflow UI page of a run when the tracking URI is a server (http/https); None for a file store."""
    if not tracking_uri_.startswith(("http://", "https://")):
        return None
    return f"{tracking_uri_.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"


class BufferedMetrics:
    """Training metrics for one MLflow run, sent from a background thread: the tracker never stops training.

    ``log(step, {key: value})`` only queues; a daemon thread sends each batch
    with ``MlflowClient.log_batch``. When the server is gone the thread keeps
    the batch and retries (1 s, doubling to 30 s) while training goes on.
    ``close(timeout_s)`` waits for the queue to drain; whatever was not sent
    by then is written to ``unsent_path`` as JSON lines ``{"step", "key",
    "value", "timestamp_ms"}`` and returned with the error, so the caller
    reports it once instead of losing the run.
    """

    MAX_BATCH = 1000  # MLflow's cap on metrics per request

    def __init__(self, tracking_uri_: str, run_id: str, unsent_path: str | Path) -> None:
        import queue
        import threading

        from mlflow.tracking import MlflowClient

        self.tracking_uri, self.run_id, self.unsent_path = tracking_uri_, run_id, Path(unsent_path)
        self._client = MlflowClient(tracking_uri_)
        self._queue: queue.Queue = queue.Queue()
        self._lock = threading.Lock()
        self._in_flight: list[Any] = []
        self._closing = threading.Event()
        self.error: BaseException | None = None
        self.sent_batches = 0
        self._thread = threading.Thread(target=self._send_all, name="mixtune-mlflow-metrics", daemon=True)
        self._thread.start()

    def log(self, step: int, metrics: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(key, float(value), now, step) for key, value in metrics.items()]
        for start in range(0, len(batch), self.MAX_BATCH):
            self._queue.put(batch[start:start + self.MAX_BATCH])

    __call__ = log

    def _send_all(self) -> None:
        wait_s = 1.0
        while True:
            batch = self._queue.get()
            if batch is None:
                return
            with self._lock:
                self._in_flight = batch
            while True:
                try:
                    self._client.log_batch(self.run_id, metrics=batch)
                    self.sent_batches += 1
                    wait_s = 1.0
                    break
                except Exception as error:  # an outage: keep the batch, keep training, retry later
                    self.error = error
                    if self._closing.wait(wait_s):
                        return  # close() reports what is left
                    wait_s = min(wait_s * 2, 30.0)
            with self._lock:
                self._in_flight = []

    def close(self, timeout_s: float = 30.0) -> tuple[int, BaseException | None]:
        """Send what is queued within ``timeout_s``; (metric values left unsent, last error)."""
        self._queue.put(None)
        self._thread.join(timeout_s)
        self._closing.set()
        self._thread.join(1.0)
        with self._lock:
            unsent = list(self._in_flight)
        while not self._queue.empty():
            batch = self._queue.get_nowait()
            unsent += batch or []
        if unsent:
            self.unsent_path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.unsent_path, "w", encoding="utf-8") as f:
                for m in unsent:
                    f.write(json.dumps({"step": m.step, "key": m.key, "value": m.value,
                                        "timestamp_ms": m.timestamp}) + "\n")
        return len(unsent), (self.error if unsent else None)
