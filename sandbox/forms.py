"""Request parameters the way the providers accept them: query string, JSON, urlencoded or multipart.

The sandbox parses forms itself (urllib for urlencoded, the stdlib e-mail parser for multipart) so it
needs no extra dependency; uploads are not supported, only text fields.
"""

from __future__ import annotations

import json
from email.parser import BytesParser
from urllib.parse import parse_qsl

from starlette.requests import Request


class BadRequest(ValueError):
    """The body could not be parsed."""


async def read_params(request: Request) -> list[tuple[str, object]]:
    """All parameters in order, repeats kept (Mailgun's `to` is repeatable). JSON values keep their type."""
    params: list[tuple[str, object]] = list(request.query_params.multi_items())
    body = await request.body()
    content_type = request.headers.get("content-type", "")
    if not body:
        return params
    if content_type.startswith("application/json"):
        try:
            data = json.loads(body)
        except ValueError as exc:
            raise BadRequest(f"can't parse JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise BadRequest("JSON body must be an object")
        return params + list(data.items())
    if content_type.startswith("application/x-www-form-urlencoded"):
        return params + parse_qsl(body.decode(errors="replace"), keep_blank_values=True)
    if content_type.startswith("multipart/form-data"):
        # The default (compat32) policy: the modern header parser costs milliseconds per request.
        message = BytesParser().parsebytes(f"Content-Type: {content_type}\r\n\r\n".encode() + body)
        if not message.is_multipart():
            raise BadRequest("malformed multipart body")
        for part in message.get_payload():
            name = part.get_param("name", header="content-disposition")
            payload = part.get_payload(decode=True) or b""
            params.append((str(name), payload.decode(part.get_content_charset() or "utf-8", errors="replace")))
        return params
    raise BadRequest(f"unsupported content type {content_type!r}")
