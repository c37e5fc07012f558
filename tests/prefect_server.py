"""A real ``prefect server`` and ``prefect worker`` on 127.0.0.1 for tests, and reading runs back.

Each process is started in its own session and stopped with its whole process
group (a process worker's flow runs are its children, in its group), so a
failing test leaves nothing running.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator
from uuid import UUID

from mlflow_server import free_port

PREFECT = [sys.executable, "-m", "prefect"]


def stop_process_group(proc: subprocess.Popen, timeout_s: float = 20) -> None:
    """SIGTERM the group, SIGKILL what is left after ``timeout_s``; returns when the group is gone."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        proc.poll()
        try:
            os.killpg(proc.pid, 0)  # anyone left in the group (children outlive their leader)?
        except ProcessLookupError:
            return
        time.sleep(0.2)
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=10)


@contextmanager
def started_process(args: list[str], env: dict[str, str], log_path: Path, cwd: Path | None = None
                    ) -> Iterator[subprocess.Popen]:
    """``args`` in a new session, output to ``log_path``; the group is stopped on exit."""
    with open(log_path, "wb") as log:  # the child keeps its own copy of the descriptor
        proc = subprocess.Popen(args, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        yield proc
    finally:
        stop_process_group(proc)


class PrefectServer:
    """A started ``prefect server start``; ``wait_ready`` blocks until ``/api/health`` answers."""

    def __init__(self, proc: subprocess.Popen, api_url: str, log_path: Path) -> None:
        self.proc, self.api_url, self.log_path = proc, api_url, log_path

    def wait_ready(self, timeout_s: float = 120) -> str:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                with urllib.request.urlopen(f"{self.api_url}/health", timeout=2) as response:
                    if response.status == 200:
                        return self.api_url
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"prefect server did not start; see {self.log_path}")
            time.sleep(0.2)


def server_env(workdir: Path) -> dict[str, str]:
    """A server of its own: home and sqlite database in ``workdir``, no analytics, no UI build."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    return env | {
        "PREFECT_HOME": str(workdir / "server-home"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_UI_ENABLED": "false",  # copying the UI bundle costs startup time and tests nothing here
        "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{workdir / 'prefect.db'}",
    }


@contextmanager
def starting_prefect_server(workdir: Path) -> Iterator[PrefectServer]:
    """Start the server and hand it back at once: other servers can boot while it migrates."""
    port = free_port()
    log_path = workdir / "prefect-server.log"
    args = [*PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    with started_process(args, server_env(workdir), log_path) as proc:
        yield PrefectServer(proc, f"http://127.0.0.1:{port}/api", log_path)


def run_prefect_commands(commands: list[list[str]], env: dict[str, str], cwd: Path, workdir: Path,
                         timeout_s: float = 180) -> list[str]:
    """Run ``prefect --no-prompt <command>`` for each command at once; their outputs, or an error quoting one."""
    procs = []
    for i, command in enumerate(commands):
        log_path = workdir / f"prefect-cli-{i}.log"
        with open(log_path, "wb") as log:  # the child keeps its own copy of the descriptor
            procs.append((subprocess.Popen([*PREFECT, "--no-prompt", *command], env=env, cwd=cwd, stdout=log,
                                           stderr=subprocess.STDOUT, start_new_session=True), log_path))
    deadline = time.monotonic() + timeout_s
    outputs = []
    for proc, log_path in procs:
        try:
            proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            stop_process_group(proc)
        output = log_path.read_text(errors="replace")
        if proc.returncode != 0:
            for other, _ in procs:
                stop_process_group(other)
            raise RuntimeError(f"`{' '.join(map(str, proc.args))}` exited {proc.returncode}:\n{output[-4000:]}")
        outputs.append(output)
    return outputs


# --- reading runs back, as the UI does (``client`` is ``get_client(sync_client=True)``) ---


def wait_for_flow_run(client, flow_run_id: UUID, timeout_s: float, worker: subprocess.Popen | None = None):
    """The flow run once its state is final; fails early when the worker died."""
    deadline = time.monotonic() + timeout_s
    while True:
        flow_run = client.read_flow_run(flow_run_id)
        if flow_run.state is not None and flow_run.state.is_final():
            return flow_run
        state = flow_run.state.name if flow_run.state else "pending"
        if worker is not None and worker.poll() is not None:
            raise RuntimeError(f"the worker exited ({worker.returncode}) while flow run {flow_run_id} was {state}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"flow run {flow_run_id} still {state} after {timeout_s:.0f} s")
        time.sleep(1.0)


def flow_run_tree(client, root_id: UUID) -> list:
    """The flow run and every subflow run below it, at any depth."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, FlowRunFilterParentFlowRunId

    tree = client.read_flow_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[root_id])))
    level = [root_id]
    while level:
        children = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=level)))
        tree += children
        level = [run.id for run in children]
    return tree


def stage_of(task_run_name: str) -> str:
    """``download med`` (a named run) or ``base-model-0ed`` (Prefect's default name) -> the task's name."""
    return task_run_name.split(" ", 1)[0] if " " in task_run_name else task_run_name.rsplit("-", 1)[0]


def stage_states(client, root_id: UUID, timeout_s: float = 30) -> dict[str, list[str]]:
    """Final task run states by task name over the whole flow run tree; subflows' wrapper runs left out.

    States are recorded from events, asynchronously: read until every task run
    is final and two reads a second apart agree.
    """
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    deadline = time.monotonic() + timeout_s
    previous = None
    while True:
        tree = flow_run_tree(client, root_id)
        wrappers = {run.parent_task_run_id for run in tree if run.parent_task_run_id is not None}
        task_runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[r.id for r in tree])))
        runs = [run for run in task_runs if run.id not in wrappers]
        states: dict[str, list[str]] = {}
        for run in sorted(runs, key=lambda r: r.name):
            states.setdefault(stage_of(run.name), []).append(run.state.name if run.state else "<none>")
        settled = bool(runs) and all(r.state is not None and r.state.is_final() for r in runs)
        if (settled and states == previous) or time.monotonic() > deadline:
            return states
        previous = states if settled else None
        time.sleep(1.0)
