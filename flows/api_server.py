"""Prefect's temporary API server, started by the CLI before its first flow and ended with the process."""

from __future__ import annotations

_watchdog = None  # one per process: the server is one per process too


def start_prefect_api() -> None:
    """Start Prefect's temporary (ephemeral) API server now, guarded so it dies with this process.

    Without ``PREFECT_API_URL``, Prefect's first client call starts a uvicorn
    subprocess and stops it from an ``atexit`` hook, which a SIGKILL never runs:
    the server outlived a killed run. Started here instead, before the first
    flow, the same singleton server (``SubprocessASGIServer``) is handed to a
    ``mixtune.children.Watchdog`` the moment it is spawned (and after each
    restart on a taken port), which terminates it when this process ends, however
    it ends. With an API URL set (a real server) there is nothing to start.
    """
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_EPHEMERAL_ENABLED

    from mixtune.children import Watchdog

    global _watchdog
    if PREFECT_API_URL.value() or not PREFECT_SERVER_EPHEMERAL_ENABLED.value() or _watchdog:
        return
    _watchdog = watchdog = Watchdog()  # kept: its pipe closing is what ends the server
    server = SubprocessASGIServer()
    if not server.running:
        spawn = server._run_uvicorn_command  # Prefect has no hook; wrap its spawn, on this instance only

        def spawn_guarded():
            process = spawn()
            watchdog.guard(process.pid)
            return process

        server._run_uvicorn_command = spawn_guarded
        server.start()
    if server.server_process is not None:  # also covers a server started before, or a renamed spawn
        watchdog.guard(server.server_process.pid)
