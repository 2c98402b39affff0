"""WhatsApp (and Twilio SMS) connectors and webhook helpers — Twilio, 360dialog, GREEN-API — against the
provider sandbox over real loopback HTTP, plus the providers' published signature vectors."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from starlette.datastructures import FormData

from resources.channels import d360 as dd
from resources.channels import greenapi as ga
from resources.channels import twilio as tw
from resources.channels.base import Attachment, OutboundMessage, SendResult, TemplateRef
from resources.channels.d360 import D360Connector
from resources.channels.greenapi import GreenApiConnector
from resources.channels.twilio import TwilioConnector
from sandbox.config import D360Account, GreenApiInstance, SandboxConfig, TwilioAccount
from sandbox.outcomes import outcome_for
from sandbox.server import running_sandbox

TW_SID, TW_TOKEN = "AC" + "1" * 32, "tw-auth-token"
TW_LIMITED_SID, TW_LIMITED_TOKEN = "AC" + "2" * 32, "tw-limited"
TW_SENDER = "+14155238886"
D360_KEY, D360_LIMITED = "d360-key-1", "d360-key-limited"
D360_HEADERS = {"Authorization": "d360-hook-secret"}
GA_ID, GA_TOKEN, GA_SECRET = 7103000001, "ga-api-token", "ga-hook-secret"
GA_LIMITED = 7103000002
YELLOW = "+79990000001"


def phone_with(provider: str, outcome: str, skip: int = 0) -> str:
    """An E.164 number whose deterministic sandbox outcome at `provider` is `outcome`."""
    matches = (f"+7916{n:07d}" for n in range(1, 100_000) if outcome_for(provider, f"+7916{n:07d}") == outcome)
    for _ in range(skip):
        next(matches)
    return next(matches)


def message(address: str, text: str = "Привет", **fields: Any) -> OutboundMessage:
    return OutboundMessage(
        send_id=str(uuid.uuid4()), tenant="t1", campaign="c1", channel="whatsapp", address=address, text=text, **fields
    )


def send(connector: Any, msg: OutboundMessage, **client_options: Any) -> SendResult:
    async def go() -> SendResult:
        async with httpx.AsyncClient(**client_options) as client:
            return await connector.send(client, msg)

    return asyncio.run(go())


def sent_to(sandbox: str, provider: str, provider_id: str) -> dict[str, Any]:
    messages = httpx.get(f"{sandbox}/_sandbox/messages", params={"provider": provider}).json()["messages"]
    return next(m for m in messages if m["provider_message_id"] == provider_id)


@pytest.fixture(scope="module")
def urls(receiver):
    hook = receiver[1]
    config = SandboxConfig(
        twilio=[
            TwilioAccount(account_sid=TW_SID, auth_token=TW_TOKEN, webhook_url=f"{hook}/tw", inbound_url=f"{hook}/tw-in"),
            TwilioAccount(account_sid=TW_LIMITED_SID, auth_token=TW_LIMITED_TOKEN, rate_limit_per_s=1),
        ],
        d360=[
            D360Account(api_key=D360_KEY, webhook_url=f"{hook}/d360", webhook_headers=D360_HEADERS),
            D360Account(api_key=D360_LIMITED, rate_limit_per_s=1),
        ],
        greenapi=[
            GreenApiInstance(
                id_instance=GA_ID,
                api_token=GA_TOKEN,
                webhook_url=f"{hook}/ga",
                webhook_token=GA_SECRET,
                yellow_card_recipients=[YELLOW],
            ),
            GreenApiInstance(id_instance=GA_LIMITED, api_token="ga-limited", rate_limit_per_s=1),
        ],
        callback_delay_s=0.01,
        callback_backoff_s=0.01,
    )
    with running_sandbox(config) as url:
        yield url, hook


@pytest.fixture(scope="module")
def sandbox(urls):
    return urls[0]


def twilio(sandbox: str, **options: Any) -> TwilioConnector:
    return TwilioConnector(sandbox, options.pop("sid", TW_SID), options.pop("token", TW_TOKEN), TW_SENDER, **options)


# ================================================ Twilio ===============================================


def twilio_callbacks(recorder, path: str, sid: str, count: int) -> list:
    return recorder.wait_for(path, count, where=lambda body: body.get("MessageSid") == sid)


def test_twilio_whatsapp_send_callbacks_verify_and_parse(urls, recorder):
    sandbox, hook = urls
    to = phone_with("twilio", "read")
    result = send(twilio(sandbox, status_callback=f"{hook}/tw-cb"), message(to, "Скидка 10%"))
    assert result.ok and result.provider_message_id.startswith("SM") and len(result.provider_message_id) == 34
    stored = sent_to(sandbox, "twilio", result.provider_message_id)
    assert (stored["recipient"], stored["channel"], stored["text"], stored["sender"]) == (
        to, "whatsapp", "Скидка 10%", f"whatsapp:{TW_SENDER}"
    )
    callbacks = twilio_callbacks(recorder, "/tw-cb", result.provider_message_id, 3)  # the per-message StatusCallback
    for callback in callbacks:
        assert callback.headers["content-type"].startswith("application/x-www-form-urlencoded")
        assert tw.verify_webhook(f"{hook}/tw-cb", callback.body, callback.headers["x-twilio-signature"], TW_TOKEN)
        assert not tw.verify_webhook(f"{hook}/tw", callback.body, callback.headers["x-twilio-signature"], TW_TOKEN)
        assert not tw.verify_webhook(f"{hook}/tw-cb", callback.body, callback.headers["x-twilio-signature"], "other")
        assert not tw.verify_webhook(
            f"{hook}/tw-cb", {**callback.body, "MessageStatus": "read"} if callback.body["MessageStatus"] != "read"
            else {**callback.body, "MessageStatus": "sent"}, callback.headers["x-twilio-signature"], TW_TOKEN
        )
    events = [tw.parse_callback(callback.body)[0] for callback in callbacks]
    assert [(e.kind, e.event_key) for e in events] == [
        ("ignored", f"{result.provider_message_id}:sent"),
        ("delivered", f"{result.provider_message_id}:delivered"),
        ("opened", f"{result.provider_message_id}:read"),
    ]
    assert {(e.address, e.provider_message_id) for e in events} == {(to, result.provider_message_id)}
    # Out of order (read before delivered) parses the same: ranking statuses is the receiver's job.
    assert [tw.parse_callback(c.body)[0].kind for c in reversed(callbacks)] == ["opened", "delivered", "ignored"]


def test_twilio_sms_channel_uses_plain_numbers_and_has_no_read(urls, recorder):
    sandbox, _ = urls
    to = phone_with("twilio", "read", skip=1)
    result = send(twilio(sandbox, channel="sms"), replace(message(to, "SMS"), channel="sms"))
    assert result.ok
    stored = sent_to(sandbox, "twilio", result.provider_message_id)
    assert (stored["channel"], stored["sender"]) == ("sms", TW_SENDER)
    callbacks = twilio_callbacks(recorder, "/tw", result.provider_message_id, 2)  # the account's default URL
    assert [c.body["MessageStatus"] for c in callbacks] == ["sent", "delivered"] and callbacks[0].body["To"] == to
    assert all(tw.verify_webhook(f"{urls[1]}/tw", c.body, c.headers["x-twilio-signature"], TW_TOKEN) for c in callbacks)


def test_twilio_opted_out_recipient_is_unreachable_at_send(sandbox):
    result = send(twilio(sandbox), message(phone_with("twilio", "opted_out")))
    assert (result.ok, result.error_class) == (False, "unreachable")
    assert result.error == "opted out: 21610: Attempt to send to unsubscribed recipient"


def test_twilio_undelivered_callback_marks_unreachable(urls, recorder):
    sandbox, hook = urls
    result = send(twilio(sandbox), message(phone_with("twilio", "undelivered")))
    assert result.ok
    failed = twilio_callbacks(recorder, "/tw", result.provider_message_id, 2)[1]
    assert (failed.body["MessageStatus"], failed.body["ErrorCode"]) == ("undelivered", "30003")
    assert tw.verify_webhook(f"{hook}/tw", failed.body, failed.headers["x-twilio-signature"], TW_TOKEN)
    [event] = tw.parse_callback(failed.body)
    assert (event.kind, event.reason) == ("delivery_failed", "undelivered 30003: unreachable")


def test_twilio_body_outside_the_window_fails_63016_but_a_template_goes_through(sandbox, recorder):
    to = phone_with("twilio", "window")
    freeform = send(twilio(sandbox), message(to, "Привет"))
    assert freeform.ok  # Twilio accepts the create; the failure comes in the status callback
    [failed] = twilio_callbacks(recorder, "/tw", freeform.provider_message_id, 1)
    assert (failed.body["MessageStatus"], failed.body["ErrorCode"]) == ("failed", "63016")
    [event] = tw.parse_callback(failed.body)
    assert event.kind == "delivery_failed" and "needs a template" in event.reason and "unreachable" not in event.reason

    template = TemplateRef("HX" + "a" * 32, "ru", ("Иван", "A-1001"))
    templated = send(twilio(sandbox), message(to, "ignored when a template is set", template=template))
    assert templated.ok
    stored = sent_to(sandbox, "twilio", templated.provider_message_id)
    assert (stored["content_sid"], stored["text"], stored["outcome"]) == ("HX" + "a" * 32, None, "deliver")
    assert stored["content_variables"] == '{"1": "Иван", "2": "A-1001"}'
    statuses = [c.body["MessageStatus"] for c in twilio_callbacks(recorder, "/tw", templated.provider_message_id, 2)]
    assert statuses == ["sent", "delivered"]


def test_twilio_template_and_media_fields():
    connector = TwilioConnector("http://x", TW_SID, TW_TOKEN, TW_SENDER, status_callback="https://hooks.example/tw")
    template = message("+79161234567", template=TemplateRef("HXabc", "ru", ("Иван",)))
    assert connector.fields(template) == [
        ("To", "whatsapp:+79161234567"),
        ("From", f"whatsapp:{TW_SENDER}"),
        ("ContentSid", "HXabc"),
        ("ContentVariables", '{"1": "Иван"}'),
        ("StatusCallback", "https://hooks.example/tw"),
    ]
    photos = tuple(Attachment("photo", f"https://cdn.example/{n}.jpg") for n in range(2))
    fields = connector.fields(message("+79161234567", "Каталог", attachments=photos))
    assert [value for name, value in fields if name == "MediaUrl"] == ["https://cdn.example/0.jpg", "https://cdn.example/1.jpg"]
    with pytest.raises(ValueError, match="at most 10"):
        connector.validate(message("+79161234567", attachments=photos * 6))
    with pytest.raises(ValueError, match="its own media"):
        connector.validate(message("+79161234567", template=TemplateRef("HXabc"), attachments=photos))


def test_twilio_media_send_and_too_many_media_never_leave(sandbox):
    photos = tuple(Attachment("photo", f"https://cdn.example/{n}.jpg") for n in range(2))
    result = send(twilio(sandbox), message(phone_with("twilio", "deliver"), "Каталог", attachments=photos))
    assert result.ok and result.provider_message_id.startswith("MM")
    assert sent_to(sandbox, "twilio", result.provider_message_id)["media_urls"] == [p.url for p in photos]
    before = len(httpx.get(f"{sandbox}/_sandbox/messages", params={"provider": "twilio"}).json()["messages"])
    refused = send(twilio(sandbox), message(phone_with("twilio", "deliver"), attachments=photos * 6))
    assert (refused.error_class, refused.error) == ("rejected", "Twilio takes at most 10 MediaUrl per message, got 12")
    assert len(httpx.get(f"{sandbox}/_sandbox/messages", params={"provider": "twilio"}).json()["messages"]) == before


def test_twilio_inbound_stop_reply_verifies_and_opts_out(urls, recorder):
    sandbox, hook = urls
    to = phone_with("twilio", "stop")
    assert send(twilio(sandbox), message(to)).ok
    [reply] = recorder.wait_for("/tw-in", 1, where=lambda body: body.get("From") == f"whatsapp:{to}")
    assert tw.verify_webhook(f"{hook}/tw-in", reply.body, reply.headers["x-twilio-signature"], TW_TOKEN)
    [event] = tw.parse_callback(reply.body)
    assert (event.kind, event.address, event.event_key, event.reason) == ("opt_out", to, reply.body["MessageSid"], "keyword:stop")


@pytest.mark.parametrize(
    ("sid", "token", "headers", "error_class", "error"),
    [
        (TW_SID, "wrong", {}, "rejected", "20003: Authenticate"),
        (TW_SID, TW_TOKEN, {"X-Sandbox-Fault": "503"}, "transient", "20503: Service Unavailable"),
    ],
)
def test_twilio_refusals(sandbox, sid, token, headers, error_class, error):
    result = send(twilio(sandbox, sid=sid, token=token), message(phone_with("twilio", "deliver")), headers=headers)
    assert (result.ok, result.error_class, result.error) == (False, error_class, error)


def test_twilio_rate_limit_is_20429(sandbox):
    connector = twilio(sandbox, sid=TW_LIMITED_SID, token=TW_LIMITED_TOKEN)
    first = send(connector, message(phone_with("twilio", "deliver")))
    second = send(connector, message(phone_with("twilio", "deliver", skip=1)))
    assert first.ok
    assert (second.error_class, second.error, second.retry_after) == ("rate_limited", "20429: Too Many Requests", None)


def test_twilio_timeout_is_transient_and_ambiguous(sandbox):
    result = send(twilio(sandbox), message(phone_with("twilio", "deliver")), headers={"X-Sandbox-Delay": "0.5"}, timeout=0.1)
    assert result.error_class == "transient" and result.may_have_been_accepted


@pytest.mark.parametrize(
    ("form", "code", "message_text"),
    [
        ({"From": f"whatsapp:{TW_SENDER}", "Body": "x"}, 21604, "A 'To' phone number is required."),
        ({"To": "whatsapp:+79161234567", "Body": "x"}, 21603, "A 'From' phone number is required."),
        ({"To": "whatsapp:+79161234567", "From": f"whatsapp:{TW_SENDER}"}, 21602, "Message body is required."),
        ({"To": "whatsapp:12345", "From": f"whatsapp:{TW_SENDER}", "Body": "x"}, 21211, "Invalid 'To' Phone Number: whatsapp:12345"),
        ({"To": "whatsapp:+79161234567", "From": TW_SENDER, "Body": "x"}, 21910,
         "Invalid From and To pair. From and To should be of the same channel"),
    ],
)
def test_twilio_sandbox_validation_answers(sandbox, form, code, message_text):
    answer = httpx.post(f"{sandbox}/2010-04-01/Accounts/{TW_SID}/Messages.json", data=form, auth=(TW_SID, TW_TOKEN))
    assert answer.status_code == 400
    assert answer.json() == {"code": code, "message": message_text, "more_info": f"https://www.twilio.com/docs/errors/{code}", "status": 400}


# --- Twilio signatures: published vectors ---------------------------------------------------------------

VECTOR_URL = "https://mycompany.com/myapp.php?foo=1&bar=2"


def test_twilio_published_signature_vector():
    # https://www.twilio.com/docs/usage/security#validating-requests
    params = {"CallSid": "CA1234567890ABCDE", "Caller": "+12349013030", "Digits": "1234", "From": "+12349013030", "To": "+18005551212"}
    assert tw.compute_signature("12345", VECTOR_URL, params) == "0/KCTR6DLpKmkAf8muzZqo1nDgQ="
    assert tw.verify_webhook(VECTOR_URL, params, "0/KCTR6DLpKmkAf8muzZqo1nDgQ=", "12345")
    assert tw.verify_webhook(VECTOR_URL, list(params.items()), "0/KCTR6DLpKmkAf8muzZqo1nDgQ=", "12345")
    assert not tw.verify_webhook(VECTOR_URL, {**params, "Digits": "1235"}, "0/KCTR6DLpKmkAf8muzZqo1nDgQ=", "12345")
    assert not tw.verify_webhook(VECTOR_URL, params, "0/KCTR6DLpKmkAf8muzZqo1nDgQ=", "54321")
    assert not tw.verify_webhook(VECTOR_URL, params, "0/KCTR6DLpKmkAf8muzZqo1nDgQ=", "")
    assert not tw.verify_webhook(VECTOR_URL, params, None, "12345")


def test_twilio_sdk_signature_vectors_ports_and_repeated_params():
    # twilio-python tests/unit/test_request_validator.py
    params = {"CallSid": "CA1234567890ABCDE", "Digits": "1234", "From": "+14158675309", "To": "+18005551212", "Caller": "+14158675309"}
    assert tw.compute_signature("12345", VECTOR_URL, params) == "RSOYDt4T1cUTdK1PDd93/VVr8B8="
    assert tw.verify_webhook(VECTOR_URL.replace(".com", ".com:1234"), params, "RSOYDt4T1cUTdK1PDd93/VVr8B8=", "12345")
    assert tw.verify_webhook(VECTOR_URL, params, "kvajT1Ptam85bY51eRf/AJRuM3w=", "12345")  # signed with :443
    assert tw.verify_webhook(VECTOR_URL.replace("https", "http"), params, "0ZXoZLH/DfblKGATFgpif+LLRf4=", "12345")  # :80
    repeated = [("Sid", "CA123"), ("SidAccount", "AC123"), ("Digits", "5678"), ("Digits", "1234")]
    assert tw.compute_signature("12345", VECTOR_URL, repeated) == "IK+Dwps556ElfBT0I3Rgjkr1wJU="
    assert tw.verify_webhook(VECTOR_URL, FormData(repeated), "IK+Dwps556ElfBT0I3Rgjkr1wJU=", "12345")  # a multi-dict


def test_twilio_body_sha256_variant():
    # twilio-python test_validation_of_body_succeeds: JSON body, signature over the URL with bodySHA256 only.
    body = '{"property": "value", "boolean": true}'
    assert tw.body_sha256(body) == "0a1ff7634d9ab3b95db5c9a2dfe9416e41502b283a80c7cf19632632f96e6620"
    url = f"{VECTOR_URL}&bodySHA256={tw.body_sha256(body)}"
    assert tw.verify_webhook(url, body, "a9nBmqA0ju/hNViExpshrM61xv4=", "12345")
    assert tw.verify_webhook(url, body.encode(), "a9nBmqA0ju/hNViExpshrM61xv4=", "12345")
    assert not tw.verify_webhook(url, body.replace("true", "false"), "a9nBmqA0ju/hNViExpshrM61xv4=", "12345")
    assert not tw.verify_webhook(VECTOR_URL, body, "a9nBmqA0ju/hNViExpshrM61xv4=", "12345")  # no bodySHA256 in the URL


@pytest.mark.parametrize(
    ("status", "body", "headers", "error_class", "retry_after"),
    [
        (429, {"code": 20429, "message": "Too Many Requests", "status": 429}, {"Retry-After": "5"}, "rate_limited", 5.0),
        (400, {"code": 63016, "message": "Outside window", "status": 400}, {}, "rejected", None),
        (400, {"code": 21211, "message": "Invalid 'To' Phone Number", "status": 400}, {}, "unreachable", None),
        (400, {"code": 30006, "message": "Landline", "status": 400}, {}, "unreachable", None),
        (400, {"code": 30001, "message": "Queue overflow", "status": 400}, {}, "transient", None),
        (401, {"code": 20003, "message": "Authenticate", "status": 401}, {}, "rejected", None),
        (500, {}, {}, "transient", None),
        (201, {"status": "queued"}, {}, "transient", None),
    ],
)
def test_twilio_classify(status, body, headers, error_class, retry_after):
    result = tw.classify(status, body, headers)
    assert (result.ok, result.error_class, result.retry_after) == (False, error_class, retry_after)
    if body.get("code") == 63016:
        assert "needs a template" in result.error


def test_twilio_parse_reference_payloads():
    # shared/reference/provider-protocols.md §5d
    delivered = {"MessageSid": "SM01", "SmsSid": "SM01", "AccountSid": "AC1", "MessagingServiceSid": "MG1", "From": "+79160000000", "To": "+79161234567", "MessageStatus": "delivered", "SmsStatus": "delivered", "ApiVersion": "2010-04-01"}  # noqa: E501
    undelivered = {"MessageSid": "SM01", "AccountSid": "AC1", "From": "+79160000000", "To": "+79161234567", "MessageStatus": "undelivered", "ErrorCode": "30003", "ApiVersion": "2010-04-01"}  # noqa: E501
    stop = {"MessageSid": "SM99", "AccountSid": "AC1", "From": "+79161234567", "To": "+79160000000", "Body": "STOP", "NumMedia": "0", "NumSegments": "1", "OptOutType": "STOP"}  # noqa: E501
    chatter = {"MessageSid": "SM88", "AccountSid": "AC1", "From": "whatsapp:+79161234567", "To": "whatsapp:+14155238886", "Body": "Да", "ProfileName": "Ivan", "WaId": "79161234567", "NumMedia": "0"}  # noqa: E501
    received = datetime(2026, 1, 2, tzinfo=UTC)
    events = [tw.parse_callback(p, received_at=received)[0] for p in (delivered, undelivered, stop, chatter)]
    assert [(e.event_key, e.kind, e.address) for e in events] == [
        ("SM01:delivered", "delivered", "+79161234567"),
        ("SM01:undelivered", "delivery_failed", "+79161234567"),
        ("SM99", "opt_out", "+79161234567"),
        ("SM88", "ignored", "+79161234567"),
    ]
    assert events[0].occurred_at == received and events[1].reason == "undelivered 30003: unreachable"
    assert tw.parse_callback({**stop, "OptOutType": "", "Body": " стоп! "})[0].kind == "opt_out"
    assert tw.parse_callback({**stop, "OptOutType": "START", "Body": "start"})[0].kind == "opt_in"
    assert tw.parse_callback({**undelivered, "ErrorCode": "21610", "MessageStatus": "failed"})[0].reason == (
        "failed 21610: unreachable (opted out)"
    )
    assert tw.parse_callback({**delivered, "MessageStatus": "queued", "NewField": "x"})[0].kind == "ignored"
    with pytest.raises(ValueError):
        tw.event_key({"MessageStatus": "sent"})


# =============================================== 360dialog =============================================


def d360_hooks(recorder, wamid: str, count: int) -> list:
    def about(body: dict) -> bool:
        value = body["entry"][0]["changes"][0]["value"]
        items = value.get("statuses") or []
        replies = [m for m in value.get("messages") or [] if (m.get("context") or {}).get("id") == wamid]
        return any(item["id"] == wamid for item in items) or bool(replies)

    return recorder.wait_for("/d360", count, where=about)


def test_d360_text_send_webhooks_verify_and_parse(sandbox, recorder):
    to = phone_with("d360", "deliver")
    result = send(D360Connector(sandbox, D360_KEY), message(to, "Привет"))
    assert result.ok and result.provider_message_id.startswith("wamid.")
    stored = sent_to(sandbox, "d360", result.provider_message_id)
    assert (stored["recipient"], stored["type"], stored["text"]) == (to[1:], "text", "Привет")
    hooks = d360_hooks(recorder, result.provider_message_id, 2)
    assert all(dd.verify_webhook(h.headers, D360_HEADERS) for h in hooks)
    assert not dd.verify_webhook(hooks[0].headers, {"Authorization": "other"})
    events = [event for hook in hooks for event in dd.parse_webhook(hook.body)]
    assert [(e.kind, e.event_key, e.address) for e in events] == [
        ("ignored", f"{result.provider_message_id}:sent", to),
        ("delivered", f"{result.provider_message_id}:delivered", to),
    ]
    assert dd.event_key(hooks[1].body) == f"{result.provider_message_id}:delivered"


def test_d360_template_body_and_window(sandbox, recorder):
    to = phone_with("d360", "window")
    connector = D360Connector(sandbox, D360_KEY)
    template = TemplateRef("order_confirm", "ru", ("Иван", "A-1001"))
    assert connector.payload(message(to, template=template)) == {
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": to[1:],
        "type": "template",
        "template": {
            "name": "order_confirm",
            "language": {"code": "ru"},
            "components": [{"type": "body", "parameters": [{"type": "text", "text": "Иван"}, {"type": "text", "text": "A-1001"}]}],
        },
    }
    templated = send(connector, message(to, template=template))
    assert templated.ok and sent_to(sandbox, "d360", templated.provider_message_id)["template"] == "order_confirm"
    hooks = d360_hooks(recorder, templated.provider_message_id, 3)
    assert [dd.parse_webhook(h.body)[0].kind for h in hooks] == ["ignored", "delivered", "opened"]
    freeform = send(connector, message(to, "Привет"))
    assert freeform.ok  # Meta accepts, then reports the failure
    [failed] = d360_hooks(recorder, freeform.provider_message_id, 1)
    [event] = dd.parse_webhook(failed.body)
    assert event.kind == "delivery_failed" and event.reason == "failed 131047: Re-engagement message (needs a template)"


def test_d360_undeliverable_number(sandbox, recorder):
    result = send(D360Connector(sandbox, D360_KEY), message(phone_with("d360", "no_whatsapp")))
    assert result.ok
    [failed] = d360_hooks(recorder, result.provider_message_id, 1)
    [event] = dd.parse_webhook(failed.body)
    assert (event.kind, event.reason) == ("delivery_failed", "failed 131026: Message undeliverable (unreachable)")


@pytest.mark.parametrize("address", ["+0033612345678", "+7 916", "+7916123456789012"])
def test_d360_malformed_number_is_refused_and_unreachable(sandbox, address):
    """A number WhatsApp could never reach is refused at send (Cloud API code 100 naming `to`): the
    connector reports it unreachable, which suppresses the channel, instead of a send that "succeeds"."""
    result = send(D360Connector(sandbox, D360_KEY), message(address))
    assert (result.ok, result.error_class) == (False, "unreachable")
    assert result.error.startswith("invalid recipient: (#100) Invalid parameter | Param to must be a phone number")
    assert not any(m["recipient"] == dd.digits(address) for m in httpx.get(f"{sandbox}/_sandbox/messages", params={"provider": "d360"}).json()["messages"])


def test_d360_unsubscribe_button_reply_opts_out(sandbox, recorder):
    to = phone_with("d360", "stop")
    buttons = (("Отписаться", "unsubscribe"), ("Подробнее", "more"))
    result = send(D360Connector(sandbox, D360_KEY), message(to, "Новая коллекция", buttons=buttons))
    assert result.ok
    hooks = d360_hooks(recorder, result.provider_message_id, 4)
    reply = hooks[3].body["entry"][0]["changes"][0]["value"]["messages"][0]
    assert reply["interactive"]["button_reply"] == {"id": "unsubscribe", "title": "Отписаться"}
    [event] = dd.parse_webhook(hooks[3].body)
    assert (event.kind, event.address, event.event_key, event.reason) == ("opt_out", to, reply["id"], "button:unsubscribe")
    plain = send(D360Connector(sandbox, D360_KEY), message(phone_with("d360", "stop", skip=1), "Привет"))
    [text_reply] = recorder.wait_for(
        "/d360", 1,
        where=lambda b: any(m.get("from") == phone_with("d360", "stop", skip=1)[1:] for m in b["entry"][0]["changes"][0]["value"].get("messages") or []),
    )
    assert plain.ok and dd.parse_webhook(text_reply.body)[0].kind == "opt_out"


def test_d360_media_and_buttons_payloads(sandbox):
    connector = D360Connector(sandbox, D360_KEY)
    photo = Attachment("photo", "https://cdn.example/a.jpg", caption="ignored: the text wins")
    assert connector.payload(message("+79161234567", "Каталог", attachments=(photo,)))["image"] == {
        "link": "https://cdn.example/a.jpg", "caption": "Каталог"
    }
    doc = Attachment("document", "https://cdn.example/price.pdf", filename="price.pdf")
    assert connector.payload(message("+79161234567", "", attachments=(doc,)))["document"] == {
        "link": "https://cdn.example/price.pdf", "filename": "price.pdf"
    }
    interactive = connector.payload(message("+79161234567", "Подписаться?", buttons=(("Да", "sub:yes"),)))["interactive"]
    assert interactive["action"]["buttons"] == [{"type": "reply", "reply": {"id": "sub:yes", "title": "Да"}}]
    result = send(connector, message(phone_with("d360", "deliver"), "Каталог", attachments=(photo,)))
    assert result.ok and sent_to(sandbox, "d360", result.provider_message_id)["type"] == "image"


@pytest.mark.parametrize(
    ("fields", "error"),
    [
        ({"buttons": tuple((f"b{n}", f"id{n}") for n in range(4))}, "at most 3 reply buttons, got 4"),
        ({"buttons": (("x" * 21, "id"),)}, "button title must be 1–20 characters"),
        ({"attachments": (Attachment("photo", "https://a/1.jpg"), Attachment("photo", "https://a/2.jpg"))}, "one media"),
    ],
)
def test_d360_validation_refuses_before_sending(sandbox, fields, error):
    connector = D360Connector(sandbox, D360_KEY)
    with pytest.raises(ValueError, match=error):
        connector.validate(message("+79161234567", "Выбор", **fields))
    result = send(connector, message("+79161234567", "Выбор", **fields))
    assert result.error_class == "rejected" and error in result.error


def test_d360_sandbox_answers_meta_errors(sandbox):
    body = {"messaging_product": "whatsapp", "to": "79161234567", "type": "interactive", "interactive": {
        "type": "button", "body": {"text": "x"}, "action": {"buttons": [{"type": "reply", "reply": {"id": str(n), "title": "t"}} for n in range(4)]}}}
    answer = httpx.post(f"{sandbox}/messages", json=body, headers={"D360-API-KEY": D360_KEY})
    assert answer.status_code == 400 and answer.json()["error"]["code"] == 131009
    assert dd.classify(answer.status_code, answer.json()).error_class == "rejected"


def test_d360_rate_limit_is_a_400_keyed_on_the_text(sandbox):
    connector = D360Connector(sandbox, D360_LIMITED)
    first = send(connector, message(phone_with("d360", "deliver")))
    second = send(connector, message(phone_with("d360", "deliver", skip=1)))
    assert first.ok
    assert (second.error_class, second.error) == ("rate_limited", "You have exceeded the endpoint rate limit.")


@pytest.mark.parametrize(
    ("key", "headers", "error_class", "error"),
    [("wrong", {}, "rejected", "Invalid api_key"), (D360_KEY, {"X-Sandbox-Fault": "502"}, "transient", "Bad Gateway")],
)
def test_d360_refusals(sandbox, key, headers, error_class, error):
    result = send(D360Connector(sandbox, key), message(phone_with("d360", "deliver")), headers=headers)
    assert (result.ok, result.error_class, result.error) == (False, error_class, error)


def test_d360_timeout_is_transient(sandbox):
    result = send(D360Connector(sandbox, D360_KEY), message(phone_with("d360", "deliver")), headers={"X-Sandbox-Delay": "0.5"}, timeout=0.1)
    assert result.error_class == "transient" and result.may_have_been_accepted


def meta_error(code: int, message_text: str = "x") -> dict:
    return {"error": {"message": f"(#{code}) {message_text}", "type": "OAuthException", "code": code, "fbtrace_id": "A"}}


@pytest.mark.parametrize(
    ("status", "body", "error_class"),
    [
        (400, meta_error(130429, "Rate limit hit"), "rate_limited"),
        (400, meta_error(131056, "(Business Account, Consumer Account) pair rate limit hit"), "rate_limited"),
        (400, meta_error(131049), "rate_limited"),
        (400, meta_error(131026), "unreachable"),
        (400, meta_error(131050), "unreachable"),
        (400, meta_error(131047, "Re-engagement message"), "rejected"),
        (400, meta_error(100, "The parameter to is required."), "unreachable"),
        (400, meta_error(100, "The parameter text['body'] is required."), "rejected"),
        (400, meta_error(100, "Invalid parameter"), "rejected"),
        (400, {"meta": {"success": False, "http_code": 400, "developer_message": 'Invalid payload ({"error":{"code":131056}})'}}, "rate_limited"),
        (400, {"meta": {"success": False, "developer_message": "Could not send message due to lack of payment."}}, "rejected"),
        (403, {"meta": {"success": False, "developer_message": "The endpoint is blocked"}}, "rejected"),
        (429, {}, "rate_limited"),
        (500, {"meta": {"developer_message": "Internal server error"}}, "transient"),
        (400, meta_error(131000, "Something went wrong"), "transient"),
    ],
)
def test_d360_classify(status, body, error_class):
    result = dd.classify(status, body)
    assert (result.ok, result.error_class) == (False, error_class)
    if "131047" in str(body):
        assert "needs a template" in result.error


def test_d360_parse_multi_event_payload_out_of_order_and_inbound():
    # shared/reference/provider-protocols.md §6d, several items in one POST, read before delivered.
    value = {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "74950000000", "phone_number_id": "1234567890"},
        "statuses": [
            {"id": "wamid.A", "status": "read", "timestamp": "1717000100", "recipient_id": "79161234567"},
            {"id": "wamid.A", "status": "delivered", "timestamp": "1717000003", "recipient_id": "79161234567", "new_field": 1},
        ],
        "contacts": [{"profile": {"name": "Иван"}, "wa_id": "79161234567"}],
        "messages": [
            {"from": "79161234567", "id": "wamid.IN1", "timestamp": "1717000200", "type": "text", "text": {"body": "СТОП"}},
            {"from": "79161234567", "id": "wamid.IN2", "timestamp": "1717000300", "type": "button", "button": {"payload": "unsubscribe", "text": "Отписаться"}},  # noqa: E501
            {"from": "79161234567", "id": "wamid.IN3", "timestamp": "1717000400", "type": "text", "text": {"body": "Спасибо"}},
        ],
    }
    payload = {"object": "whatsapp_business_account", "entry": [{"id": "WABA", "changes": [{"field": "messages", "value": value}]}]}
    events = dd.parse_webhook(payload)
    assert [(e.event_key, e.kind) for e in events] == [
        ("wamid.A:read", "opened"),
        ("wamid.A:delivered", "delivered"),
        ("wamid.IN1", "opt_out"),
        ("wamid.IN2", "opt_out"),
        ("wamid.IN3", "ignored"),
    ]
    assert events[0].occurred_at == datetime.fromtimestamp(1717000100, tz=UTC) and events[2].address == "+79161234567"
    assert dd.event_keys(payload) == [e.event_key for e in events]
    assert dd.event_key(payload).startswith("batch:") and dd.event_key(payload) == dd.event_key(payload)
    with pytest.raises(ValueError):
        dd.event_key({"object": "whatsapp_business_account", "entry": []})


@pytest.mark.parametrize(
    ("headers", "expected", "result"),
    [
        ({"authorization": "s3cr3t"}, {"Authorization": "s3cr3t"}, True),
        ({"Authorization": "s3cr3t", "X-Extra": "1"}, {"Authorization": "s3cr3t", "x-extra": "1"}, True),
        ({"Authorization": "s3cr3t"}, {"Authorization": "s3cr3t", "X-Extra": "1"}, False),
        ({"Authorization": "wrong"}, {"Authorization": "s3cr3t"}, False),
        ({"Authorization": ""}, {"Authorization": ""}, False),
        ({}, {}, False),
    ],
)
def test_d360_verify_webhook(headers, expected, result):
    assert dd.verify_webhook(headers, expected) is result


# =============================================== GREEN-API =============================================


def ga_hooks(recorder, id_message: str, count: int) -> list:
    return recorder.wait_for("/ga", count, where=lambda body: body.get("idMessage") == id_message)


def greenapi(sandbox: str, instance: int = GA_ID, token: str = GA_TOKEN) -> GreenApiConnector:
    return GreenApiConnector(sandbox, instance, token)


def test_greenapi_send_webhooks_verify_and_parse(sandbox, recorder):
    to = phone_with("greenapi", "read")
    result = send(greenapi(sandbox), message(to, "Привет"))
    assert result.ok and result.provider_message_id.startswith("3EB0")
    chat = f"{to[1:]}@c.us"
    stored = sent_to(sandbox, "greenapi", result.provider_message_id)
    assert (stored["recipient"], stored["method"], stored["text"]) == (chat, "sendMessage", "Привет")
    hooks = ga_hooks(recorder, result.provider_message_id, 3)
    assert all(h.headers["authorization"] == f"Bearer {GA_SECRET}" and ga.verify_webhook(h.headers, GA_SECRET) for h in hooks)
    events = [ga.parse_webhook(h.body)[0] for h in hooks]
    assert [(e.kind, e.event_key) for e in events] == [
        ("ignored", f"{chat}_{result.provider_message_id}:sent"),
        ("delivered", f"{chat}_{result.provider_message_id}:delivered"),
        ("opened", f"{chat}_{result.provider_message_id}:read"),
    ]
    assert {(e.address, e.provider_message_id) for e in events} == {(to, result.provider_message_id)}


@pytest.mark.parametrize(
    ("outcome", "statuses", "kind", "reason"),
    [
        ("no_account", ["noAccount"], "delivery_failed", "unreachable: noAccount"),
        ("failed", ["sent", "failed"], "delivery_failed", "failed: Message sending failed: the sandbox's failed outcome"),
    ],
)
def test_greenapi_failures(sandbox, recorder, outcome, statuses, kind, reason):
    result = send(greenapi(sandbox), message(phone_with("greenapi", outcome)))
    assert result.ok
    hooks = ga_hooks(recorder, result.provider_message_id, len(statuses))
    assert [h.body["status"] for h in hooks] == statuses
    [event] = ga.parse_webhook(hooks[-1].body)
    assert (event.kind, event.reason) == (kind, reason)


def test_greenapi_yellow_card_blocks_the_sender(sandbox, recorder):
    result = send(greenapi(sandbox), message(YELLOW))
    assert result.ok
    [hook] = ga_hooks(recorder, result.provider_message_id, 1)
    [event] = ga.parse_webhook(hook.body)
    assert event.kind == ga.SENDER_BLOCKED == "sender_blocked" and event.reason.startswith("yellowCard")


def test_greenapi_incoming_stop_opts_out(sandbox, recorder):
    to = phone_with("greenapi", "stop")
    assert send(greenapi(sandbox), message(to)).ok
    [incoming] = recorder.wait_for(
        "/ga", 1, where=lambda b: b["typeWebhook"] == "incomingMessageReceived" and b["senderData"]["chatId"] == f"{to[1:]}@c.us"
    )
    [event] = ga.parse_webhook(incoming.body)
    assert (event.kind, event.address, event.event_key) == ("opt_out", to, incoming.body["idMessage"])


def test_greenapi_attachment_goes_through_send_file_by_url(sandbox):
    connector = greenapi(sandbox)
    doc = Attachment("document", "https://cdn.example/files/price%20list.pdf")
    assert connector.request(message("+79161234567", "Прайс", attachments=(doc,))) == (
        "sendFileByUrl",
        {"chatId": "79161234567@c.us", "urlFile": doc.url, "fileName": "price list.pdf", "caption": "Прайс"},
    )
    result = send(connector, message(phone_with("greenapi", "deliver"), "Прайс", attachments=(doc,)))
    stored = sent_to(sandbox, "greenapi", result.provider_message_id)
    assert (stored["method"], stored["file_name"], stored["text"]) == ("sendFileByUrl", "price list.pdf", "Прайс")


def test_greenapi_text_limit(sandbox):
    result = send(greenapi(sandbox), message("+79161234567", "я" * 20001))
    assert (result.error_class, result.error) == ("rejected", "GREEN-API takes at most 20000 characters, got 20001")
    answer = httpx.post(f"{sandbox}/waInstance{GA_ID}/sendMessage/{GA_TOKEN}", json={"chatId": "79161234567@c.us", "message": "я" * 20001})
    assert answer.status_code == 400 and ga.classify(400, answer.json()).error_class == "rejected"


def test_greenapi_rate_limit_is_429(sandbox):
    connector = greenapi(sandbox, GA_LIMITED, "ga-limited")
    first = send(connector, message(phone_with("greenapi", "deliver")))
    second = send(connector, message(phone_with("greenapi", "deliver", skip=1)))
    assert first.ok and second.error_class == "rate_limited"


@pytest.mark.parametrize(
    ("instance", "token", "headers", "error_class"),
    [
        (GA_ID, "wrong-token", {}, "rejected"),
        (999, GA_TOKEN, {}, "rejected"),
        (GA_ID, GA_TOKEN, {"X-Sandbox-Fault": "500"}, "transient"),
    ],
)
def test_greenapi_refusals(sandbox, instance, token, headers, error_class):
    result = send(greenapi(sandbox, instance, token), message(phone_with("greenapi", "deliver")), headers=headers)
    assert (result.ok, result.error_class) == (False, error_class)


def test_greenapi_timeout_is_transient(sandbox):
    result = send(greenapi(sandbox), message(phone_with("greenapi", "deliver")), headers={"X-Sandbox-Delay": "0.5"}, timeout=0.1)
    assert result.error_class == "transient" and result.may_have_been_accepted


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"Authorization": f"Bearer {GA_SECRET}"}, True),
        ({"authorization": f"bearer {GA_SECRET}"}, True),
        ({"Authorization": GA_SECRET}, True),
        ({"Authorization": f"Bearer {GA_SECRET}x"}, False),
        ({"Authorization": "Bearer "}, False),
        ({}, False),
    ],
)
def test_greenapi_verify_webhook(headers, expected):
    assert ga.verify_webhook(headers, GA_SECRET) is expected
    assert not ga.verify_webhook(headers, "")


def test_greenapi_parse_reference_payloads():
    # shared/reference/provider-protocols.md §7d
    instance = {"idInstance": 7103000000, "wid": "79876543210@c.us", "typeInstance": "whatsapp"}
    delivered = {"typeWebhook": "outgoingMessageStatus", "chatId": "79001234567@c.us", "instanceData": instance, "timestamp": 1717000005, "idMessage": "3EB0C767D097B7C7C030", "status": "delivered", "sendByApi": True}  # noqa: E501
    no_account = {**delivered, "idMessage": "3EB0608D6A2901063D63", "status": "noAccount", "timestamp": 1717000006}
    incoming = {"typeWebhook": "incomingMessageReceived", "instanceData": instance, "timestamp": 1717000100, "idMessage": "F7AEC1B7086ECDC7E6E45923F5EDB825", "senderData": {"chatId": "79001234567@c.us", "sender": "79001234567@c.us", "senderName": "Иван"}, "messageData": {"typeMessage": "textMessage", "textMessageData": {"textMessage": "СТОП"}}}  # noqa: E501
    button = {**incoming, "idMessage": "B1", "messageData": {"typeMessage": "buttonsResponseMessage", "buttonsResponseMessage": {"stanzaId": "3EB0", "selectedButtonId": "unsubscribe", "selectedButtonText": "Отписаться"}}}  # noqa: E501
    state = {"typeWebhook": "stateInstanceChanged", "instanceData": instance, "timestamp": 1717000200, "stateInstance": "authorized"}
    events = [ga.parse_webhook(p)[0] for p in (delivered, no_account, incoming, button, state)]
    assert [(e.event_key, e.kind, e.address) for e in events] == [
        ("79001234567@c.us_3EB0C767D097B7C7C030:delivered", "delivered", "+79001234567"),
        ("79001234567@c.us_3EB0608D6A2901063D63:noAccount", "delivery_failed", "+79001234567"),
        ("F7AEC1B7086ECDC7E6E45923F5EDB825", "opt_out", "+79001234567"),
        ("B1", "opt_out", "+79001234567"),
        ("stateInstanceChanged:7103000000:1717000200", "ignored", None),
    ]
    assert events[0].occurred_at == datetime.fromtimestamp(1717000005, tz=UTC)
    with pytest.raises(ValueError):
        ga.event_key({"typeWebhook": "outgoingMessageStatus", "chatId": "1@c.us"})


# ============================================ sandbox inspection =======================================


def test_inspection_covers_the_three_providers(sandbox):
    stats = httpx.get(f"{sandbox}/_sandbox/stats").json()["providers"]
    for provider in ("twilio", "d360", "greenapi"):
        assert stats[provider]["accepted"] > 0 and stats[provider]["refused"] > 0
        listed = httpx.get(f"{sandbox}/_sandbox/messages", params={"provider": provider}).json()["messages"]
        assert listed and {m["provider"] for m in listed} == {provider}
    assert stats["twilio"]["limit_violations"] >= 1 and stats["d360"]["limit_violations"] >= 1
    assert stats["twilio"]["outcomes"]["opted_out"] >= 1
