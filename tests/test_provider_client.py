"""The send path's HTTP client (``orchestrator_assets.sends.http``) stands in for httpx: every
connector's request is the same on the wire, and every answer and every failure classifies the same,
through either client. Against real loopback servers."""

from __future__ import annotations

import asyncio
import re
import socket
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field

import httpx
import pytest
from starlette.requests import Request
from starlette.responses import Response

from orchestrator_assets.sends.http import provider_client
from resources.channels.base import (
    ChannelConnector,
    HttpClient,
    OutboundMessage,
    SendResult,
    transport_failure,
)
from resources.channels.d360 import D360Connector
from resources.channels.greenapi import GreenApiConnector
from resources.channels.mailgun import MailgunConnector
from resources.channels.sendgrid import SendGridConnector
from resources.channels.smsc import SmscConnector
from resources.channels.smsru import SmsRuConnector
from resources.channels.telegram import TelegramConnector
from resources.channels.twilio import TwilioConnector
from resources.channels.vk import VkConnector
from sandbox.server import run_uvicorn_in_thread

# Headers each HTTP library sets its own way; everything else must match.
LIBRARY_HEADERS = {"user-agent", "accept", "accept-encoding", "connection"}
BOUNDARY = re.compile(rb"[0-9a-f]{32}")  # httpx's multipart boundary, random per request


@dataclass
class Recorder:
    """An ASGI app that records each request and answers with ``answer``."""

    answer: Response = field(default_factory=lambda: Response(b"{}", media_type="application/json"))
    requests: list[tuple[str, str, dict[str, str], bytes]] = field(default_factory=list)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return
        request = Request(scope, receive)
        body = await request.body()
        self.requests.append((request.method, str(request.url.path) + "?" + request.url.query, dict(request.headers), body))
        await self.answer(scope, receive, send)


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[Recorder, str]]:
    recorder = Recorder()
    with run_uvicorn_in_thread(recorder) as url:
        yield recorder, url


def message(channel: str, address: str, **fields: object) -> OutboundMessage:
    return OutboundMessage(
        send_id="7b7c8d52-0000-4000-8000-000000000001", tenant="t1", campaign="c1", channel=channel, address=address, text="Привет, мир", **fields
    )


def senders(url: str) -> dict[str, tuple[ChannelConnector, OutboundMessage]]:
    """One connector of each provider with a message it accepts, covering every way they post:
    JSON, form fields, multipart, a hand-encoded body, Basic auth and API-key headers."""
    email = message("email", "anna@example.ru", subject="Скидки", html="<p>Привет</p>", unsubscribe_url="https://example.ru/u/1")
    whatsapp = message("whatsapp", "+79161234567")
    return {
        "telegram": (TelegramConnector(url, "123:abc"), message("telegram", "100200300", buttons=(("Да", "yes"),))),
        "mailgun": (MailgunConnector(url, "mg.example.ru", "key-1", "Shop <shop@mg.example.ru>"), email),
        "sendgrid": (SendGridConnector(url, "SG.key", "Shop <shop@example.ru>"), email),
        "smsc": (SmscConnector(url, "login", "secret"), message("sms", "+79161234567")),
        "smsru": (SmsRuConnector(url, "api-id"), message("sms", "+79161234567")),
        "twilio": (TwilioConnector(url, "AC0123", "token", "whatsapp:+14155238886"), whatsapp),
        "d360": (D360Connector(url, "d360-key"), whatsapp),
        "greenapi": (GreenApiConnector(url, 1101, "gtoken"), whatsapp),
        "vk": (VkConnector(url, 42, "vk-token"), message("vk", "100200300", dedup_id=7)),
    }


@asynccontextmanager
async def either(kind: str, timeout: httpx.Timeout | None = None) -> AsyncIterator[HttpClient]:
    """An ``httpx.AsyncClient`` (what connector tests and one-off calls use) or the send path's client."""
    timeout = timeout or httpx.Timeout(10)
    async with httpx.AsyncClient(timeout=timeout) if kind == "httpx" else provider_client(4, timeout=timeout) as client:
        yield client


def send_through(kind: str, connector: ChannelConnector, msg: OutboundMessage, timeout: httpx.Timeout | None = None) -> SendResult:
    async def go() -> SendResult:
        async with either(kind, timeout) as client:
            return await connector.send(client, msg)

    return asyncio.run(go())


def comparable(request: tuple[str, str, dict[str, str], bytes]) -> tuple:
    method, target, headers, body = request
    kept = {name: BOUNDARY.sub(b"B", value.encode()) for name, value in headers.items() if name not in LIBRARY_HEADERS}
    return method, target, kept, BOUNDARY.sub(b"B", body)


@pytest.mark.parametrize("provider", sorted(senders("http://x")))
def test_each_connector_sends_the_same_request_through_either_client(server, provider):
    recorder, url = server
    connector, msg = senders(url)[provider]
    recorder.requests.clear()
    send_through("httpx", connector, msg)
    send_through("provider_client", connector, msg)
    assert len(recorder.requests) == 2
    by_httpx, by_ours = (comparable(request) for request in recorder.requests)
    assert by_ours == by_httpx
    assert by_ours[3]  # a body was sent, not an empty one twice


ANSWERS = {
    "json": Response(b'{"ok":true,"result":{"message_id":5,"chat":{"id":1}},"id":"<m1@mg>","sms":{}}', media_type="application/json"),
    "rate_limited": Response(b'{"description":"Too Many Requests: retry after 7"}', 429, {"Retry-After": "7"}, media_type="application/json"),
    "blocked": Response(b'{"description":"Forbidden: bot was blocked by the user","error":{"error_code":901}}', 403, media_type="application/json"),
    "cp1251_text": Response("Ошибка сервера".encode("cp1251"), 500, media_type="text/plain; charset=windows-1251"),
    "html": Response(b"<html>Bad gateway</html>", 502, media_type="text/html"),
    "redirect": Response(b"", 302, {"Location": "/elsewhere"}),
}


@pytest.mark.parametrize("answer", sorted(ANSWERS))
@pytest.mark.parametrize("provider", sorted(senders("http://x")))
def test_each_answer_classifies_the_same_through_either_client(server, provider, answer):
    recorder, url = server
    recorder.answer = ANSWERS[answer]
    try:
        connector, msg = senders(url)[provider]
        assert send_through("provider_client", connector, msg) == send_through("httpx", connector, msg)
    finally:
        recorder.answer = Recorder().answer


@contextmanager
def raw_server(handle: Callable) -> Iterator[int]:
    """A TCP server on loopback running ``handle(reader, writer)`` per connection, in its own thread's loop."""
    ready, stop = threading.Event(), None
    port = 0

    def run() -> None:
        nonlocal stop, port

        async def serve() -> None:
            nonlocal stop, port
            server = await asyncio.start_server(handle, "127.0.0.1", 0)
            port = server.sockets[0].getsockname()[1]
            stop = asyncio.get_running_loop().create_future()
            ready.set()
            async with server:
                await stop

        asyncio.run(serve())

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    ready.wait(5)
    loop = stop.get_loop()
    try:
        yield port
    finally:
        loop.call_soon_threadsafe(stop.set_result, None)
        thread.join(5)


async def hang_up_after_request(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.readuntil(b"\r\n\r\n")
    writer.close()


async def never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.readuntil(b"\r\n\r\n")
    await asyncio.sleep(2)
    writer.close()


async def garbled_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.readuntil(b"\r\n\r\n")
    writer.write(b"HTTP/1.1 abc Nonsense\r\n\r\n")
    await writer.drain()
    writer.close()


def free_port() -> int:
    """A port nothing listens on: the connection is refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


FAILURES = {
    "refused": (None, False),  # nothing listens: cannot have reached the provider
    "hang_up_after_request": (hang_up_after_request, True),
    "no_answer_in_time": (never_answer, True),
    "garbled_answer": (garbled_answer, True),
}


@pytest.mark.parametrize("failure", sorted(FAILURES))
def test_failures_classify_the_same_through_either_client(failure):
    handle, may_have_been_accepted = FAILURES[failure]
    msg = message("telegram", "100200300")
    timeout = httpx.Timeout(5, read=0.3)

    def outcomes(port: int) -> dict[str, SendResult]:
        connector = TelegramConnector(f"http://127.0.0.1:{port}", "123:abc")
        return {kind: send_through(kind, connector, msg, timeout) for kind in ("httpx", "provider_client")}

    if handle is None:
        results = outcomes(free_port())
    else:
        with raw_server(handle) as port:
            results = outcomes(port)
    for kind, result in results.items():
        assert (kind, result.ok, result.error_class, result.may_have_been_accepted) == (kind, False, "transient", may_have_been_accepted)


def test_exception_types_are_httpx_s():
    """Connectors catch ``httpx.HTTPError``; the client raises the subclass httpx would for the case."""

    async def go(port: int, timeout: httpx.Timeout) -> BaseException:
        async with provider_client(1, timeout=timeout) as client:
            try:
                await client.post(f"http://127.0.0.1:{port}/x", json={})
            except httpx.HTTPError as exc:
                return exc
        raise AssertionError("no error")

    assert isinstance(asyncio.run(go(free_port(), httpx.Timeout(5))), httpx.ConnectError)
    with raw_server(never_answer) as port:
        assert isinstance(asyncio.run(go(port, httpx.Timeout(5, read=0.2))), httpx.ReadTimeout)
    assert transport_failure(httpx.ReadTimeout("x")).may_have_been_accepted


def test_calls_no_connector_makes_yet_match_httpx(server):
    """A GET with query parameters and Basic auth, and a raw body of no declared type."""
    recorder, url = server

    async def go(kind: str) -> list[tuple[int, str]]:
        async with either(kind) as client:
            got = await client.get(f"{url}/status", params={"id": "7", "flag": True}, auth=("AC0123", "token"))
            posted = await client.post(f"{url}/raw", content=b"\x00raw")
            return [(response.status_code, response.text) for response in (got, posted)]

    recorder.requests.clear()
    assert asyncio.run(go("provider_client")) == asyncio.run(go("httpx")) == [(200, "{}")] * 2
    ours, by_httpx = [comparable(request) for request in recorder.requests[:2]], [comparable(request) for request in recorder.requests[2:]]
    assert ours == by_httpx
    assert ours[0][1] == "/status?id=7&flag=true"  # params replace the URL's query, as in httpx
    assert "content-type" not in ours[1][2]
