"""The HTTP client for provider calls: the part of httpx's interface connectors use, on plain aiohttp.

Measured with ``bench/dispatch.py`` (64 requests in flight, the sandbox in its own process, on a
2-core machine shared with other work: absolute rates swing 2x between runs, ratios within a run
hold). Before, with httpx over ``httpx_aiohttp.AiohttpTransport``: httpx's own pool ~130-360
req/s (it serialises badly at this concurrency), httpx over aiohttp 1,500-2,950 req/s, plain
aiohttp 2,970-7,400 req/s, and the send path 1,190-2,430 msg/s: 0.33-0.40 of plain aiohttp, with
a third of its CPU in httpx's own request and response work around aiohttp. This client hands
the body to aiohttp and reads the answer whole: its bare loop runs as fast as plain aiohttp's
(~110-120 µs of CPU a request each). With it, cheaper limiter windows (``limits``), claims in
bigger batches and the garbage collector kept off the run's long-lived objects (``run``), 100k
messages went through the send path at 0.52-0.64 of the plain aiohttp loop. uvloop took ~4 % off
the send path's CPU and nothing off plain aiohttp's: not worth a second event loop.

What it keeps of httpx, so connectors (which also run on a plain ``httpx.AsyncClient`` in tests
and one-off calls) see no difference:

- request bodies: ``json=`` encoded as httpx encodes it; ``data=``, ``files=`` and ``content=``
  (and ``params=``) encoded by httpx itself, so the bytes on the wire are httpx's; ``auth=`` as a
  (user, password) pair for HTTP Basic; redirects are not followed;
- timeouts: a number or an ``httpx.Timeout`` (connect, read, pool; aiohttp has no write timeout);
- the answer: ``status_code``, case-insensitive ``headers``, ``content``, ``text`` (the charset the
  answer names, else UTF-8, like httpx) and ``json()``;
- failures as httpx's exception types, with the distinction connectors classify by
  (``resources.channels.base.transport_failure``): ``ConnectError`` / ``ConnectTimeout`` only
  while connecting (the provider cannot have seen the request), ``ReadTimeout`` when no answer
  came in time, ``ReadError`` / ``RemoteProtocolError`` when the connection broke or the answer
  was garbled after the request was written (may have been accepted).

It keeps no cookies: provider APIs authenticate every call, one client serves every tenant of a run
(a cookie one tenant's call received must not ride along on another's), and a cookie jar costs CPU
on every call. Certificates are checked against certifi's bundle, as with httpx. Proxy settings in
the environment are not read: the deployment has no egress proxy, and aiohttp looks them up on
every call (measured: more than the whole rest of the call).
"""

from __future__ import annotations

import email.message
import json as jsonlib
from collections.abc import Mapping
from typing import Any, Self

import aiohttp
import httpx

DEFAULT_TIMEOUT_S = 15.0
_encode_json = jsonlib.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode  # httpx's encoding


class ProviderResponse:
    """A provider's answer, read whole."""

    __slots__ = ("content", "headers", "status_code")

    def __init__(self, status_code: int, headers: Mapping[str, str], content: bytes):
        self.status_code = status_code
        self.headers = headers
        self.content = content

    @property
    def text(self) -> str:
        """The body in the charset the Content-Type names (parsed as httpx parses it), else UTF-8."""
        header = email.message.Message()
        header["Content-Type"] = self.headers.get("Content-Type", "")
        try:
            return self.content.decode(header.get_content_charset() or "utf-8", errors="replace")
        except LookupError:  # a charset Python does not know
            return self.content.decode("utf-8", errors="replace")

    def json(self) -> Any:
        return jsonlib.loads(self.content)


class ProviderClient:
    """``post``/``get`` as connectors call them on an ``httpx.AsyncClient``, over one aiohttp
    session with at most ``max_connections`` open at once (opened on first use, in the running loop)."""

    def __init__(self, max_connections: int, timeout: float | httpx.Timeout = DEFAULT_TIMEOUT_S, headers: Mapping[str, str] | None = None):
        timeout = timeout if isinstance(timeout, httpx.Timeout) else httpx.Timeout(timeout)
        # aiohttp's ``connect`` covers waiting for a pooled connection as well as opening one.
        self._timeout = aiohttp.ClientTimeout(total=None, connect=timeout.pool, sock_connect=timeout.connect, sock_read=timeout.read)
        self._max_connections = max_connections
        self._headers = dict(headers or {})
        self._session: aiohttp.ClientSession | None = None

    async def post(
        self,
        url: str,
        *,
        json: Any = None,
        data: Mapping[str, Any] | None = None,
        files: Any = None,
        content: str | bytes | None = None,
        params: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        auth: tuple[str, str] | None = None,
    ) -> ProviderResponse:
        if data is None and files is None and content is None and params is None:  # the send path's hot calls
            body = None if json is None else _encode_json(json).encode()
            return await self._send("POST", url, body, None if body is None else "application/json", headers, auth)
        request = httpx.Request("POST", url, json=json, data=data, files=files, content=content, params=params)
        return await self._send_encoded(request, headers, auth)

    async def get(
        self, url: str, *, params: Mapping[str, Any] | None = None, headers: Mapping[str, str] | None = None, auth: tuple[str, str] | None = None
    ) -> ProviderResponse:
        if params is None:
            return await self._send("GET", url, None, None, headers, auth)
        return await self._send_encoded(httpx.Request("GET", url, params=params), headers, auth)

    async def _send_encoded(self, request: httpx.Request, headers: Mapping[str, str] | None, auth: tuple[str, str] | None) -> ProviderResponse:
        """A request httpx encoded (forms, multipart, query strings): its URL and bytes go out as they are."""
        return await self._send(request.method, str(request.url), request.read() or None, request.headers.get("Content-Type"), headers, auth)

    async def _send(
        self, method: str, url: str, body: bytes | None, content_type: str | None, headers: Mapping[str, str] | None, auth: tuple[str, str] | None
    ) -> ProviderResponse:
        sending = {} if content_type is None else {"Content-Type": content_type}
        if headers:
            sending.update(headers)
        session = self._session or self._open()
        payload = None if body is None else aiohttp.BytesPayload(body)  # spares aiohttp looking up the body's type
        basic = None if auth is None else aiohttp.BasicAuth(*auth, encoding="utf-8")
        try:
            async with session.request(method, url, data=payload, headers=sending, auth=basic, allow_redirects=False) as response:
                return ProviderResponse(response.status, response.headers, await response.read())
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:  # nothing was sent
            raise (httpx.ConnectTimeout if isinstance(exc, TimeoutError) else httpx.ConnectError)(str(exc)) from exc
        except aiohttp.ServerTimeoutError as exc:
            raise httpx.ReadTimeout(str(exc) or "no answer within the read timeout") from exc
        except (aiohttp.InvalidURL, aiohttp.NonHttpUrlClientError) as exc:
            raise httpx.UnsupportedProtocol(str(exc)) from exc
        except aiohttp.ClientResponseError as exc:
            raise httpx.RemoteProtocolError(str(exc)) from exc
        except aiohttp.ClientError as exc:  # broke after the request was (perhaps partly) written
            raise httpx.ReadError(str(exc) or type(exc).__name__) from exc

    def _open(self) -> aiohttp.ClientSession:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self._max_connections, ssl=httpx.create_ssl_context()),
            headers=self._headers,
            timeout=self._timeout,
            cookie_jar=aiohttp.DummyCookieJar(),
            skip_auto_headers=("Content-Type",),  # httpx sends none for a body of unknown type
        )
        return self._session

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


def provider_client(
    max_connections: int, timeout: float | httpx.Timeout = DEFAULT_TIMEOUT_S, headers: Mapping[str, str] | None = None
) -> ProviderClient:
    """The client for provider calls, with at most ``max_connections`` open at once."""
    return ProviderClient(max_connections, timeout, headers)
