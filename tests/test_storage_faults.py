"""Storage faults come out as one error naming the storage root and its config field: real outages, real full disks."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import tiny_prepare_config
from s3_server import S3_TEST_ENV, create_bucket, running_moto_process

REPO = Path(__file__).resolve().parents[1]


def _config(tmp_path: Path, storage: dict) -> Path:
    return tiny_prepare_config(tmp_path, "faults", storage)


def _env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    env.update(S3_TEST_ENV, PREFECT_HOME=str(tmp_path / "prefect"), MIXTUNE_LOG_DIR=str(tmp_path / "logs"),
               PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="120")
    return env


def _wait_for(log: Path, text: str, run: subprocess.Popen, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while text not in log.read_text(errors="replace"):
        assert run.poll() is None, log.read_text(errors="replace")
        assert time.monotonic() < deadline, log.read_text(errors="replace")
        time.sleep(0.2)


def _assert_one_error(output: str, *expected: str) -> str:
    """The output ends with the one error line, which says each expected part; no traceback above it."""
    lines = output.strip().splitlines()
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], output[-4000:]
    assert "Traceback" not in output, output[-6000:]
    for part in expected:
        assert part in errors[0], errors[0]
    return errors[0]


def test_storage_faults_an_s3_outage_mid_run_is_one_error_naming_root_and_endpoint(tmp_path):
    with contextlib.ExitStack() as moto:
        endpoint = moto.enter_context(running_moto_process(tmp_path))
        os.environ.update(S3_TEST_ENV)
        create_bucket(endpoint, "faults")
        config = _config(tmp_path, {"root": "s3://faults/store", "endpoint_url": endpoint})
        log = tmp_path / "mixtune.log"
        with open(log, "wb") as out:
            run = subprocess.Popen([sys.executable, "-m", "mixtune.cli", "prepare", str(config)], cwd=tmp_path,
                                   env=_env(tmp_path), stdout=out, stderr=subprocess.STDOUT)
        try:
            _wait_for(log, "Beginning flow run", run)
            moto.close()  # the outage: the S3 server process is stopped while the flow runs
            assert run.wait(timeout=420) == 2
        finally:
            run.kill()
    _assert_one_error(log.read_text(errors="replace"), "s3://faults/store", "storage.root",
                      endpoint, "storage.endpoint_url")


def _can_mount_in_a_namespace(tmp_path: Path) -> bool:
    """Whether this user may mount a tmpfs in a private user and mount namespace (no root needed)."""
    if shutil.which("unshare") is None:
        return False
    probe = tmp_path / "probe"
    probe.mkdir()
    return subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c",
                           f"mount -t tmpfs -o size=64k tmpfs {probe}"], capture_output=True).returncode == 0


@pytest.mark.parametrize("mount_options, reason", [
    # 600 KiB: the tiny model (~530 KiB) fits, then a stage's tables fill the disk.
    ("size=600k", "no space left on device"),
    ("size=600k,ro", "read-only file system"),  # fails creating the root itself
])
def test_storage_faults_a_full_or_read_only_disk_is_one_error_naming_root_and_path(tmp_path, mount_options, reason):
    """The storage root on a real small tmpfs, mounted in a private namespace just for the run."""
    if not _can_mount_in_a_namespace(tmp_path):
        pytest.skip("unshare cannot mount a tmpfs here (user namespaces disabled)")
    disk = tmp_path / "disk"
    disk.mkdir()
    config = _config(tmp_path, {"root": str(disk / "store")})
    run = subprocess.run(
        ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c",
         f'mount -t tmpfs -o {mount_options} tmpfs "{disk}" && exec "{sys.executable}" -m mixtune.cli prepare "{config}"'],
        cwd=tmp_path, env=_env(tmp_path), capture_output=True, text=True, timeout=420)
    assert run.returncode == 2, run.stdout[-3000:] + run.stderr[-3000:]
    _assert_one_error(run.stdout + run.stderr, f"storage {disk / 'store'} (storage.root): {reason}")


def test_storage_faults_a_full_disk_under_mlflow_too_ends_on_one_error_naming_what_filled_up(tmp_path):
    """`mixtune run`: the default MLflow sqlite file sits beside the root, on the same full disk.

    Whichever fills the disk first, a stage's write (ENOSPC) or the MLflow database (sqlite's
    "database or disk is full", which names no file), the run ends on one error line that
    says no space is left and names the path that filled up.
    """
    if not _can_mount_in_a_namespace(tmp_path):
        pytest.skip("unshare cannot mount a tmpfs here (user namespaces disabled)")
    disk = tmp_path / "disk"
    disk.mkdir()
    config = _config(tmp_path, {"root": str(disk / "store")})
    raw = yaml.safe_load(config.read_text())
    raw["data"]["sources"][0]["max_rows"] = 120
    raw |= {"validate": {"max_length": 256, "on_too_long": "truncate"}, "split": {"group_column": "focus"},
            "catalog": str(REPO / "configs" / "catalog-offline.yaml"), "mix": {"domain_percent": 75, "weights": {"math": 1}},
            "train": {"global_batch_size": 4, "per_device_batch_size": 4, "max_steps": 2, "max_length": 256},
            "eval": {"general_tasks": [{"name": "arc_challenge", "limit": 2}],
                     "domain": {"max_rows": 2, "max_new_tokens": 4}}}
    config.write_text(yaml.safe_dump(raw))
    # 2500 KiB: the model (~530 KiB) and the MLflow database fit; the prepared data (120 domain rows
    # and the math catalog sources) does not, so the run stops in prepare, in about 20 s.
    run = subprocess.run(
        ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c",
         f'mount -t tmpfs -o size=2500k tmpfs "{disk}" && exec "{sys.executable}" -m mixtune.cli run "{config}"'],
        cwd=tmp_path, env=_env(tmp_path), capture_output=True, text=True, timeout=300)
    output = run.stdout + run.stderr
    assert run.returncode == 2, output[-3000:]
    last = output.strip().splitlines()[-1]
    assert last.startswith((f"error: storage {disk / 'store'} (storage.root): no space left on device, at ",
                            f"error: tracking.mlflow_tracking_uri: the MLflow database {disk / 'mlflow.db'}: "
                            "no space left on device")), last
    assert [line for line in output.splitlines() if line.startswith("error: ")] == [last]
    # Prefect's records of the MLflow error raised while handling it stay in the log file.
    assert "Encountered exception during execution: MlflowException" not in output
