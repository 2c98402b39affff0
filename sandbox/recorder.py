"""A webhook receiver that only records: the far end of the sandbox's callbacks in tests and demos.

It answers every POST with 200 unless failures were scripted for that path (to exercise the
sandbox's retries), and lets a test thread wait for callbacks the server thread has recorded.
Verification and parsing stay with the caller, which is the point: tests check the recorded
requests with the production verifiers.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]  # names lower-cased
    body: Any
    status: int  # what the recorder answered


class CallbackRecorder:
    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._received: list[Received] = []
        self._scripted: defaultdict[str, deque[int]] = defaultdict(deque)
        self.app = Starlette(routes=[Route("/{path:path}", self._handle, methods=["POST"])])

    def fail_next(self, path: str, *statuses: int) -> None:
        """Answer the next POSTs to `path` with these statuses, in order, then 200 again."""
        with self._changed:
            self._scripted[path].extend(statuses)

    def received(self, path: str) -> list[Received]:
        with self._changed:
            return [item for item in self._received if item.path == path]

    def wait_for(
        self, path: str, count: int, timeout: float = 5.0, where: Callable[[Any], bool] | None = None
    ) -> list[Received]:
        """The first `count` POSTs to `path` answered 2xx (and whose body satisfies `where`).

        Raises AssertionError when fewer arrived within `timeout` seconds.
        """
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                accepted = [
                    item
                    for item in self._received
                    if item.path == path and item.status < 300 and (where is None or where(item.body))
                ]
                if len(accepted) >= count or not self._changed.wait(deadline - time.monotonic()):
                    break
        assert len(accepted) >= count, f"{path}: {len(accepted)} of {count} callbacks after {timeout}s"
        return accepted[:count]

    async def _handle(self, request: Request) -> JSONResponse:
        path = "/" + request.path_params["path"]
        body = await request.json()
        with self._changed:
            status = self._scripted[path].popleft() if self._scripted[path] else 200
            self._received.append(Received(path, {k.lower(): v for k, v in request.headers.items()}, body, status))
            self._changed.notify_all()
        return JSONResponse({"status": status}, status_code=status)
