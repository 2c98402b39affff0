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
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import IO

import httpx

REPO = Path(__file__).resolve().parents[1]
GRACE_S = 4.0
# In the home: the process groups started on it, so a run that was killed outright (SIGKILL, no
# clean-up) cannot leave services behind for longer than the next reset.
PIDS_FILE = "services.pids"


class ServiceError(RuntimeError):
    """A service did not start or died; the message says which and where its log is."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def stop_group(pgid: int, reap: subprocess.Popen | None = None, grace_s: float = GRACE_S) -> None:
    """SIGTERM the process group ``pgid``, SIGKILL whatever is left after ``grace_s``.

    ``reap``: the group leader, when it is our child, so its exit status is collected.
    """
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline:
            if reap is not None:
                reap.poll()
            if not _group_alive(pgid):
                return
            time.sleep(0.1)


def _group_alive(pgid: int) -> bool:
    """Whether any process of the group still runs (a zombie waiting to be reaped does not)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            state, _ppid, group = stat.read_text().rsplit(")", 1)[1].split()[:3]
        except (OSError, IndexError):
            continue
        if int(group) == pgid and state != "Z":
            return True
    return False


def stop_on_signals() -> None:
    """Turn SIGTERM and SIGHUP (a closed terminal) into KeyboardInterrupt, as Ctrl-C already is, so
    the services' groups are stopped on the way out: they run in sessions of their own, which no
    terminal signal reaches."""

    def interrupt(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, interrupt)


@contextmanager
def held_signals_on_interrupt() -> Iterator[None]:
    """Enter it inside the services' ExitStack: after a Ctrl-C it holds further signals while the
    services are stopped, so a second Ctrl-C cannot cut that short and leave a group running."""
    try:
        yield
    except KeyboardInterrupt:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        raise


def stop_leftovers(home: Path) -> None:
    """Stop the groups an earlier run on ``home`` recorded and left running (it was SIGKILLed).

    A recorded pid is only signalled while its process still runs on this home's Dagster
    instance (its environment says so): pids are reused, and a stranger's group is never touched.
    """
    pids = home / PIDS_FILE
    if not pids.is_file():
        return
    marker = f"DAGSTER_HOME={home / 'dagster_home'}".encode()
    for line in pids.read_text().split():
        try:
            environ = Path(f"/proc/{int(line)}/environ").read_bytes().split(b"\0")
        except (OSError, ValueError):
            continue
        if marker in environ:
            stop_group(int(line))
    pids.unlink()


def start(stack: ExitStack, name: str, args: list[str], env: dict[str, str], log: Path | IO[str] | None = None) -> subprocess.Popen:
    """Start ``args`` in its own process group, recorded in the home; the stack stops the group on exit.

    ``env`` must carry ``DAGSTER_HOME`` (inside the home). ``log`` is a directory (output goes to
    ``<log>/<name>.log``), an open file, or None to share this process's terminal.
    """
    output: IO[str] | None
    if isinstance(log, Path):
        output = open(log / f"{name}.log", "w")  # noqa: SIM115 - closed by the stack
        stack.callback(output.close)
    else:
        output = log
    process = subprocess.Popen(args, cwd=REPO, env=env, stdout=output, stderr=subprocess.STDOUT if output else None, start_new_session=True)
    stack.callback(stop_group, process.pid, process)
    with open(Path(env["DAGSTER_HOME"]).parent / PIDS_FILE, "a", encoding="utf-8") as pids:
        pids.write(f"{process.pid}\n")
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
