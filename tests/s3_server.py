"""A real S3-compatible server (moto's standalone server) on 127.0.0.1 for tests.

Use the ``s3_endpoint`` fixture (import it into a test module) or, for wider
scopes, ``running_s3_server()`` plus ``S3_TEST_ENV`` set by the caller. The
credentials are moto's dummy ones; nothing leaves the machine.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import Iterator

import pytest

S3_TEST_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@contextmanager
def running_s3_server() -> Iterator[str]:
    """Start moto on a free loopback port; yields its endpoint URL, stops it on exit."""
    from moto.server import ThreadedMotoServer

    # werkzeug logs every request; Prefect would capture each one twice.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@contextmanager
def running_moto_process(workdir) -> Iterator[str]:
    """moto's standalone server as its own process (``python -m moto.server``).

    Other processes (a Prefect worker, an MLflow server) see the same buckets,
    which an in-process thread cannot offer. Stopped with its process group.
    """
    import os
    import signal
    import subprocess
    import sys
    import time
    import urllib.request

    from mlflow_server import free_port

    port = free_port()
    log = open(os.path.join(workdir, "moto.log"), "wb")
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"{url}/moto-api/", timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"moto server did not start; see {workdir}/moto.log") from None
                time.sleep(0.1)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)
        log.close()


def create_bucket(endpoint_url: str, bucket: str) -> None:
    import boto3

    boto3.client("s3", endpoint_url=endpoint_url, region_name="us-east-1").create_bucket(Bucket=bucket)


@pytest.fixture
def s3_endpoint(monkeypatch) -> Iterator[str]:
    """A fresh, empty S3 server per test, with dummy credentials in the environment."""
    for name, value in S3_TEST_ENV.items():
        monkeypatch.setenv(name, value)
    # A profile or endpoint from the developer's shell must not redirect the test.
    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    with running_s3_server() as endpoint_url:
        yield endpoint_url
