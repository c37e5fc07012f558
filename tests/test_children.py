"""No child process outlives mixtune: real parents killed with SIGKILL, their children looked up with psutil."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil

from conftest import tiny_prepare_config

REPO = Path(__file__).resolve().parents[1]


def _gone_within(processes: list[psutil.Process], timeout_s: float) -> list[psutil.Process]:
    """The processes still running after ``timeout_s`` (zombies count as gone)."""
    _, alive = psutil.wait_procs(processes, timeout=timeout_s)
    return [p for p in alive if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


def test_children_die_with_parent_ends_a_child_when_its_parent_is_killed():
    parent = subprocess.Popen([sys.executable, "-c", textwrap.dedent("""
        import subprocess, time
        from mixtune.children import die_with_parent
        child = subprocess.Popen(["sleep", "600"], preexec_fn=die_with_parent())
        print(child.pid, flush=True)
        child.wait()
    """)], cwd=REPO, stdout=subprocess.PIPE, text=True)
    child = psutil.Process(int(parent.stdout.readline()))
    try:
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(timeout=10)
        assert _gone_within([child], 5) == []
    finally:
        if child.is_running():
            child.kill()


def test_children_watchdog_ends_prefect_api_server_of_a_killed_mixtune_run(tmp_path):
    """`mixtune prepare` brings up Prefect's temporary API server; SIGKILL it: nothing of it stays."""
    config = tiny_prepare_config(tmp_path, "orphans", {"root": str(tmp_path / "store")})
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    env.update(PREFECT_HOME=str(tmp_path / "prefect"), PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="120")
    log = tmp_path / "mixtune.log"
    with open(log, "wb") as out:
        run = subprocess.Popen([sys.executable, "-m", "mixtune.cli", "prepare", str(config)], cwd=tmp_path,
                               env=env, stdout=out, stderr=subprocess.STDOUT)
    mixtune = psutil.Process(run.pid)
    children: list[psutil.Process] = []
    try:
        deadline = time.monotonic() + 180
        # Killed once the flow runs: the server is up and answering, and the run is mid-work.
        while "Beginning flow run" not in log.read_text(errors="replace"):
            assert run.poll() is None, log.read_text(errors="replace")
            assert time.monotonic() < deadline, log.read_text(errors="replace")
            time.sleep(0.2)
        children = mixtune.children(recursive=True)
        assert any("uvicorn" in " ".join(c.cmdline()) for c in children), [c.cmdline() for c in children]
        os.kill(run.pid, signal.SIGKILL)
        run.wait(timeout=10)
        left = _gone_within(children, 15)
        assert left == [], [(p.pid, p.cmdline()) for p in left]
    finally:
        run.kill()
        for child in children:
            if child.is_running():
                child.kill()
