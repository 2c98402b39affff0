"""The HTTP client for provider calls: httpx's interface (what connectors take) on aiohttp's wire.

Measured against the sandbox in its own process with 64 requests in flight (``bench/dispatch.py``
prints the numbers of each run; on a 2-core machine): httpx's own pool about 200 req/s (its
connection pool serialises badly at this concurrency), httpx over ``httpx_aiohttp.AiohttpTransport``
1,500–1,850 (bound by httpx's per-request work), plain aiohttp 2,400–3,000. The connectors keep
their httpx code; only the transport changes. A hand-written transport that reads whole bodies
measured no faster, so the library's stays.

The client keeps no cookies: provider APIs authenticate every call, one client serves every tenant
of a run (a cookie one tenant's call received must not ride along on another's), and skipping the
cookie jar saves about a tenth of the client's CPU per call.

One correction to the transport: it maps every aiohttp connection error, including a server
disconnect *after* the request was written, to ``httpx.ConnectTimeout``, which connectors read as
"never reached the provider" and would resend. Only failures while connecting keep that meaning
here; the rest become ``httpx.ReadError`` (may have been accepted).
"""

from __future__ import annotations

import aiohttp
import httpx
from httpx_aiohttp import AiohttpTransport

DEFAULT_TIMEOUT_S = 15.0
_NOT_SENT = (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError)


class _Transport(AiohttpTransport):
    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        try:
            return await super().handle_async_request(request)
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            if isinstance(exc.__cause__, _NOT_SENT):
                raise
            raise httpx.ReadError(str(exc), request=request) from exc.__cause__


class _NoCookies(httpx.Cookies):
    def extract_cookies(self, response: httpx.Response) -> None:
        """Drop whatever the provider set."""


class _ProviderClient(httpx.AsyncClient):
    @property
    def cookies(self) -> httpx.Cookies:
        return _NO_COOKIES


_NO_COOKIES = _NoCookies()


def provider_client(max_connections: int, timeout: float | httpx.Timeout = DEFAULT_TIMEOUT_S, headers: dict[str, str] | None = None) -> httpx.AsyncClient:
    """An ``httpx.AsyncClient`` over aiohttp with at most ``max_connections`` open at once."""
    transport = _Transport(limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections))
    return _ProviderClient(transport=transport, timeout=timeout, headers=headers)
