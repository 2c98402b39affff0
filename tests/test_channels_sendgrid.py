"""SendGrid connector and Event Webhook helpers, against the provider sandbox over real loopback HTTP."""

from __future__ import annotations

import asyncio
import base64
import html
import json
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from resources.channels import OutboundMessage, SendResult
from resources.channels import sendgrid as sg
from resources.channels.sendgrid import SendGridConnector
from sandbox.config import SandboxConfig, SendGridAccount
from sandbox.server import run_uvicorn_in_thread, running_sandbox

API_KEY, LIMITED_KEY = "SG.sandbox-key-1", "SG.sandbox-limited"
SENDER = "Магазин <shop@sg.example.ru>"

# Published vector (shared/reference/provider-protocols.md §4, from the SendGrid SDK tests).
VECTOR_KEY = "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEEDr2LjtURuePQzplybdC+u4CwrqDqBaWjcMMsTbhdbcwHBcepxo7yAQGhHPTnlvFYPAZFceEu/1FwCM/QmGUhA=="  # noqa: E501
VECTOR_TIMESTAMP = "1588788367"
VECTOR_BODY = '{"category":"example_payload","event":"test_event","message_id":"message_id"}'
VECTOR_SIGNATURE = "MEUCIQCtIHJeH93Y+qpYeWrySphQgpNGNr/U+UyUlBkU6n7RAwIgJTz2C+8a8xonZGi6BpSzoQsbVRamr2nlxFDWYNH2j/0="

# Reference events (shared/reference/provider-protocols.md §4d), our send id as the custom arg.
REFERENCE_EVENTS = [
    {"email": "ivan@example.ru", "timestamp": 1717000000, "smtp-id": "<14c5d75ce93.dfd.64b469@ismtpd-555>", "event": "processed", "category": ["promo"], "sg_event_id": "2FeCcG5VRWpck6mKqRgnDg==", "sg_message_id": "14c5d75ce93.dfd.64b469.filter0001.16648.5515E0B88.0", "send_id": "d-123"},  # noqa: E501
    {"email": "ivan@example.ru", "timestamp": 1717000005, "event": "delivered", "response": "250 OK", "sg_event_id": "hqFbp3HH9WxIM0R2-x2M1Q==", "sg_message_id": "14c5d75ce93.dfd.64b469.filter0001.16648.5515E0B88.0", "send_id": "d-123"},  # noqa: E501
    {"email": "ivan@example.ru", "timestamp": 1717000006, "event": "deferred", "response": "400 try again later", "attempt": "5", "sg_event_id": "qK1Mx", "sg_message_id": "m"},  # noqa: E501
    {"email": "nobody@example.ru", "timestamp": 1717000007, "event": "bounce", "type": "bounce", "status": "5.1.1", "reason": "550 5.1.1 User unknown", "bounce_classification": "Invalid Address", "sg_event_id": "b1", "sg_message_id": "m"},  # noqa: E501
    {"email": "ivan@example.ru", "timestamp": 1717000007, "event": "bounce", "type": "blocked", "reason": "554 policy", "sg_event_id": "b2", "sg_message_id": "m"},  # noqa: E501
    {"email": "old@example.ru", "timestamp": 1717000008, "event": "dropped", "reason": "Bounced Address", "sg_event_id": "ZHJvcC0x", "sg_message_id": "LRzXl_NHStOGhQ4kofSm_A.filterdrecv-1"},  # noqa: E501
    {"email": "ivan@example.ru", "timestamp": 1717000100, "event": "open", "sg_machine_open": False, "ip": "203.0.113.5", "useragent": "Mozilla/5.0", "sg_event_id": "o1", "sg_message_id": "m"},  # noqa: E501
    {"email": "ivan@example.ru", "timestamp": 1717000200, "event": "click", "url": "https://ex.ru/sale", "ip": "203.0.113.5", "useragent": "Mozilla/5.0", "sg_event_id": "c1", "sg_message_id": "m"},  # noqa: E501
    {"email": "ivan@example.ru", "timestamp": 1717000300, "event": "spamreport", "sg_event_id": "s1", "sg_message_id": "m"},
    {"email": "ivan@example.ru", "timestamp": 1717000400, "event": "unsubscribe", "sg_event_id": "u1", "sg_message_id": "m"},
    {"email": "ivan@example.ru", "timestamp": 1717000500, "event": "group_unsubscribe", "asm_group_id": 42, "sg_event_id": "g1", "sg_message_id": "m"},  # noqa: E501
]


@dataclass(frozen=True)
class RawPost:
    headers: dict[str, str]  # names lower-cased
    body: bytes  # exactly as received: signatures cover these bytes


class RawReceiver:
    """An Event Webhook endpoint that keeps the raw bytes (the shared recorder keeps parsed JSON)."""

    def __init__(self) -> None:
        self.posts: list[RawPost] = []
        self._changed = threading.Condition()
        self.app = Starlette(routes=[Route("/sg", self._handle, methods=["POST"])])

    async def _handle(self, request: Request) -> Response:
        post = RawPost({k.lower(): v for k, v in request.headers.items()}, await request.body())
        with self._changed:
            self.posts.append(post)
            self._changed.notify_all()
        return Response(status_code=200)

    def events_for(self, send_id: str, count: int, timeout: float = 5.0) -> list[tuple[RawPost, dict]]:
        """The first `count` (post, event) pairs about our send, in arrival order."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                found = [(post, event) for post in self.posts for event in json.loads(post.body) if event.get("send_id") == send_id]
                if len(found) >= count or not self._changed.wait(deadline - time.monotonic()):
                    break
        assert len(found) >= count, f"{len(found)} of {count} events after {timeout}s"
        return found[:count]


@pytest.fixture(scope="module")
def raw_receiver():
    receiver = RawReceiver()
    with run_uvicorn_in_thread(receiver.app) as url:
        yield receiver, url


@pytest.fixture(scope="module")
def sandbox(raw_receiver):
    config = SandboxConfig(
        sendgrid=[
            SendGridAccount(api_key=API_KEY, webhook_url=f"{raw_receiver[1]}/sg"),
            SendGridAccount(api_key=LIMITED_KEY, rate_limit_per_s=1),
        ],
        callback_delay_s=0.01,
        callback_backoff_s=0.01,
    )
    with running_sandbox(config) as url:
        yield url


def email(address: str, **fields: object) -> OutboundMessage:
    defaults = {"subject": "Скидки недели", "text": "Скидка 10%: https://ex.ru/sale"}
    return OutboundMessage(
        send_id=str(uuid.uuid4()), tenant="t1", campaign="c1", channel="email", address=address, **(defaults | fields)
    )


def newsletter(address: str, token: str, **fields: object) -> OutboundMessage:
    """A rendered campaign e-mail whose only personal part is its unsubscribe link (body and header)."""
    url = f"https://algor.example/u/{token}?l=promo&c=c1"
    body = {
        "text": f"Скидка 10%: https://ex.ru/sale\nОтписаться: {url}",
        "html": f'<html><head><style>a {{ color: red }}</style></head><body><a href="https://ex.ru/sale">Скидки</a> <a href="{html.escape(url)}">Отписаться</a></body></html>',
    }
    return email(address, unsubscribe_url=url, **(body | fields))


def send_batch(
    base_url: str, msgs: list[OutboundMessage], key: str = API_KEY, **client_options: object
) -> tuple[list[SendResult], int]:
    """The connector's results and how many HTTP calls it made."""
    calls: list[httpx.Request] = []

    async def count(request: httpx.Request) -> None:
        calls.append(request)

    async def go() -> list[SendResult]:
        async with httpx.AsyncClient(event_hooks={"request": [count]}, **client_options) as client:
            return await SendGridConnector(base_url, key, SENDER).send_batch(client, msgs)

    return asyncio.run(go()), len(calls)


def send(base_url: str, msg: OutboundMessage, key: str = API_KEY, **client_options: object) -> SendResult:
    async def go() -> SendResult:
        async with httpx.AsyncClient(**client_options) as client:
            return await SendGridConnector(base_url, key, SENDER).send(client, msg)

    return asyncio.run(go())


def records(base_url: str, msgs: list[OutboundMessage]) -> list[dict]:
    by_send_id = {m["send_id"]: m for m in httpx.get(f"{base_url}/_sandbox/messages", params={"provider": "sendgrid"}).json()["messages"]}
    return [by_send_id[msg.send_id] for msg in msgs]


def public_key(base_url: str) -> str:
    """The Event Webhook's public key, fetched the way a receiver would."""
    answer = httpx.get(f"{base_url}/v3/user/webhooks/event/settings/signed", headers={"Authorization": f"Bearer {API_KEY}"})
    assert answer.status_code == 200
    return answer.json()["public_key"]


# --- signature --------------------------------------------------------------------------------------


def test_verify_webhook_passes_the_published_vector():
    assert sg.verify_webhook(VECTOR_KEY, VECTOR_SIGNATURE, VECTOR_TIMESTAMP, VECTOR_BODY)
    assert sg.verify_webhook(VECTOR_KEY, VECTOR_SIGNATURE, VECTOR_TIMESTAMP, VECTOR_BODY.encode())


@pytest.mark.parametrize(
    ("key", "signature", "timestamp", "body"),
    [
        (VECTOR_KEY, VECTOR_SIGNATURE, VECTOR_TIMESTAMP, VECTOR_BODY.replace("test_event", "test_evenT")),  # tampered body
        (VECTOR_KEY, VECTOR_SIGNATURE, "1588788368", VECTOR_BODY),  # another timestamp
        (VECTOR_KEY, VECTOR_SIGNATURE, VECTOR_TIMESTAMP, VECTOR_BODY + "\n"),  # re-serialised body
        (VECTOR_KEY, "not base64!", VECTOR_TIMESTAMP, VECTOR_BODY),
        (VECTOR_KEY, base64.b64encode(b"\x30\x00").decode(), VECTOR_TIMESTAMP, VECTOR_BODY),  # not a signature
        ("", VECTOR_SIGNATURE, VECTOR_TIMESTAMP, VECTOR_BODY),
        (base64.b64encode(b"garbage").decode(), VECTOR_SIGNATURE, VECTOR_TIMESTAMP, VECTOR_BODY),
    ],
)
def test_verify_webhook_refuses_everything_else(key, signature, timestamp, body):
    assert sg.verify_webhook(key, signature, timestamp, body) is False


def test_verify_webhook_can_refuse_stale_timestamps():
    signed = int(VECTOR_TIMESTAMP)
    assert sg.verify_webhook(VECTOR_KEY, VECTOR_SIGNATURE, VECTOR_TIMESTAMP, VECTOR_BODY, now=signed + 10)
    assert sg.verify_webhook(VECTOR_KEY, VECTOR_SIGNATURE, VECTOR_TIMESTAMP, VECTOR_BODY, now=signed + 23 * 3600)  # SendGrid's last retry
    assert not sg.verify_webhook(VECTOR_KEY, VECTOR_SIGNATURE, VECTOR_TIMESTAMP, VECTOR_BODY, now=signed + sg.SIGNATURE_MAX_AGE_S + 1)
    assert not sg.verify_webhook(VECTOR_KEY, VECTOR_SIGNATURE, VECTOR_TIMESTAMP, VECTOR_BODY, now=signed - 301)  # from the future


def test_sandbox_signed_events_verify_with_the_published_key(sandbox, raw_receiver):
    receiver, _ = raw_receiver
    key = public_key(sandbox)
    webhook = httpx.get(f"{sandbox}/v3/user/webhooks/event/settings/signed", headers={"Authorization": f"Bearer {API_KEY}"}).json()
    by_id = httpx.get(f"{sandbox}/v3/user/webhooks/event/settings/signed/{webhook['id']}", headers={"Authorization": f"Bearer {API_KEY}"})
    assert by_id.json() == webhook == {"id": webhook["id"], "public_key": key}
    msg = email(f"deliver+{uuid.uuid4().hex[:6]}@example.ru")
    assert send(sandbox, msg).ok
    [(post, _), _] = receiver.events_for(msg.send_id, 2)
    signature, timestamp = post.headers["x-twilio-email-event-webhook-signature"], post.headers["x-twilio-email-event-webhook-timestamp"]
    assert sg.verify_webhook(key, signature, timestamp, post.body, now=time.time())
    assert not sg.verify_webhook(key, signature, timestamp, post.body.replace(b"delivered", b"dropped"))
    assert not sg.verify_webhook(VECTOR_KEY, signature, timestamp, post.body)  # someone else's key


def test_settings_endpoint_wants_the_api_key(sandbox):
    answer = httpx.get(f"{sandbox}/v3/user/webhooks/event/settings/signed", headers={"Authorization": "Bearer SG.wrong"})
    assert answer.status_code == 401
    missing = httpx.get(f"{sandbox}/v3/user/webhooks/event/settings/signed/nope", headers={"Authorization": f"Bearer {API_KEY}"})
    assert missing.status_code == 404


# --- sending ----------------------------------------------------------------------------------------


def test_single_send_is_accepted_with_the_x_message_id(sandbox):
    msg = newsletter("deliver+one@example.ru", "one")
    result = send(sandbox, msg)
    assert result.ok and result.provider_message_id
    [record] = records(sandbox, [msg])
    assert record["provider_message_id"] == result.provider_message_id
    assert (record["recipient"], record["subject"], record["outcome"]) == ("deliver+one@example.ru", "Скидки недели", "deliver")
    assert record["variables"] == {"send_id": msg.send_id}
    assert record["headers"] == {"List-Unsubscribe": f"<{msg.unsubscribe_url}>", "List-Unsubscribe-Post": "List-Unsubscribe=One-Click"}
    assert record["text"] == msg.text
    assert f'href="{msg.unsubscribe_url}"' in record["html"] and 'style="color: red;"' in record["html"] and "<style>" not in record["html"]


def test_a_batch_is_one_call_and_subjects_may_differ(sandbox):
    msgs = [newsletter(f"deliver+b{n}@example.ru", f"b{n}", subject=f"Иван {n}, скидки недели") for n in range(5)]
    results, calls = send_batch(sandbox, msgs)
    assert calls == 1 and all(r.ok for r in results) and len({r.provider_message_id for r in results}) == 1
    for n, (msg, record) in enumerate(zip(msgs, records(sandbox, msgs), strict=True)):
        assert record["subject"] == f"Иван {n}, скидки недели" and record["variables"] == {"send_id": msg.send_id}
        assert record["text"] == msg.text and record["headers"]["List-Unsubscribe"] == f"<{msg.unsubscribe_url}>"


def test_batches_split_on_different_bodies_and_repeated_addresses(sandbox):
    a, b = newsletter("deliver+ga@example.ru", "a"), newsletter("deliver+gb@example.ru", "b")
    other = newsletter("deliver+gc@example.ru", "c", text="Другой текст")
    again = newsletter("DELIVER+ga@example.ru", "a2")
    results, calls = send_batch(sandbox, [a, other, b, again])
    ids = [r.provider_message_id for r in results]
    assert calls == 3 and ids[0] == ids[2] and len({ids[0], ids[1], ids[3]}) == 3


def test_a_bad_address_in_a_batch_fails_only_itself(sandbox):
    msgs = [newsletter("deliver+ok1@example.ru", "ok1"), newsletter("not-an-address", "bad"), newsletter("deliver+ok2@example.ru", "ok2")]
    results, calls = send_batch(sandbox, msgs)
    assert calls == 1 + 3 and [r.ok for r in results] == [True, False, True]
    assert (results[1].error_class, results[1].error) == ("rejected", "Does not contain a valid address.")


def test_per_recipient_events_carry_their_send_id(sandbox, raw_receiver):
    receiver, _ = raw_receiver
    tag = uuid.uuid4().hex[:6]
    msgs = [newsletter(f"{outcome}+{tag}@example.ru", outcome + tag) for outcome in ("click", "bounce", "complain")]
    results, calls = send_batch(sandbox, msgs)
    assert calls == 1 and all(r.ok for r in results)
    expected = (
        ["ignored", "delivered", "opened", "clicked"],
        ["ignored", "delivery_failed"],
        ["ignored", "delivered", "complained"],
    )
    key = public_key(sandbox)
    for msg, kinds in zip(msgs, expected, strict=True):
        found = receiver.events_for(msg.send_id, len(kinds))
        for post, _ in found:
            headers = post.headers
            assert sg.verify_webhook(key, headers["x-twilio-email-event-webhook-signature"], headers["x-twilio-email-event-webhook-timestamp"], post.body)
        events = sg.parse_events([event for _, event in found])
        assert [e.kind for e in events] == kinds
        assert {(e.send_id, e.address, e.provider_message_id) for e in events} == {(msg.send_id, msg.address, results[0].provider_message_id)}
        assert len({e.event_key for e in events}) == len(kinds)
        if kinds[-1] == "clicked":
            assert events[-1].reason == "https://ex.ru/sale"
        if kinds[-1] == "delivery_failed":
            assert events[-1].reason == "bounce: 550 5.1.1 User unknown"


@pytest.mark.parametrize(
    ("key", "fields", "error"),
    [
        ("SG.wrong", {}, "The provided authorization grant is invalid, expired, or revoked"),
        (API_KEY, {"subject": None}, "The subject is required. You can get around this requirement if you use a template with a subject defined or if every personalization has a subject defined."),  # noqa: E501
        (API_KEY, {"text": "", "html": None}, "Unless a valid template_id is provided, the content parameter is required. There must be at least one defined content block. We typically suggest both text/plain and text/html blocks are included, but only one block is required."),  # noqa: E501
    ],
)
def test_our_mistakes_are_rejected(sandbox, key, fields, error):
    result = send(sandbox, email("deliver+r@example.ru", **fields), key=key)
    assert (result.ok, result.error_class, result.error) == (False, "rejected", error)


def test_sandbox_refuses_more_than_1000_personalizations(sandbox):
    body = {
        "personalizations": [{"to": [{"email": f"deliver+{n}@example.ru"}]} for n in range(1001)],
        "from": {"email": "shop@sg.example.ru"}, "subject": "s", "content": [{"type": "text/plain", "value": "t"}],
    }
    answer = httpx.post(f"{sandbox}/v3/mail/send", json=body, headers={"Authorization": f"Bearer {API_KEY}"})
    assert answer.status_code == 400
    messages = [error["message"] for error in answer.json()["errors"]]
    assert messages[0].startswith("The personalization block is limited to 1000 personalizations per API request. You have provided 1001")
    assert "There is a limit of 1000 total recipients (to + cc + bcc) per request." in messages


def test_rate_limit_is_429_with_reset(sandbox):
    first = send(sandbox, email("deliver+rl1@example.ru"), key=LIMITED_KEY)
    limited = send(sandbox, email("deliver+rl2@example.ru"), key=LIMITED_KEY)
    assert first.ok
    assert (limited.error_class, limited.error) == ("rate_limited", "too many requests")
    assert 0 < limited.retry_after <= 2


@pytest.mark.parametrize(("status", "error_class"), [(503, "transient"), (500, "transient"), (413, "rejected"), (403, "rejected")])
def test_forced_provider_answers(sandbox, status, error_class):
    result = send(sandbox, email("deliver+f@example.ru"), headers={"X-Sandbox-Fault": str(status)})
    assert (result.ok, result.error_class, result.may_have_been_accepted) == (False, error_class, False)


def test_timeout_may_have_been_accepted_and_refused_connection_was_not(sandbox):
    result = send(sandbox, email("deliver+slow@example.ru"), headers={"X-Sandbox-Delay": "0.5"}, timeout=0.1)
    assert (result.error_class, result.may_have_been_accepted) == ("transient", True) and "Timeout" in result.error
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    refused = send(f"http://127.0.0.1:{port}", email("deliver+x@example.ru"))
    assert (refused.error_class, refused.may_have_been_accepted) == ("transient", False)


# --- pure helpers -----------------------------------------------------------------------------------


def test_classify():
    assert sg.classify(202, {}, {"X-Message-Id": "abc"}) == SendResult(ok=True, provider_message_id="abc")
    assert sg.classify(202, {}, {}) == SendResult(ok=True)  # accepted even without the header
    limited = sg.classify(429, {"errors": [{"field": None, "message": "too many requests"}]}, {"X-RateLimit-Reset": "1000"}, now=990.5)
    assert (limited.error_class, limited.retry_after) == ("rate_limited", 9.5)
    assert sg.classify(429, {}, {}).retry_after is None
    two = sg.classify(400, {"errors": [{"message": "a", "field": "x"}, {"message": "b", "field": "y"}]})
    assert (two.error_class, two.error) == ("rejected", "a; b")
    assert sg.classify(502, {}).error_class == "transient"


def test_parse_reference_events():
    events = sg.parse_events(REFERENCE_EVENTS)
    assert [e.kind for e in events] == [
        "ignored", "delivered", "ignored", "delivery_failed", "delivery_failed", "delivery_failed",
        "opened", "clicked", "complained", "unsubscribed", "unsubscribed",
    ]
    assert [e.event_key for e in events][:2] == ["2FeCcG5VRWpck6mKqRgnDg==", "hqFbp3HH9WxIM0R2-x2M1Q=="]
    assert events[1].send_id == "d-123" and events[1].provider_message_id == "14c5d75ce93.dfd.64b469"
    assert events[1].occurred_at == datetime.fromtimestamp(1717000005, tz=UTC) and events[1].address == "ivan@example.ru"
    assert [e.reason for e in events[3:6]] == ["bounce: 550 5.1.1 User unknown", "blocked: 554 policy", "dropped: Bounced Address"]
    assert events[0].reason == "processed" and events[7].reason == "https://ex.ru/sale"
    assert events[5].provider_message_id == "LRzXl_NHStOGhQ4kofSm_A"


def test_event_key_without_sg_event_id_is_stable_and_bad_payloads_are_refused():
    event = {"event": "delivered", "email": "ivan@example.ru", "timestamp": 1717000000}
    assert sg.event_key(event) == sg.event_key(dict(reversed(event.items()))) and sg.event_key(event).startswith("sha256:")
    with pytest.raises(ValueError):
        sg.parse_events({"event": "delivered"})  # an object, not the array SendGrid posts
    with pytest.raises(ValueError):
        sg.parse_events(["delivered"])
