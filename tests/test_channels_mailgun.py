"""Mailgun connector and webhook helpers, against the provider sandbox over real loopback HTTP."""

from __future__ import annotations

import asyncio
import html
import socket
import time
import uuid
from datetime import UTC, datetime

import httpx
import pytest

from resources.channels import CallbackEvent, MailgunConnector, OutboundMessage, SendResult
from resources.channels import mailgun as mg
from sandbox.config import MailgunDomain, SandboxConfig
from sandbox.recorder import CallbackRecorder
from sandbox.server import running_sandbox

DOMAIN, API_KEY, SIGNING_KEY = "mg.example.ru", "key-sandbox-1", "signing-key-1"
LIMITED = "limited.example.ru"
BULK = "bulk.example.ru"  # no webhook, no rate limit: for big batches
SENDER = "Магазин <shop@mg.example.ru>"

# Published vector: mailgun/mailgun-php tests/Api/WebhookTest.php (testVerifyWebhookGood / Bad).
VECTOR_KEY = "key-3ax6xnjp29jd6fds4gc373sgvjxteol0"
VECTOR_TIMESTAMP = "1403645220"
VECTOR_TOKEN = "5egbgr1vjgqxtrnp65xfznchgdccwh5d6i09vijqi3whgowmn6"
VECTOR_SIGNATURE = "9cfc5c41582e51246e73c88d34db3af0a3a2692a76fbab81492842f000256d33"

# Reference event-data shapes (shared/reference/provider-protocols.md §3d), with ids and timestamps added.
DELIVERED = {"signature": {"timestamp": "1717000000", "token": "e0b5477167110d68991efc6b9f89f0a11066af27834600e123", "signature": "x"}, "event-data": {"event": "delivered", "id": "CPgfbmQMTCKtHW6uIWtuVe", "timestamp": 1717000000.12, "recipient": "ivan@example.ru", "tags": ["promo"], "user-variables": {"send_id": "d-123"}, "delivery-status": {"code": 250, "message": "OK", "tls": True, "mx-host": "mx.example.ru"}, "message": {"headers": {"message-id": "20240601120000.1.ABCD@mg.example.ru"}}}}  # noqa: E501
VARIANTS = [
    {"event": "failed", "severity": "permanent", "reason": "bounce", "recipient": "nobody@example.ru", "delivery-status": {"code": 550, "message": "5.1.1 User unknown", "description": ""}, "user-variables": {"send_id": "d-124"}, "message": {"headers": {"message-id": "<m2@mg.example.ru>"}}},  # noqa: E501
    {"event": "failed", "severity": "temporary", "reason": "generic", "recipient": "ivan@example.ru", "delivery-status": {"code": 452, "message": "4.2.2 Mailbox full"}},  # noqa: E501
    {"event": "complained", "recipient": "ivan@example.ru", "user-variables": {"send_id": "d-123"}},
    {"event": "opened", "recipient": "ivan@example.ru", "ip": "203.0.113.5", "geolocation": {"country": "RU", "city": "Moscow"}, "client-info": {"client-name": "Chrome", "device-type": "desktop", "user-agent": "Mozilla/5.0"}},  # noqa: E501
    {"event": "clicked", "recipient": "ivan@example.ru", "url": "https://ex.ru/sale", "ip": "203.0.113.5"},
    {"event": "unsubscribed", "recipient": "ivan@example.ru", "tags": ["promo"]},
    {"event": "accepted", "recipient": "ivan@example.ru"},
]


def email(address: str, **fields: object) -> OutboundMessage:
    defaults = {"subject": "Скидки недели", "text": "Скидка 10%: https://ex.ru/sale"}
    return OutboundMessage(
        send_id=str(uuid.uuid4()), tenant="t1", campaign="c1", channel="email", address=address, **(defaults | fields)
    )


def send(base_url: str, msg: OutboundMessage, domain: str = DOMAIN, key: str = API_KEY, **client_options) -> SendResult:
    async def go() -> SendResult:
        async with httpx.AsyncClient(**client_options) as client:
            return await MailgunConnector(base_url, domain, key, SENDER).send(client, msg)

    return asyncio.run(go())


def send_batch(base_url: str, msgs: list[OutboundMessage], domain: str = BULK) -> tuple[list[SendResult], int]:
    """The connector's results and how many HTTP calls it made."""
    calls: list[httpx.Request] = []

    async def count(request: httpx.Request) -> None:
        calls.append(request)

    async def go() -> list[SendResult]:
        async with httpx.AsyncClient(event_hooks={"request": [count]}, timeout=30) as client:
            return await MailgunConnector(base_url, domain, API_KEY, SENDER).send_batch(client, msgs)

    return asyncio.run(go()), len(calls)


def records(base_url: str, msgs: list[OutboundMessage]) -> list[dict]:
    """The sandbox's record of each message, in the order given."""
    by_send_id = {m["send_id"]: m for m in httpx.get(f"{base_url}/_sandbox/messages", params={"provider": "mailgun"}).json()["messages"]}
    return [by_send_id[msg.send_id] for msg in msgs]


@pytest.fixture(scope="module")
def sandbox(receiver):
    config = SandboxConfig(
        mailgun=[
            MailgunDomain(domain=DOMAIN, api_key=API_KEY, signing_key=SIGNING_KEY, webhook_url=f"{receiver[1]}/mg"),
            MailgunDomain(domain=LIMITED, api_key=API_KEY, signing_key=SIGNING_KEY, rate_limit_per_s=1),
            MailgunDomain(domain=BULK, api_key=API_KEY, signing_key=SIGNING_KEY),
        ],
        callback_delay_s=0.01,
        callback_backoff_s=0.01,
    )
    with running_sandbox(config) as url:
        yield url


def events_for(recorder: CallbackRecorder, send_id: str, count: int) -> list[dict]:
    """The bodies of the first `count` callbacks about our send, in arrival order."""
    received = recorder.wait_for("/mg", count, where=lambda body: body["event-data"]["user-variables"].get("send_id") == send_id)
    return [item.body for item in received]


def test_sign_matches_published_vector():
    assert mg.sign(VECTOR_KEY, VECTOR_TIMESTAMP, VECTOR_TOKEN) == VECTOR_SIGNATURE


@pytest.mark.parametrize(
    ("token", "key", "now", "expected"),
    [
        (VECTOR_TOKEN, VECTOR_KEY, 1403645220 + 10, True),
        (VECTOR_TOKEN, VECTOR_KEY, 1403645220 + 2 * 3600, True),  # a retry 2 hours on carries the first attempt's signature
        (VECTOR_TOKEN, VECTOR_KEY, 1403645220 + mg.SIGNATURE_MAX_AGE_S + 1, False),  # older than any retry
        (VECTOR_TOKEN, VECTOR_KEY, 1403645220 - 301, False),  # from the future, past any clock skew
        ("owyldpe6nxhmrn78epljl6bj0orrki1u3d2v5e6cnlmmuox8jr", VECTOR_KEY, 1403645220, False),  # the SDK's bad case
        (VECTOR_TOKEN, "another-key", 1403645220, False),
        (VECTOR_TOKEN, "", 1403645220, False),
    ],
)
def test_verify_webhook(token, key, now, expected):
    payload = {"signature": {"timestamp": VECTOR_TIMESTAMP, "token": token, "signature": VECTOR_SIGNATURE}}
    assert mg.verify_webhook(payload, key, now=now) is expected


@pytest.mark.parametrize("signature", [None, {}, {"timestamp": "soon", "token": VECTOR_TOKEN, "signature": VECTOR_SIGNATURE}])
def test_verify_webhook_refuses_malformed_signatures(signature):
    assert not mg.verify_webhook({"signature": signature}, VECTOR_KEY, now=1403645220)


def test_send_succeeds_and_carries_our_fields(sandbox):
    msg = email(
        "deliver+1@example.ru",
        html="<html><head><style>p { color: red }</style></head><body><p>Скидка</p></body></html>",
        unsubscribe_url="https://algor.example/u/abc",
    )
    result = send(sandbox, msg)
    assert result.ok and "<" not in result.provider_message_id and result.provider_message_id.endswith(f"@{DOMAIN}")
    [received] = [m for m in httpx.get(f"{sandbox}/_sandbox/messages").json()["messages"] if m["send_id"] == msg.send_id]
    assert received["provider_message_id"] == result.provider_message_id
    assert (received["recipient"], received["subject"], received["outcome"]) == ("deliver+1@example.ru", "Скидки недели", "deliver")
    assert '<p style="color: red;">Скидка</p>' in received["html"] and "<style>" not in received["html"]
    assert received["headers"] == {
        "List-Unsubscribe": "<https://algor.example/u/abc>",
        "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
    }
    assert received["variables"] == {"send_id": msg.send_id}


@pytest.mark.parametrize(
    ("domain", "key", "fields", "error"),
    [
        (DOMAIN, "key-wrong", {}, "Forbidden"),
        ("unknown.example.ru", API_KEY, {}, "Domain not found: unknown.example.ru"),
        (DOMAIN, API_KEY, {"subject": None}, "subject parameter is missing"),
        (DOMAIN, API_KEY, {"text": ""}, "Need at least one of 'text', 'html' or 'template' parameters specified"),
    ],
)
def test_our_mistakes_are_rejected(sandbox, domain, key, fields, error):
    result = send(sandbox, email("deliver+2@example.ru", **fields), domain=domain, key=key)
    assert (result.ok, result.error_class, result.error) == (False, "rejected", error)


def test_rate_limit_is_429(sandbox):
    assert send(sandbox, email("deliver+3@example.ru"), domain=LIMITED).ok
    limited = send(sandbox, email("deliver+4@example.ru"), domain=LIMITED)
    assert (limited.error_class, limited.retry_after) == ("rate_limited", None)  # Mailgun sends no Retry-After


def test_provider_5xx_and_dead_socket_are_transient(sandbox):
    result = send(sandbox, email("deliver+5@example.ru"), headers={"X-Sandbox-Fault": "503"})
    assert (result.error_class, result.error) == ("transient", "Service Unavailable")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    assert send(f"http://127.0.0.1:{port}", email("deliver+6@example.ru")).error_class == "transient"


def test_bounce_callback_verifies_and_parses(sandbox, recorder):
    msg = email(f"bounce+{uuid.uuid4().hex[:6]}@example.ru")
    result = send(sandbox, msg)
    assert result.ok  # a bounce is asynchronous: the send itself is accepted
    [body] = events_for(recorder, msg.send_id, 1)
    assert mg.verify_webhook(body, SIGNING_KEY, now=time.time())
    assert not mg.verify_webhook(body, "not-our-key", now=time.time())
    [event] = mg.parse_event(body)
    assert (event.kind, event.send_id, event.address) == ("delivery_failed", msg.send_id, msg.address)
    assert event.provider_message_id == result.provider_message_id
    assert event.event_key == body["event-data"]["id"] and "550" in event.reason


@pytest.mark.parametrize(
    ("local_part", "kinds"),
    [("click", ["delivered", "opened", "clicked"]), ("complain", ["delivered", "complained"]), ("deliver", ["delivered"])],
)
def test_outcome_callbacks_arrive_in_order(sandbox, recorder, local_part, kinds):
    msg = email(f"{local_part}+{uuid.uuid4().hex[:6]}@example.ru")
    result = send(sandbox, msg)
    bodies = events_for(recorder, msg.send_id, len(kinds))
    assert all(mg.verify_webhook(body, SIGNING_KEY, now=time.time()) for body in bodies)
    events = [mg.parse_event(body)[0] for body in bodies]
    assert [e.kind for e in events] == kinds
    assert {e.provider_message_id for e in events} == {result.provider_message_id}
    assert len({e.event_key for e in events}) == len(kinds)
    if local_part == "click":
        assert events[-1].reason == "https://ex.ru/sale"


def test_parse_reference_events():
    [delivered] = mg.parse_event(DELIVERED)
    assert delivered == CallbackEvent(
        event_key="CPgfbmQMTCKtHW6uIWtuVe",
        kind="delivered",
        provider_message_id="20240601120000.1.ABCD@mg.example.ru",
        address="ivan@example.ru",
        occurred_at=datetime.fromtimestamp(1717000000.12, tz=UTC),
        send_id="d-123",
    )
    parsed = [
        mg.parse_event({"event-data": {**variant, "id": f"e{n}", "timestamp": 1717000000}})[0]
        for n, variant in enumerate(VARIANTS)
    ]
    assert [e.kind for e in parsed] == [
        "delivery_failed", "ignored", "complained", "opened", "clicked", "unsubscribed", "ignored"
    ]
    assert parsed[0].reason == "permanent bounce: 550 5.1.1 User unknown"
    assert parsed[0].provider_message_id == "m2@mg.example.ru"  # brackets stripped, as the send result has none
    assert parsed[1].reason == "temporary generic: 452 4.2.2 Mailbox full"
    assert parsed[4].reason == "https://ex.ru/sale" and parsed[6].reason == "accepted"


def test_event_without_id_is_refused():
    with pytest.raises(ValueError):
        mg.parse_event({"event-data": {"event": "delivered", "timestamp": 1717000000}})


# --- batch sending ---------------------------------------------------------------------------------


def newsletter(address: str, token: str, **fields: object) -> OutboundMessage:
    """A rendered campaign e-mail whose only personal part is its unsubscribe link (body and header)."""
    url = f"https://algor.example/u/{token}?l=promo&c=c1"
    body = {
        "text": f"Скидка 10%: https://ex.ru/sale\nОтписаться: {url}",
        "html": f'<html><head><style>a {{ color: red }}</style></head><body><a href="https://ex.ru/sale">Скидки</a> <a href="{html.escape(url)}">Отписаться</a></body></html>',
    }
    return email(address, unsubscribe_url=url, **(body | fields))


def test_a_batch_is_one_call_and_every_recipient_keeps_its_own_values(sandbox):
    msgs = [newsletter(f"deliver+b{n}@example.ru", f"tok{n}") for n in range(5)]
    results, calls = send_batch(sandbox, msgs)
    assert calls == 1
    assert all(r.ok for r in results) and len({r.provider_message_id for r in results}) == 1
    for msg, record in zip(msgs, records(sandbox, msgs), strict=True):
        assert record["variables"] == {"send_id": msg.send_id}
        assert record["provider_message_id"] == results[0].provider_message_id
        assert record["headers"] == {"List-Unsubscribe": f"<{msg.unsubscribe_url}>", "List-Unsubscribe-Post": "List-Unsubscribe=One-Click"}
        assert record["text"] == msg.text
        assert f'href="{msg.unsubscribe_url}"' in record["html"] and 'style="color: red;"' in record["html"]


def test_batch_callbacks_carry_each_recipients_send_id(sandbox, recorder):
    tag = uuid.uuid4().hex[:6]
    msgs = [newsletter(f"{outcome}+{tag}@example.ru", f"{outcome}{tag}") for outcome in ("click", "bounce", "complain")]
    results, calls = send_batch(sandbox, msgs, domain=DOMAIN)
    assert calls == 1 and all(r.ok for r in results)
    for msg, kinds in zip(msgs, (["delivered", "opened", "clicked"], ["delivery_failed"], ["delivered", "complained"]), strict=True):
        bodies = events_for(recorder, msg.send_id, len(kinds))
        assert all(mg.verify_webhook(body, SIGNING_KEY, now=time.time()) for body in bodies)
        events = [mg.parse_event(body)[0] for body in bodies]
        assert [e.kind for e in events] == kinds
        assert {(e.send_id, e.address, e.provider_message_id) for e in events} == {(msg.send_id, msg.address, results[0].provider_message_id)}


def test_batches_group_identical_content_and_split_repeated_addresses(sandbox):
    a, b = newsletter("deliver+ga@example.ru", "a"), newsletter("deliver+gb@example.ru", "b")
    other = newsletter("deliver+gc@example.ru", "c", subject="Другая тема")
    again = newsletter("Deliver+GA@example.ru", "a2")  # the same mailbox once more: never twice in one call
    results, calls = send_batch(sandbox, [a, other, b, again])
    assert calls == 3 and all(r.ok for r in results)
    ids = [r.provider_message_id for r in results]
    assert ids[0] == ids[2] and len({ids[0], ids[1], ids[3]}) == 3


def test_a_bad_address_in_a_batch_fails_only_itself(sandbox):
    msgs = [newsletter("deliver+ok1@example.ru", "ok1"), newsletter("not-an-address", "bad"), newsletter("deliver+ok2@example.ru", "ok2")]
    results, calls = send_batch(sandbox, msgs)
    assert calls == 1 + 3  # the batch's 400, then each message on its own
    assert [r.ok for r in results] == [True, False, True]
    assert (results[1].error_class, results[1].error) == ("rejected", "to parameter is not a valid address. please check documentation")


def test_more_than_1000_recipients(sandbox):
    form = [("from", SENDER), *(("to", f"deliver+{n}@example.ru") for n in range(1001)), ("subject", "s"), ("text", "t")]
    answer = httpx.post(f"{sandbox}/v3/{BULK}/messages", auth=("api", API_KEY), files=[(k, (None, v)) for k, v in form])
    assert (answer.status_code, answer.json()) == (400, {"message": "Too many recipients, max is 1000"})
    assert mg.classify(answer.status_code, answer.json()).error_class == "rejected"
    msgs = [newsletter(f"deliver+k{n}@example.ru", f"k{n}") for n in range(1001)]
    results, calls = send_batch(sandbox, msgs)
    assert calls == 2 and all(r.ok for r in results)
    assert len({r.provider_message_id for r in results[:1000]}) == 1 and results[1000].provider_message_id != results[0].provider_message_id
