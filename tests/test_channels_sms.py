"""SMS: segment counting, and the SMSC.ru and SMS.ru connectors against the provider sandbox over loopback HTTP."""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid
from datetime import UTC, datetime

import httpx
import pytest

from policies.sms_segments import (
    MAX_SEGMENTS,
    SegmentInfo,
    segments,
    validate_length,
)
from resources.channels import smsc, smsru
from resources.channels.base import Attachment, OutboundMessage, SendResult
from resources.channels.smsc import SmscConnector
from resources.channels.smsru import SmsRuConnector
from sandbox.config import SandboxConfig, SmscAccount, SmsRuAccount
from sandbox.outcomes import outcome_for
from sandbox.server import running_sandbox

LOGIN, PASSWORD = "algor", "smsc-password-1"
LIMITED_LOGIN = "algor-limited"
API_ID, LIMITED_API_ID, DEAF_API_ID = "A1B2C3D4-0000-1111-2222-333344445555", "limited-api-id", "deaf-api-id"
MAX_ATTEMPTS = 3


def phone_with(outcome: str, skip: int = 0) -> str:
    """An E.164 number whose deterministic SMS outcome is `outcome` (the same at SMSC and SMS.ru)."""
    matches = (f"+7916{n:07d}" for n in range(1_000_000) if outcome_for("smsc", f"7916{n:07d}") == outcome)
    for _ in range(skip):
        next(matches)
    return next(matches)


def sms(phone: str, text: str = "Скидка 10% до воскресенья", **fields: object) -> OutboundMessage:
    return OutboundMessage(send_id=str(uuid.uuid4()), tenant="t1", campaign="c1", channel="sms", address=phone, text=text, **fields)


def run(base_url: str, make, *messages: OutboundMessage, **client_options: object) -> list[SendResult]:
    """Send each message in turn through one connector built by `make(base_url)`."""
    async def go() -> list[SendResult]:
        async with httpx.AsyncClient(**client_options) as client:
            conn = make(base_url)
            return [await conn.send(client, msg) for msg in messages]

    return asyncio.run(go())


def via_smsc(login: str = LOGIN, password: str = PASSWORD):
    return lambda base: SmscConnector(base, login, password, sender="Algor")


def via_smsru(api_id: str = API_ID):
    return lambda base: SmsRuConnector(base, api_id)


def received(base_url: str, provider: str, phone: str) -> list[dict]:
    messages = httpx.get(f"{base_url}/_sandbox/messages", params={"provider": provider}).json()["messages"]
    return [m for m in messages if m["recipient"] == smsc.phone_digits(phone)]


@pytest.fixture(scope="module")
def sandbox(receiver):
    recorder, url = receiver
    recorder.answer_with("/smsru", "100")
    config = SandboxConfig(
        smsc=[
            SmscAccount(login=LOGIN, password=PASSWORD, webhook_url=f"{url}/smsc"),
            SmscAccount(login=LIMITED_LOGIN, password=PASSWORD, rate_limit_per_s=1),
        ],
        smsru=[
            SmsRuAccount(api_id=API_ID, webhook_url=f"{url}/smsru"),
            SmsRuAccount(api_id=LIMITED_API_ID, rate_limit_per_s=1),
            SmsRuAccount(api_id=DEAF_API_ID, webhook_url=f"{url}/smsru-deaf"),
        ],
        callback_delay_s=0.01,
        callback_backoff_s=0.01,
        callback_max_attempts=MAX_ATTEMPTS,
    )
    with running_sandbox(config) as base:
        yield base


# --- segments -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "encoding", "units", "parts"),
    [
        ("a" * 160, "GSM-7", 160, 1),
        ("a" * 161, "GSM-7", 161, 2),
        ("a" * 306, "GSM-7", 306, 2),
        ("a" * 307, "GSM-7", 307, 3),
        ("я" * 70, "UCS-2", 70, 1),
        ("я" * 71, "UCS-2", 71, 2),
        ("я" * 134, "UCS-2", 134, 2),
        ("я" * 135, "UCS-2", 135, 3),
        ("€" * 80, "GSM-7", 160, 1),
        ("[" * 81, "GSM-7", 162, 2),
        ("Цена 100 €", "UCS-2", 10, 1),  # Cyrillic forces UCS-2, where € is one unit
        ("a" * 152 + "€", "GSM-7", 154, 1),
        ("a" * 152 + "€" + "a" * 7, "GSM-7", 161, 2),  # the escape pair does not straddle parts
        ("😀" * 35, "UCS-2", 70, 1),
        ("😀" * 36, "UCS-2", 72, 2),
        ("", "GSM-7", 0, 1),
    ],
)
def test_segments(text, encoding, units, parts):
    assert segments(text) == SegmentInfo(encoding, units, parts)


def test_escape_pairs_are_never_split():
    # 152 plain characters, then 10 "€": the first € would straddle 153, so part one ends at 152
    assert segments("a" * 152 + "€" * 10).segments == 2
    assert segments("a" * 153 + "€" * 76).segments == 2  # 153 + 152 units
    assert segments("a" * 152 + "€" * 77).segments == 3  # 306 units, yet a third part: ceil(306 / 153) would say 2


def test_validate_length_names_the_counts():
    assert validate_length("я" * 67 * MAX_SEGMENTS).segments == MAX_SEGMENTS
    with pytest.raises(ValueError, match=r"needs 7 segments \(UCS-2, 403 units\); the limit is 6"):
        validate_length("я" * (67 * MAX_SEGMENTS + 1))
    with pytest.raises(ValueError, match="the limit is 1"):
        validate_length("a" * 161, max_segments=1)


# --- SMSC.ru: sending -----------------------------------------------------------------------------------


def test_smsc_send_succeeds_and_the_status_callback_verifies(sandbox, recorder):
    phone = phone_with("deliver")
    msg = sms(phone)
    [result] = run(sandbox, via_smsc(), msg)
    digits = smsc.phone_digits(phone)
    assert result == SendResult(ok=True, provider_message_id=f"{smsc.smsc_id_for(msg.send_id)}:{digits}")
    [seen] = received(sandbox, "smsc", phone)
    assert (seen["text"], seen["provider_message_id"], seen["account"], seen["parts"]) == (msg.text, result.provider_message_id, LOGIN, 1)
    [callback] = recorder.wait_for("/smsc", 1, where=lambda form: form["phone"] == digits)
    form = callback.body
    assert form["md5"] == hashlib.md5(f"{form['id']}:{digits}:1:{PASSWORD}".encode()).hexdigest()
    assert smsc.verify_webhook(form, PASSWORD) and not smsc.verify_webhook(form, "wrong") and not smsc.verify_webhook(form, "")
    assert not smsc.verify_webhook({**form, "status": "20"}, PASSWORD)  # a forged status breaks the signature
    [event] = smsc.parse_status(form)
    assert (event.kind, event.provider_message_id, event.address) == ("delivered", result.provider_message_id, digits)
    assert event.event_key == smsc.event_key(form) == f"{form['id']}:{digits}:1"


def test_smsc_repeated_send_is_answered_by_error_9_and_sends_once(sandbox):
    phone = phone_with("deliver", skip=1)
    msg = sms(phone)
    first, second = run(sandbox, via_smsc(), msg, msg)
    assert first.ok and second.ok and first.provider_message_id == second.provider_message_id
    assert second.error.startswith("9: duplicate request") and first.error is None
    assert len(received(sandbox, "smsc", phone)) == 1
    other = sms(phone, msg.text)  # another send with the same text is another request: not a duplicate
    [third] = run(sandbox, via_smsc(), other)
    assert third.ok and third.provider_message_id != first.provider_message_id and third.error is None


def test_smsc_ambiguous_timeout_then_resend_sends_once(sandbox):
    phone = phone_with("deliver", skip=2)
    msg = sms(phone)
    [lost] = run(sandbox, via_smsc(), msg, headers={"X-Sandbox-Delay": "0.3"}, timeout=0.05)
    assert lost.error_class == "transient" and lost.may_have_been_accepted
    time.sleep(0.4)
    [retry] = run(sandbox, via_smsc(), msg)
    assert retry.ok and retry.provider_message_id == f"{smsc.smsc_id_for(msg.send_id)}:{smsc.phone_digits(phone)}"
    assert len(received(sandbox, "smsc", phone)) == 1


def test_smsc_failure_classes(sandbox):
    [no_route] = run(sandbox, via_smsc(), sms(phone_with("no_route")))
    assert (no_route.error_class, no_route.error) == ("unreachable", "8: message couldn't be delivered")
    [bad_login] = run(sandbox, via_smsc(password="nope"), sms(phone_with("deliver")))
    assert (bad_login.error_class, bad_login.error) == ("rejected", "2: authorise error")
    first, limited = run(sandbox, via_smsc(login=LIMITED_LOGIN), sms(phone_with("deliver")), sms(phone_with("deliver", skip=1)))
    assert first.ok and (limited.error_class, limited.retry_after, limited.error) == ("rate_limited", 60.0, "4: IP temporarily blocked")
    [fault] = run(sandbox, via_smsc(), sms(phone_with("deliver")), headers={"X-Sandbox-Fault": "503"})
    assert (fault.error_class, fault.error) == ("transient", "HTTP 503")


def test_smsc_validate_refuses_before_the_first_send(sandbox):
    conn = SmscConnector(sandbox, LOGIN, PASSWORD)
    for bad in (sms("12345"), sms("+79161234567", ""), sms("+79161234567", "я" * 403),
                sms("+79161234567", buttons=(("Да", "y"),)), sms("+79161234567", attachments=(Attachment("photo", "https://x/p.png"),))):
        with pytest.raises(ValueError):
            conn.validate(bad)
    [result] = run(sandbox, via_smsc(), sms(phone_with("deliver"), "я" * 403))
    assert result.error_class == "rejected" and "segments" in result.error


def test_smsc_sandbox_rejects_what_smsc_rejects(sandbox):
    auth = {"login": LOGIN, "psw": hashlib.md5(PASSWORD.encode()).hexdigest(), "fmt": "3"}  # the MD5 of the password works too
    phone = smsc.phone_digits(phone_with("deliver", skip=3))
    assert httpx.post(f"{sandbox}/sys/send.php", data=auth | {"phones": phone}).json() == {"error": "parameters error", "error_code": 1}
    assert httpx.post(f"{sandbox}/sys/send.php", data=auth | {"phones": "12", "mes": "x", "id": "77"}).json() == {
        "error": "invalid phone", "error_code": 7, "id": 77}  # errors about the message name it
    assert httpx.post(f"{sandbox}/sys/send.php", data=auth | {"phones": phone, "mes": "x", "id": "2147483648"}).json()["error_code"] == 1
    costly = httpx.get(f"{sandbox}/sys/send.php", params=auth | {"phones": phone, "mes": "a" * 200, "cost": "3"}).json()
    assert costly["cnt"] == 2 and {"id", "cost", "balance"} <= costly.keys()


@pytest.mark.parametrize(
    ("outcome", "status", "err", "category"),
    [("stoplist", "23", "250", "stop-list"), ("undeliverable", "20", "1", "unreachable"), ("expired", "3", "6", "transient")],
)
def test_smsc_failed_deliveries_arrive_as_status_callbacks(sandbox, recorder, outcome, status, err, category):
    phone = phone_with(outcome)
    [result] = run(sandbox, via_smsc(), sms(phone))
    assert result.ok  # SMSC takes the message; the failure comes later
    digits = smsc.phone_digits(phone)
    [callback] = recorder.wait_for("/smsc", 1, where=lambda form: form["phone"] == digits)
    assert (callback.body["status"], callback.body["err"]) == (status, err) and smsc.verify_webhook(callback.body, PASSWORD)
    [event] = smsc.parse_status(callback.body)
    assert event.kind == "delivery_failed" and event.reason.startswith(f"{category}: status {status}")
    assert event.provider_message_id == result.provider_message_id


@pytest.mark.parametrize(
    ("outcome", "reachable", "reason"),
    [("deliver", True, "status 1 (delivered)"), ("undeliverable", False, "status 20 (cannot deliver), err 1 (subscriber does not exist)"),
     ("expired", None, "status 20 (cannot deliver), err 6 (subscriber offline)"), ("no_route", False, "HLR request refused: 8: message couldn't be delivered")],
)
def test_smsc_hlr_check(sandbox, outcome, reachable, reason):
    async def go() -> smsc.ReachabilityResult:
        async with httpx.AsyncClient() as client:
            return await SmscConnector(sandbox, LOGIN, PASSWORD).hlr_check(client, phone_with(outcome, skip=4), interval_s=0.01)

    result = asyncio.run(go())
    assert (result.reachable, result.reason) == (reachable, reason)
    assert ("imsi" in result.network) is (reachable is True)


def test_smsc_status_callback_parsing_tolerates_shapes():
    form = {"id": "77", "phone": "79161234567", "status": "1", "err": "0", "ts": "1717000000", "new_field": "x"}
    signed = form | {"sha1": hashlib.sha1(f"77:79161234567:1:{PASSWORD}".encode()).hexdigest().upper()}
    assert smsc.verify_webhook(signed, PASSWORD) and not smsc.verify_webhook(form, PASSWORD)
    as_lists = {name: [value] for name, value in signed.items()}  # parse_qs output
    assert smsc.verify_webhook(as_lists, PASSWORD) and smsc.parse_status(as_lists) == smsc.parse_status(signed)
    [event] = smsc.parse_status(form)
    assert event.occurred_at == datetime.fromtimestamp(1717000000, tz=UTC)
    assert [smsc.parse_status(form | {"status": s})[0].kind for s in ("0", "-1", "2", "4", "25")] == [
        "ignored", "ignored", "opened", "clicked", "delivery_failed"]
    stop = smsc.parse_status({"id": "9", "phone": "+7 916 123-45-67", "mes": "Стоп"})[0]
    assert (stop.kind, stop.address, stop.event_key) == ("opt_out", "79161234567", "in:9:79161234567")
    with pytest.raises(ValueError):
        smsc.event_key({"id": "1"})


@pytest.mark.parametrize(
    ("body", "error_class", "retry_after"),
    [({"error": "x", "error_code": 1}, "rejected", None), ({"error": "x", "error_code": 3}, "rejected", None),
     ({"error": "x", "error_code": 5}, "rejected", None), ({"error": "x", "error_code": 6}, "rejected", None),
     ({"error": "x", "error_code": 7}, "unreachable", None), ({"error": "x", "error_code": 8}, "unreachable", None),
     ({"error": "x", "error_code": 4}, "rate_limited", 60.0), ({}, "transient", None)],
)
def test_smsc_classify(body, error_class, retry_after):
    result = smsc.classify(200, body, 5, "79161234567")
    assert (result.ok, result.error_class, result.retry_after) == (False, error_class, retry_after)
    assert smsc.classify(200, {"error": "duplicate", "error_code": 9}, 5, "7916") == SendResult(
        ok=True, provider_message_id="5:7916", error="9: duplicate (already sent)")
    assert smsc.classify(200, {"error": "duplicate", "error_code": 9}).error_class == "rate_limited"  # not ours to claim


# --- SMS.ru -----------------------------------------------------------------------------------------------


def test_smsru_send_succeeds_and_the_callback_wants_100(sandbox, recorder):
    phone = phone_with("deliver")
    [result] = run(sandbox, via_smsru(), sms(phone))
    assert result.ok and len(result.provider_message_id) == 15
    [seen] = received(sandbox, "smsru", phone)
    assert (seen["provider_message_id"], seen["account"]) == (result.provider_message_id, API_ID)
    [callback] = recorder.wait_for("/smsru", 1, where=lambda form: result.provider_message_id in form["data[0]"])
    [event] = smsru.parse_callback(callback.body)
    assert (event.kind, event.provider_message_id, event.event_key) == ("delivered", result.provider_message_id, f"{result.provider_message_id}:103")
    assert smsru.event_key(callback.body) == event.event_key
    assert not SmsRuConnector.provider_deduplicates


@pytest.mark.parametrize(("outcome", "code"), [("stoplist", 209), ("no_route", 207)])
def test_smsru_per_number_refusals_are_unreachable(sandbox, outcome, code):
    [result] = run(sandbox, via_smsru(), sms(phone_with(outcome)))
    assert result.error_class == "unreachable" and result.error.startswith(f"{code}: ")


@pytest.mark.parametrize(("outcome", "code", "reason"), [("undeliverable", 108, "failed: 108 (rejected)"), ("expired", 104, "transient: 104 (expired (TTL))")])
def test_smsru_failed_deliveries(sandbox, recorder, outcome, code, reason):
    [result] = run(sandbox, via_smsru(), sms(phone_with(outcome)))
    assert result.ok
    [callback] = recorder.wait_for("/smsru", 1, where=lambda form: result.provider_message_id in form["data[0]"])
    [event] = smsru.parse_callback(callback.body)
    assert (event.kind, event.reason, event.event_key) == ("delivery_failed", reason, f"{result.provider_message_id}:{code}")


def test_smsru_failure_classes(sandbox):
    [bad] = run(sandbox, via_smsru("wrong-api-id"), sms(phone_with("deliver")))
    assert (bad.error_class, bad.error) == ("rejected", "200: Неправильный api_id")
    first, limited = run(sandbox, via_smsru(LIMITED_API_ID), sms(phone_with("deliver")), sms(phone_with("deliver", skip=1)))
    assert first.ok and (limited.error_class, limited.retry_after) == ("rate_limited", 3600.0) and limited.error.startswith("206: ")
    [fault] = run(sandbox, via_smsru(), sms(phone_with("deliver")), headers={"X-Sandbox-Fault": "500"})
    assert (fault.error_class, fault.error) == ("transient", "HTTP 500")
    [slow] = run(sandbox, via_smsru(), sms(phone_with("deliver")), headers={"X-Sandbox-Delay": "0.3"}, timeout=0.05)
    assert slow.error_class == "transient" and slow.may_have_been_accepted


def test_smsru_callback_not_answered_100_is_retried(sandbox, recorder):
    [result] = run(sandbox, via_smsru(DEAF_API_ID), sms(phone_with("deliver", skip=5)))
    deadline = time.monotonic() + 5
    while len(attempts := [r for r in recorder.received("/smsru-deaf") if result.provider_message_id in r.body["data[0]"]]) < MAX_ATTEMPTS:
        assert time.monotonic() < deadline, f"{len(attempts)} deliveries"
        time.sleep(0.02)
    assert all(a.status == 200 for a in attempts)  # 2xx is not enough: SMS.ru wants the body "100"


def test_smsru_sandbox_answers_like_smsru(sandbox):
    phone = smsc.phone_digits(phone_with("deliver", skip=6))
    stop = smsc.phone_digits(phone_with("stoplist", skip=1))
    mixed = httpx.post(f"{sandbox}/sms/send", data={"api_id": API_ID, "to": f"{phone},{stop}", "msg": "Привет", "json": "1"}).json()
    assert (mixed["status"], mixed["status_code"]) == ("OK", 100)  # the top level is OK although one number failed
    assert mixed["sms"][phone]["status"] == "OK" and mixed["sms"][stop]["status_code"] == 209
    plain = httpx.post(f"{sandbox}/sms/send", data={"api_id": API_ID, "to": phone, "msg": "Привет"}).text.split("\n")
    assert plain[0] == "100" and plain[-1].startswith("balance=")
    too_long = httpx.post(f"{sandbox}/sms/send", data={"api_id": API_ID, "to": phone, "msg": "я" * 600, "json": "1"}).json()
    assert (too_long["status"], too_long["status_code"]) == ("ERROR", 205)
    login = httpx.post(f"{sandbox}/sms/send", data={"login": "x", "password": "y", "to": phone, "msg": "x", "json": "1"}).json()
    assert login["status_code"] == 301


@pytest.mark.parametrize(
    ("body", "error_class"),
    [({"status": "OK", "status_code": 100, "sms": {"79161234567": {"status": "ERROR", "status_code": 215, "status_text": "spam"}}}, "unreachable"),
     ({"status": "OK", "status_code": 100, "sms": {"79161234567": {"status": "ERROR", "status_code": 202}}}, "unreachable"),
     ({"status": "OK", "status_code": 100, "sms": {"79161234567": {"status": "ERROR", "status_code": 230}}}, "rate_limited"),
     ({"status": "OK", "status_code": 100, "sms": {"79161234567": {"status": "ERROR", "status_code": 505}}}, "rate_limited"),
     ({"status": "OK", "status_code": 100, "sms": {"79161234567": {"status": "ERROR", "status_code": 216}}}, "rejected"),
     ({"status": "OK", "status_code": 100, "sms": {}}, "transient"),
     ({"status": "ERROR", "status_code": 201, "status_text": "no money"}, "rejected"),
     ({"status": "ERROR", "status_code": 204}, "rejected"),
     ({"status": "ERROR", "status_code": 220}, "transient"),
     ({"status": "ERROR", "status_code": 500}, "transient"),
     ({"unexpected": True}, "transient")],
)
def test_smsru_classify(body, error_class):
    assert smsru.classify(200, body, "79161234567").error_class == error_class


def test_smsru_callback_records_in_every_form_shape():
    first, second = "sms_status\n000000-10000001\n102\n1717000000", "sms_status\n000000-10000001\n103\n1717000060"
    shapes = [
        {"data[0]": first, "data[1]": second},
        {"data[1]": second, "data[0]": first},  # index order, not arrival order
        {"data[]": [first, second]},
        [("data[]", first), ("data[]", second)],
        {"data": [first, second]},
    ]
    for shape in shapes:
        events = smsru.parse_callback(shape)
        assert [(e.event_key, e.kind) for e in events] == [("000000-10000001:102", "ignored"), ("000000-10000001:103", "delivered")]
        assert events[1].occurred_at == datetime.fromtimestamp(1717000060, tz=UTC)
        assert smsru.event_key(shape) == "000000-10000001:102,000000-10000001:103"
    read, odd = smsru.parse_callback({"data[0]": "sms_status\r\n1-2\r\n110", "data[1]": "callback_test\nhello"})
    assert (read.kind, read.reason, odd.kind, odd.event_key) == ("opened", "read", "ignored", "callback_test:hello")
    no_route = smsru.parse_callback({"data[0]": "sms_status\n1-3\n150"})[0]
    assert no_route.reason == "unreachable: 150 (no route)"
    with pytest.raises(ValueError):
        smsru.event_key({"other": "x"})
    assert smsru.verify_path_secret("s3cret-path", "s3cret-path") and not smsru.verify_path_secret("x", "s3cret-path")
    assert not smsru.verify_path_secret("", "")
