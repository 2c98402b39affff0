"""Long-running helper processes of the demo and the operator console, started and stopped cleanly.

Each service runs in its own session (process group), so a Ctrl-C in the terminal reaches only the
script that started it, and that script stops every service as a whole group: Dagster's webserver
and daemon each start code-server children that outlive their parent if only the parent is told,
and `dagster dev` left them running for a minute after Ctrl-C. A group gets SIGTERM, then SIGKILL
after a short grace period, so stopping never hangs.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from contextlib import ExitStack
from pathlib import Path
from typing import IO

import httpx

REPO = Path(__file__).resolve().parents[1]
GRACE_S = 4.0


class ServiceError(RuntimeError):
    """A service did not start or died; the message says which and where its log is."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def stop_group(process: subprocess.Popen, grace_s: float = GRACE_S) -> None:
    """SIGTERM the process's whole group, SIGKILL whatever is left after ``grace_s``."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline:
            process.poll()
            if not _group_alive(process.pid):
                return
            time.sleep(0.1)
    process.wait(5)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def start(stack: ExitStack, name: str, args: list[str], env: dict[str, str], log: Path | IO[str] | None = None) -> subprocess.Popen:
    """Start ``args`` in its own process group; the stack stops the group on exit.

    ``log`` is a directory (output goes to ``<log>/<name>.log``), an open file, or None to share
    this process's terminal.
    """
    output: IO[str] | None
    if isinstance(log, Path):
        output = open(log / f"{name}.log", "w")  # noqa: SIM115 - closed by the stack
        stack.callback(output.close)
    else:
        output = log
    process = subprocess.Popen(args, cwd=REPO, env=env, stdout=output, stderr=subprocess.STDOUT if output else None, start_new_session=True)
    stack.callback(stop_group, process)
    return process


def wait_http(url: str, what: str, process: subprocess.Popen, timeout: float = 120) -> None:
    """Wait until ``url`` answers below 500; fail early if the process exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ServiceError(f"{what} exited with code {process.returncode} before it was ready (see its log)")
        try:
            if httpx.get(url, timeout=1).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise ServiceError(f"{what} did not answer at {url} within {timeout:.0f} s")
