"""A webhook receiver that only records: the far end of the sandbox's callbacks in tests and demos.

It answers every POST with 200 unless failures were scripted for that path (to exercise the
sandbox's retries), and lets a test thread wait for callbacks the server thread has recorded.
Verification and parsing stay with the caller, which is the point: tests check the recorded
requests with the production verifiers.
"""

from __future__ import annotations

import json
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]  # names lower-cased
    body: Any  # parsed JSON, or a dict of the fields of a form-urlencoded POST (Twilio)
    status: int  # what the recorder answered
    raw: bytes = b""  # the body exactly as received (SendGrid's signature covers these bytes)


class CallbackRecorder:
    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._received: list[Received] = []
        self._scripted: defaultdict[str, deque[int]] = defaultdict(deque)
        self._answers: dict[str, str] = {}  # path → plain-text body to answer with (VK "ok", SMS.ru "100")
        self.app = Starlette(routes=[Route("/{path:path}", self._handle, methods=["POST"])])

    def fail_next(self, path: str, *statuses: int) -> None:
        """Answer the next POSTs to `path` with these statuses, in order, then 200 again."""
        with self._changed:
            self._scripted[path].extend(statuses)

    def answer_with(self, path: str, text: str) -> None:
        """Answer POSTs to `path` with this plain-text body (providers that check the answer's body)."""
        with self._changed:
            self._answers[path] = text

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

    async def _handle(self, request: Request) -> JSONResponse | PlainTextResponse:
        path = "/" + request.path_params["path"]
        raw = await request.body()
        if request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
            body: Any = dict(parse_qsl(raw.decode(), keep_blank_values=True))
        else:
            body = json.loads(raw)
        with self._changed:
            status = self._scripted[path].popleft() if self._scripted[path] else 200
            self._received.append(Received(path, {k.lower(): v for k, v in request.headers.items()}, body, status, raw))
            self._changed.notify_all()
        if path in self._answers:
            return PlainTextResponse(self._answers[path], status_code=status)
        return JSONResponse({"status": status}, status_code=status)
