"""No child process outlives mixtune, SIGKILL included.

A killed ``mixtune run`` used to leave Prefect's temporary API server (a
uvicorn subprocess, ~200 MB) running: nothing tells a child that its parent
died. Two ways to tell it, for two kinds of child:

- ``die_with_parent``: for a subprocess mixtune starts itself, a ``preexec_fn``
  asking Linux to send it SIGTERM when the thread that started it exits
  (``prctl(PR_SET_PDEATHSIG)``). That thread must outlive the child: use it
  where the starting thread waits for the child (``subprocess.run``).
- ``Watchdog``: for a child started by a library (Prefect starts its server
  with ``subprocess.Popen`` and no hook), a small process that holds the read
  end of a pipe whose write end only mixtune holds. When mixtune exits, however
  it exits, the kernel closes that end; the watchdog reads end-of-file and
  terminates every process it was told to guard (SIGTERM, SIGKILL after
  ``grace_s``). It holds each one by a pidfd, so a recycled pid is never hit.
"""

from __future__ import annotations

import ctypes
import os
import select
import signal
import subprocess
import sys
import time
from typing import Callable

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def die_with_parent(sig: int = signal.SIGTERM) -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the child get ``sig`` when its parent dies; None off Linux."""
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up here: the forked child only calls it

    def preexec() -> None:
        prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)

    return preexec


class Watchdog:
    """Terminates the processes it guards when this process ends, SIGKILL of this process included."""

    def __init__(self, grace_s: float = 5.0) -> None:
        self.guarded: set[int] = set()
        # Its own session: a Ctrl-C in the terminal reaches mixtune and the children, not the watchdog,
        # which stays to clean up whatever the interrupted run leaves behind.
        self.process = subprocess.Popen([sys.executable, "-m", __name__, str(grace_s)], stdin=subprocess.PIPE,
                                        stdout=subprocess.DEVNULL, start_new_session=True)

    def guard(self, pid: int) -> None:
        """Add a running child to the set terminated when this process ends."""
        if pid in self.guarded:
            return
        assert self.process.stdin is not None
        self.process.stdin.write(f"{pid}\n".encode())
        self.process.stdin.flush()
        self.guarded.add(pid)


def _watch(grace_s: float) -> None:
    """The watchdog's loop: pids on stdin, one a line; at end-of-file, terminate them."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    handles: list[int] = []  # pidfds (or plain pids where pidfds are missing)
    stdin = sys.stdin.buffer
    for line in iter(stdin.readline, b""):  # blocks until the parent writes or exits
        pid = int(line)
        try:
            handles.append(os.pidfd_open(pid) if hasattr(os, "pidfd_open") else pid)
        except ProcessLookupError:
            pass  # gone already
    _terminate(handles, grace_s)


def _send(handle: int, sig: int) -> bool:
    """Signal one guarded process; False when it has exited."""
    try:
        if hasattr(os, "pidfd_open"):
            signal.pidfd_send_signal(handle, sig)
        else:
            os.kill(handle, sig)
        return True
    except ProcessLookupError:
        return False


def _terminate(handles: list[int], grace_s: float) -> None:
    alive = [h for h in handles if _send(h, signal.SIGTERM)]
    deadline = time.monotonic() + grace_s
    while alive and time.monotonic() < deadline:
        if hasattr(os, "pidfd_open"):  # a pidfd turns readable when its process exits
            select.select(alive, [], [], max(deadline - time.monotonic(), 0))
            alive = [h for h in alive if not select.select([h], [], [], 0)[0]]
        else:
            time.sleep(0.1)
            alive = [h for h in alive if _send(h, 0)]
    for handle in alive:
        _send(handle, signal.SIGKILL)


if __name__ == "__main__":  # the watchdog process; it imports nothing else of mixtune
    _watch(float(sys.argv[1]))
