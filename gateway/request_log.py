"""One JSON log line per gateway request, tied together by a request id.

``RequestLogMiddleware`` (pure ASGI, so it costs a few microseconds, not a task per request)
takes the caller's ``X-Request-ID`` when it looks like an id, else makes one, echoes it in the
response header and binds it for every log line written while the request runs. Handlers add
what they learnt with ``annotate`` (tenant, provider, outcome, refusal reason, event counts);
when the response is sent the middleware writes one line with all of it. It logs the matched
route template, never the raw path: SMS.ru's callback path and link tokens are secrets.
"""

from __future__ import annotations

import itertools
import logging
import re
import secrets
import sys
import time
from contextvars import ContextVar
from typing import Any

import structlog

REQUEST_ID_HEADER = b"x-request-id"
_SANE_REQUEST_ID = re.compile(rb"[A-Za-z0-9._:/+=@-]{1,128}")
# Generated ids: a random per-process prefix and a counter (unique across workers and restarts,
# and cheaper than a UUID per request).
_ID_PREFIX = secrets.token_hex(6)
_ID_COUNTER = itertools.count(1)
_fields: ContextVar[dict[str, Any] | None] = ContextVar("algor_request_log_fields", default=None)
log = structlog.get_logger("algor.gateway")


def configure_logging(level: int = logging.INFO) -> None:
    """JSON lines on stderr, for our structured logs and for the libraries' stdlib logging alike."""
    timestamper = structlog.processors.TimeStamper(fmt="iso", utc=True)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            timestamper,
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(ensure_ascii=False),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.WriteLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processor=structlog.processors.JSONRenderer(ensure_ascii=False),
            foreign_pre_chain=[
                structlog.contextvars.merge_contextvars,
                structlog.stdlib.add_logger_name,
                structlog.processors.add_log_level,
                timestamper,
            ],
        )
    )
    logging.basicConfig(level=level, handlers=[handler], force=True)


def annotate(**fields: Any) -> None:
    """Add fields to the current request's log line (no-op outside a request)."""
    current = _fields.get()
    if current is not None:
        current.update(fields)


def _request_id(scope: dict) -> str:
    for name, value in scope["headers"]:
        if name == REQUEST_ID_HEADER and _SANE_REQUEST_ID.fullmatch(value):
            return value.decode()
    return f"{_ID_PREFIX}-{next(_ID_COUNTER):x}"


class RequestLogMiddleware:
    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = _request_id(scope)
        header = (REQUEST_ID_HEADER, request_id.encode())
        fields: dict[str, Any] = {}
        status = 500  # unless a response starts: an exception escaped and the server answers 500
        started = time.perf_counter()

        async def send_with_id(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message = {**message, "headers": [*message.get("headers", ()), header]}
            await send(message)

        fields_token = _fields.set(fields)
        bound = structlog.contextvars.bind_contextvars(request_id=request_id)
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            route = scope.get("route")
            level = "error" if status >= 500 else "warning" if status >= 400 else "info"
            getattr(log, level)(
                "request",
                method=scope["method"],
                route=getattr(route, "path", None),
                status=status,
                ms=round((time.perf_counter() - started) * 1000, 2),
                **fields,
            )
            structlog.contextvars.reset_contextvars(**bound)
            _fields.reset(fields_token)
