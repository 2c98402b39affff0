"""Long-running helper processes of the demo and the operator console, started and stopped cleanly.

Each service runs in its own session (process group), so a Ctrl-C in the terminal reaches only the
script that started it, and that script stops every service as a whole group: Dagster's webserver
and daemon each start code-server children that outlive their parent if only the parent is told,
and `dagster dev` left them running for a minute after Ctrl-C. All groups get SIGTERM together,
then SIGKILL after a short grace period, so stopping never hangs.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, NamedTuple

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


def stop_groups(pgids: Iterable[int], reap: Iterable[subprocess.Popen] = (), grace_s: float = GRACE_S) -> None:
    """SIGTERM every process group in ``pgids`` at once, SIGKILL whatever is left after ``grace_s``.

    ``reap``: the group leaders that are our children, so their exit status is collected.
    """
    pgids, reap = list(pgids), list(reap)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pgid in pgids:
            try:
                os.killpg(pgid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline:
            for process in reap:
                process.poll()
            pgids = [pgid for pgid in pgids if _group_alive(pgid)]
            if not pgids:
                return
            time.sleep(0.1)


class ProcessInfo(NamedTuple):
    pid: int
    state: str  # "Z": a zombie, gone but for its exit status
    ppid: int
    pgid: int


def running_processes() -> Iterator[ProcessInfo]:
    """Every process now, read from /proc (Linux): what it is and whose it is."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            state, ppid, pgid = stat.read_text().rsplit(")", 1)[1].split()[:3]
        except (OSError, IndexError, ValueError):
            continue
        yield ProcessInfo(int(stat.parent.name), state, int(ppid), int(pgid))


def _group_alive(pgid: int) -> bool:
    """Whether any process of the group still runs (a zombie waiting to be reaped does not)."""
    return any(process.pgid == pgid and process.state != "Z" for process in running_processes())


def stop_on_signals() -> None:
    """Turn SIGTERM and SIGHUP (a closed terminal) into KeyboardInterrupt, as Ctrl-C already is, so
    the services' groups are stopped on the way out: they run in sessions of their own, which no
    terminal signal reaches."""

    def interrupt(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, interrupt)


def stop_leftovers(home: Path) -> None:
    """Stop the groups an earlier run on ``home`` recorded and left running (it was SIGKILLed).

    A recorded pid is only signalled while its process still runs on this home's Dagster
    instance (its environment says so): pids are reused, and a stranger's group is never touched.
    """
    pids = home / PIDS_FILE
    if not pids.is_file():
        return
    marker = f"DAGSTER_HOME={home / 'dagster_home'}".encode()
    ours = []
    for line in pids.read_text().split():
        try:
            environ = Path(f"/proc/{int(line)}/environ").read_bytes().split(b"\0")
        except (OSError, ValueError):
            continue
        if marker in environ:
            ours.append(int(line))
    stop_groups(ours)
    pids.unlink()


class Services:
    """The services one script runs on a home, each in its own process group, recorded in the home.

    Leaving the block stops every group together, however it is left; after a Ctrl-C further
    signals are held meanwhile, so a second Ctrl-C cannot cut the stop short and leave a group
    running. ``env`` must carry ``DAGSTER_HOME`` (inside the home). ``log_dir``: each service's
    output goes to ``<log_dir>/<name>.log``; None shares this process's terminal.
    """

    def __init__(self, env: dict[str, str], log_dir: Path | None = None) -> None:
        self.env = env
        self.log_dir = log_dir
        self._pids_file = Path(env["DAGSTER_HOME"]).parent / PIDS_FILE
        self._processes: list[subprocess.Popen] = []
        self._logs: list[IO[str]] = []

    def __enter__(self) -> Services:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> bool:
        if exc_type is not None and issubclass(exc_type, KeyboardInterrupt):
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                signal.signal(sig, signal.SIG_IGN)
        stop_groups((process.pid for process in self._processes), reap=self._processes)
        for log in self._logs:
            log.close()
        return False

    def start(self, name: str, args: list[str]) -> subprocess.Popen:
        output = None
        if self.log_dir is not None:
            output = open(self.log_dir / f"{name}.log", "w")  # noqa: SIM115 - closed on exit
            self._logs.append(output)
        process = subprocess.Popen(
            args, cwd=REPO, env=self.env, stdout=output, stderr=subprocess.STDOUT if output else None, start_new_session=True
        )
        self._processes.append(process)
        with open(self._pids_file, "a", encoding="utf-8") as pids:
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
