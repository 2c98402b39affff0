"""VK connector and Callback API helpers, against the provider sandbox over real loopback HTTP."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
import uuid
from datetime import UTC, datetime

import httpx
import pytest

from resources.channels import vk
from resources.channels.base import Attachment, OutboundMessage, SendResult, TemplateRef
from resources.channels.vk import VkConnector
from sandbox.config import SandboxConfig, VkGroup
from sandbox.outcomes import outcome_for
from sandbox.server import running_sandbox

GROUP, TOKEN, SECRET = 1001, "vk1.a.community-token", "vk-callback-secret"
LIMITED, LIMITED_TOKEN = 1002, "vk1.a.limited"
DEAF, DEAF_TOKEN = 1003, "vk1.a.deaf-receiver"  # its receiver answers 200 but not "ok"
MAX_ATTEMPTS = 3

# Reference payloads (shared/reference/provider-protocols.md §2d).
MESSAGE_NEW = {"type": "message_new", "event_id": "a1b2c3", "v": "5.199", "group_id": 123, "secret": "s3cr3t", "object": {"message": {"date": 1717000000, "from_id": 555, "id": 0, "out": 0, "peer_id": 555, "text": "Привет", "conversation_message_id": 42, "payload": "{\"cmd\":\"sub\"}", "attachments": []}, "client_info": {"button_actions": ["text", "callback", "open_link"], "keyboard": True, "inline_keyboard": True, "carousel": True, "lang_id": 0}}}
ALLOW = {"type": "message_allow", "event_id": "a1b2c4", "v": "5.199", "group_id": 123, "secret": "s3cr3t", "object": {"user_id": 555, "key": "promo42"}}
DENY = {"type": "message_deny", "event_id": "a1b2c5", "v": "5.199", "group_id": 123, "secret": "s3cr3t", "object": {"user_id": 555}}
JOIN = {"type": "group_join", "event_id": "a1b2c6", "v": "5.199", "group_id": 123, "secret": "s3cr3t", "object": {"user_id": 555, "join_type": "join"}}
LEAVE = {"type": "group_leave", "event_id": "a1b2c7", "v": "5.199", "group_id": 123, "secret": "s3cr3t", "object": {"user_id": 555, "self": 1}}


def peer_with(outcome: str, skip: int = 0) -> str:
    """A peer id whose deterministic sandbox outcome is `outcome` (the `skip`-th such id)."""
    matches = (str(n) for n in range(300_000, 400_000) if outcome_for("vk", str(n)) == outcome)
    for _ in range(skip):
        next(matches)
    return next(matches)


DEDUP_IDS = itertools.count(1)  # what the send ledger would allocate: one number per send


def message(peer: str, text: str = "Привет", **fields: object) -> OutboundMessage:
    fields = {"dedup_id": next(DEDUP_IDS), **fields}
    return OutboundMessage(send_id=str(uuid.uuid4()), tenant="t1", campaign="c1", channel="vk", address=peer, text=text, **fields)


def connector(base_url: str, group: int = GROUP, token: str = TOKEN, **options: object) -> VkConnector:
    return VkConnector(base_url, group, token, **options)


def send(base_url: str, *messages: OutboundMessage, group: int = GROUP, token: str = TOKEN, version: str = vk.API_VERSION,
         **client_options: object) -> list[SendResult]:
    """Send each message in turn through one client (one connector), returning the results."""
    async def go() -> list[SendResult]:
        async with httpx.AsyncClient(**client_options) as client:
            conn = connector(base_url, group, token, api_version=version)
            return [await conn.send(client, msg) for msg in messages]

    return asyncio.run(go())


def received(base_url: str, peer: str) -> list[dict]:
    messages = httpx.get(f"{base_url}/_sandbox/messages", params={"provider": "vk"}).json()["messages"]
    return [m for m in messages if m["recipient"] == peer]


@pytest.fixture(scope="module")
def sandbox(receiver):
    recorder, url = receiver
    recorder.answer_with("/vk", "ok")
    config = SandboxConfig(
        vk=[
            VkGroup(group_id=GROUP, access_token=TOKEN, secret=SECRET, webhook_url=f"{url}/vk"),
            VkGroup(group_id=LIMITED, access_token=LIMITED_TOKEN, rate_limit_per_s=1),
            VkGroup(group_id=DEAF, access_token=DEAF_TOKEN, secret=SECRET, webhook_url=f"{url}/vk-deaf"),
        ],
        callback_delay_s=0.01,
        callback_backoff_s=0.01,
        callback_max_attempts=MAX_ATTEMPTS,
    )
    with running_sandbox(config) as base:
        yield base


# --- sending ----------------------------------------------------------------------------------------


def test_send_succeeds_with_keyboard_attachments_and_random_id(sandbox):
    peer = peer_with("deliver")
    msg = message(peer, "Скидка 10%", buttons=(("Да", "sub:yes"), ("Нет", "sub:no")),
                  attachments=(Attachment("photo", "photo-1001_456239017"), Attachment("document", "doc1001_789_ab12cd")))
    [result] = send(sandbox, msg)
    assert result.ok and result.provider_message_id.isdigit() and result.error_class is None
    [seen] = received(sandbox, peer)
    assert (seen["text"], seen["provider_message_id"], seen["account"]) == ("Скидка 10%", result.provider_message_id, str(GROUP))
    assert seen["random_id"] == msg.dedup_id
    assert seen["attachment"] == "photo-1001_456239017,doc1001_789_ab12cd"
    keyboard = seen["keyboard"]
    assert (keyboard["inline"], keyboard["one_time"]) == (True, False)
    assert [[button["action"]["type"] for button in row] for row in keyboard["buttons"]] == [["callback"], ["callback"]]
    first = keyboard["buttons"][0][0]["action"]
    assert first["label"] == "Да" and json.loads(first["payload"]) == {"cmd": "sub:yes", "sid": msg.send_id}


def test_same_send_twice_is_one_message_with_one_id(sandbox):
    peer = peer_with("deliver", skip=1)
    msg = message(peer, "Только один раз")
    first, second = send(sandbox, msg, msg)
    assert first.ok and second.ok and first.provider_message_id == second.provider_message_id
    assert len(received(sandbox, peer)) == 1


def test_ambiguous_timeout_then_resend_delivers_once(sandbox):
    peer = peer_with("deliver", skip=2)
    msg = message(peer)
    [lost] = send(sandbox, msg, headers={"X-Sandbox-Delay": "0.4"}, timeout=0.1)
    assert lost.error_class == "transient" and lost.may_have_been_accepted and "Timeout" in lost.error
    time.sleep(0.5)  # the delayed call is handled after all: VK took the message
    [retry] = send(sandbox, msg)
    assert retry.ok
    [seen] = received(sandbox, peer)
    assert seen["provider_message_id"] == retry.provider_message_id
    assert VkConnector.provider_deduplicates


def test_blocked_peer_is_unreachable(sandbox, recorder):
    peer = peer_with("blocked")
    [result] = send(sandbox, message(peer, buttons=(("Да", "sub:yes"),)))
    assert (result.ok, result.error_class) == (False, "unreachable")
    assert result.error == "901: Can't send messages for users without permission"
    time.sleep(0.1)
    assert not [r for r in recorder.received("/vk") if str(r.body["object"].get("user_id")) == peer]


@pytest.mark.parametrize(
    ("token", "version", "error"),
    [
        ("vk1.a.wrong", vk.API_VERSION, "5: User authorization failed: invalid access_token (4)."),
        (TOKEN, "", '8: Invalid request: v is required. Version param should be passed as "v". "version" param is invalid and not supported.'),
    ],
)
def test_bad_credentials_and_missing_version_are_rejected(sandbox, token, version, error):
    [result] = send(sandbox, message(peer_with("deliver")), token=token, version=version)
    assert (result.ok, result.error_class, result.error) == (False, "rejected", error)


def test_sandbox_rejects_what_vk_rejects(sandbox):
    base = {"access_token": TOKEN, "v": vk.API_VERSION, "peer_id": peer_with("deliver"), "random_id": "7", "message": "x"}
    cases = [
        ({"random_id": None}, 100, "One of the parameters specified was missing or invalid: random_id is a required parameter"),
        ({"message": None}, 100, "One of the parameters specified was missing or invalid: message is empty or invalid"),
        ({"attachment": "https://ex.ru/a.png"}, 100, "One of the parameters specified was missing or invalid: attachment is invalid"),
        ({"message": "я" * 4097}, 914, "Message is too long"),
        ({"keyboard": "{not json"}, 911, "Keyboard format is invalid"),
    ]
    for change, code, text in cases:
        form = {k: v for k, v in (base | change).items() if v is not None}
        error = httpx.post(f"{sandbox}/method/messages.send", data=form).json()["error"]
        assert (error["error_code"], error["error_msg"]) == (code, text)
        assert {"key": "access_token", "value": TOKEN} not in error["request_params"]
    unknown = httpx.post(f"{sandbox}/method/users.get", data={"access_token": TOKEN, "v": vk.API_VERSION}).json()
    assert unknown["error"]["error_code"] == 3


def test_validate_refuses_before_the_first_send(sandbox):
    conn = connector(sandbox)
    bad = [
        message("durov"),
        message("1", ""),
        message("1", "x" * 4097),
        message("1", attachments=(Attachment("photo", "https://ex.ru/a.png"),)),
        message("1", buttons=tuple((f"b{n}", f"d{n}") for n in range(7))),
        message("1", buttons=(("", "x"),)),
        message("1", buttons=(("Да", "x" * 250),)),
        message("1", template=TemplateRef("promo")),
    ]
    for msg in bad:
        with pytest.raises(ValueError):
            conn.validate(msg)
    before = len(httpx.get(f"{sandbox}/_sandbox/messages", params={"provider": "vk"}).json()["messages"])
    [result] = send(sandbox, message(peer_with("deliver"), attachments=(Attachment("photo", "https://ex.ru/a.png"),)))
    assert result.error_class == "rejected" and "photo-123_456" in result.error
    assert len(httpx.get(f"{sandbox}/_sandbox/messages", params={"provider": "vk"}).json()["messages"]) == before


def test_rate_limit_is_error_6_with_a_hint(sandbox):
    first, second = send(sandbox, message(peer_with("deliver")), message(peer_with("deliver", skip=1)),
                         group=LIMITED, token=LIMITED_TOKEN)
    assert first.ok
    assert (second.error_class, second.retry_after, second.error) == ("rate_limited", 1.0, "6: Too many requests per second")
    assert httpx.get(f"{sandbox}/_sandbox/stats").json()["providers"]["vk"]["limit_violations"] >= 1


def test_forced_5xx_and_timeout_are_transient(sandbox):
    [fault] = send(sandbox, message(peer_with("deliver")), headers={"X-Sandbox-Fault": "502"})
    assert (fault.error_class, fault.error, fault.may_have_been_accepted) == ("transient", "HTTP 502", False)
    [slow] = send(sandbox, message(peer_with("deliver")), headers={"X-Sandbox-Delay": "0.3"}, timeout=0.05)
    assert slow.error_class == "transient" and slow.may_have_been_accepted


# --- callbacks -------------------------------------------------------------------------------------


def test_button_press_arrives_verifies_and_names_our_send(sandbox, recorder):
    peer = peer_with("click")
    msg = message(peer, "Подписаться?", buttons=(("Да", "sub:yes"), ("Нет", "sub:no")))
    [result] = send(sandbox, msg)
    assert result.ok
    [event] = recorder.wait_for("/vk", 1, where=lambda body: body["object"].get("user_id") == int(peer))
    body = event.body
    assert (body["type"], body["group_id"], body["v"]) == ("message_event", GROUP, "5.199")
    assert vk.verify_webhook(body, SECRET) and vk.verify_webhook(body, SECRET, group_id=GROUP)
    assert not vk.verify_webhook(body, "other-secret") and not vk.verify_webhook(body, SECRET, group_id=GROUP + 1)
    [parsed] = vk.parse_event(body)
    assert (parsed.kind, parsed.reason, parsed.send_id, parsed.address) == ("clicked", "sub:yes", msg.send_id, peer)
    assert parsed.event_key == body["event_id"] == vk.event_key(body)


@pytest.mark.parametrize(("outcome", "event_type", "kind"), [("stop", "message_new", "opt_out"), ("deny", "message_deny", "opt_out")])
def test_stop_reply_and_revoked_permission_are_opt_outs(sandbox, recorder, outcome, event_type, kind):
    peer = int(peer_with(outcome))
    assert send(sandbox, message(str(peer)))[0].ok

    def about_peer(body: dict) -> bool:
        obj = body["object"]
        return obj.get("user_id") == peer or obj.get("message", {}).get("from_id") == peer

    [event] = recorder.wait_for("/vk", 1, where=about_peer)
    assert event.body["type"] == event_type and vk.verify_webhook(event.body, SECRET)
    [parsed] = vk.parse_event(event.body)
    assert (parsed.kind, parsed.address) == (kind, str(peer))


def test_event_not_answered_ok_is_redelivered_with_retry_counter(sandbox, recorder):
    peer = int(peer_with("deny", skip=1))
    assert send(sandbox, message(str(peer)), group=DEAF, token=DEAF_TOKEN)[0].ok
    deadline = time.monotonic() + 5
    while len(attempts := [r for r in recorder.received("/vk-deaf") if r.body["object"]["user_id"] == peer]) < MAX_ATTEMPTS:
        assert time.monotonic() < deadline, f"{len(attempts)} deliveries"
        time.sleep(0.02)
    assert len({a.body["event_id"] for a in attempts}) == 1  # the same event, re-delivered
    assert [a.headers.get("x-retry-counter") for a in attempts] == [None, "1", "2"]


# --- parsing and classification (no network) --------------------------------------------------------


def test_parse_reference_events():
    received_at = datetime(2026, 1, 2, tzinfo=UTC)
    events = [vk.parse_event(payload, received_at=received_at)[0] for payload in (MESSAGE_NEW, ALLOW, DENY, JOIN, LEAVE)]
    assert [(e.event_key, e.kind, e.address) for e in events] == [
        ("a1b2c3", "ignored", "555"),
        ("a1b2c4", "opt_in", "555"),
        ("a1b2c5", "opt_out", "555"),
        ("a1b2c6", "joined", "555"),  # joining the community asks for no messages
        ("a1b2c7", "opt_out", "555"),
    ]
    assert events[0].occurred_at == datetime.fromtimestamp(1717000000, tz=UTC)
    assert events[1].occurred_at == received_at and events[1].reason == "message_allow key=promo42"
    assert events[1].ref == "promo42"
    assert events[3].reason == "group_join (join)" and events[4].reason == "group_leave: left"
    kicked = {**LEAVE, "object": {"user_id": 555, "self": 0}}
    assert vk.parse_event(kicked)[0].reason == "group_leave: removed by an admin"


@pytest.mark.parametrize(("text", "kind"), [("стоп", "opt_out"), ("СТОП!", "opt_out"), (" Stop ", "opt_out"), ("стоп-кран", "ignored")])
def test_stop_words(text, kind):
    payload = {**MESSAGE_NEW, "object": {"message": {**MESSAGE_NEW["object"]["message"], "text": text}}}
    assert vk.parse_event(payload)[0].kind == kind


def test_unknown_events_and_fields_are_ignored_and_missing_ids_refused():
    odd = {"type": "wall_post_new", "event_id": "z9", "group_id": 1, "object": {"id": 5}, "brand_new": [1]}
    assert [(e.kind, e.reason) for e in vk.parse_event(odd)] == [("ignored", "wall_post_new")]
    press = {"type": "message_event", "event_id": "z8", "object": {"user_id": 7, "payload": "{\"cmd\":\"x\"}"}}
    assert (vk.parse_event(press)[0].reason, vk.parse_event(press)[0].send_id) == ("x", None)  # a string payload works too
    with pytest.raises(ValueError):
        vk.parse_event({"type": "message_deny", "object": {"user_id": 1}})


def test_confirmation_and_verification():
    confirmation = {"type": "confirmation", "group_id": 123}
    assert vk.confirmation_answer(confirmation, "d8v2ve07") == "d8v2ve07"
    assert vk.confirmation_answer(DENY, "d8v2ve07") is None
    assert vk.verify_webhook(DENY, "s3cr3t") and vk.verify_webhook(DENY, "s3cr3t", group_id=123)
    assert not vk.verify_webhook(DENY, "") and not vk.verify_webhook(DENY, "s3cr3t!")
    assert not vk.verify_webhook({k: v for k, v in DENY.items() if k != "secret"}, "s3cr3t")


@pytest.mark.parametrize(
    ("code", "error_class", "retry_after"),
    [(6, "rate_limited", 1.0), (9, "rate_limited", 10.0), (29, "rate_limited", 3600.0), (18, "unreachable", None),
     (900, "unreachable", None), (901, "unreachable", None), (902, "unreachable", None), (1, "transient", None),
     (10, "transient", None), (5, "rejected", None), (7, "rejected", None), (15, "rejected", None), (27, "rejected", None),
     (100, "rejected", None), (911, "rejected", None)],
)
def test_classify_error_codes(code, error_class, retry_after):
    result = vk.classify(200, {"error": {"error_code": code, "error_msg": "…"}})
    assert (result.ok, result.error_class, result.retry_after) == (False, error_class, retry_after)


def test_classify_captcha_5xx_and_garbage():
    captcha = vk.classify(200, {"error": {"error_code": 14, "error_msg": "Captcha needed", "captcha_sid": "1"}})
    assert captcha.error_class == "rejected" and "captcha" in captcha.error
    assert vk.classify(502, {}).error_class == "transient"
    assert vk.classify(200, {"response": True}).error_class == "transient"
    assert vk.classify(200, {"response": 77}) == SendResult(ok=True, provider_message_id="77")


def test_random_id_is_the_ledger_dedup_id_and_never_made_up(sandbox):
    peer = peer_with("deliver", skip=3)
    missing, zero, too_big = send(sandbox, message(peer, dedup_id=None), message(peer, dedup_id=0), message(peer, dedup_id=2**31))
    assert (missing.ok, missing.error_class) == (False, "rejected") and "dedup_id" in missing.error
    assert zero.error_class == too_big.error_class == "rejected" and "random_id range" in too_big.error
    assert received(sandbox, peer) == []  # refused before any request
    assert VkConnector.ledger_dedup_ids
