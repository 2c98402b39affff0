"""One receiver per provider: prove authenticity the provider's way, split the post into events,
and say what the provider expects back.

A receiver returns the events to store (provider event key + the JSON payload the delivery
processor's parser takes) and the answer; it raises ``Refused`` (logged, never stored) for a
request that is not authentic or not well-formed. Receivers never touch the store.

Each receiver reads at most its provider's largest body (``@receiver(max_body_bytes=…)``, with the
reason above it): the provider's documented maximum with a margin, or, where it documents none, a
margin over its largest realistic post. A genuine post refused as too large is retried by the
provider until it gives up, and then it is lost; a limit far above what a provider sends only lets
strangers make us buffer more.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from email.message import Message
from typing import Any, NoReturn
from urllib.parse import parse_qsl

from fastapi import Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from policies.tenants import Tenant
from resources.channels import d360, greenapi, mailgun, sendgrid, smsc, smsru, telegram, twilio, vk
from resources.channels.base import CLOCK_SKEW_S
from resources.embedded_keys import sendgrid_public_key
from resources.settings import Settings

KiB, MiB = 1024, 1024 * 1024
MAX_EVENT_KEY = 256  # no provider's event id is longer (the inbox keeps a fixed-length hash of it)
FORM = "application/x-www-form-urlencoded"


class Refused(Exception):
    """Not authentic or not well-formed: answered with ``status`` and never stored."""

    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status, self.reason = status, reason


@dataclass
class Accepted:
    events: list[tuple[str, dict]] = field(default_factory=list)  # (event key, payload to store)
    answer: Response = field(default_factory=lambda: Response(status_code=200))
    replay_token: str | None = None  # Mailgun: a signature token that must not be used twice
    press: dict[str, str] | None = None  # VK: a button press to answer once stored (gateway/button_answers.py)


@dataclass(frozen=True)
class Receiver:
    """A provider's receive function and the largest body it reads (``max_body_bytes``)."""

    receive: Callable[[Request, Tenant, Settings, str, int], Awaitable[Accepted]]
    max_body_bytes: int

    async def __call__(self, request: Request, tenant: Tenant, settings: Settings, extra: str) -> Accepted:
        return await self.receive(request, tenant, settings, extra, self.max_body_bytes)


def receiver(max_body_bytes: int) -> Callable[[Callable[..., Awaitable[Accepted]]], Receiver]:
    """Declare a receive function together with its provider's body limit."""
    return lambda receive: Receiver(receive, max_body_bytes)


async def read_body(request: Request, max_bytes: int) -> bytes:
    """The request body, refused (413) once it exceeds ``max_bytes``: a larger declared
    Content-Length is refused before reading, and a chunked body is never buffered past the limit."""
    declared = request.headers.get("content-length", "")
    if declared.isascii() and declared.isdigit() and int(declared) > max_bytes:
        raise Refused(413, f"body too large (over {max_bytes:,} bytes)")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise Refused(413, f"body too large (over {max_bytes:,} bytes)")
        chunks.append(chunk)
    return b"".join(chunks)


def _no_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not a JSON number")


def _loads(body: bytes) -> Any:
    """``body`` as JSON we can store, else Refused(400) saying why.

    Besides syntax, this refuses what ``json.loads`` lets through but the inbox cannot hold or a
    provider never sends: NaN/Infinity, integers past Python's digit limit, nesting deeper than the
    parser's recursion limit, and unpaired UTF-16 surrogates (``"\\ud800"``), which cannot be written
    as UTF-8.
    """
    try:
        payload = json.loads(body, parse_constant=_no_constant)
        json.dumps(payload, ensure_ascii=False).encode()
    except RecursionError:
        raise Refused(400, "body is not JSON: nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError/UnicodeEncodeError, digit limit
        raise Refused(400, f"body is not JSON: {exc}") from None
    return payload


async def _json(request: Request, max_bytes: int) -> tuple[bytes, Any]:
    body = await read_body(request, max_bytes)
    return body, _loads(body)


async def _json_object(request: Request, max_bytes: int) -> tuple[bytes, dict]:
    body, payload = await _json(request, max_bytes)
    if not isinstance(payload, dict):
        raise Refused(400, "body is not a JSON object")
    return body, payload


async def _form(request: Request, max_bytes: int) -> list[tuple[str, str]]:
    """An ``application/x-www-form-urlencoded`` body as ordered pairs (how these providers post),
    decoded with the ``charset`` the Content-Type names (UTF-8 when it names none)."""
    content_type = Message()
    content_type["content-type"] = request.headers.get("content-type", "")
    if content_type.get_content_type() != FORM:
        raise Refused(415, f"expected an {FORM} post")
    charset = content_type.get_content_charset("utf-8")
    body = await read_body(request, max_bytes)
    try:
        pairs = parse_qsl(body.decode(charset), keep_blank_values=True, strict_parsing=bool(body), encoding=charset)
        for name, value in pairs:  # a codec like unicode_escape can yield unpaired surrogates: not storable
            (name + value).encode()
    except LookupError:  # no such codec, or not a text encoding (base64, rot13, …)
        raise Refused(415, f"unsupported charset {charset!r}") from None
    except ValueError as exc:  # not in that charset, or a malformed pair
        raise Refused(400, f"malformed form body: {exc}") from None
    return pairs


def _key(extract: Callable[[Any], str], payload: Any) -> str:
    """The provider's event id: present, printable and short, as every provider's is."""
    try:
        key = extract(payload)
    except (ValueError, KeyError, TypeError) as exc:
        raise Refused(400, f"no event id: {exc}") from None
    if len(key) > MAX_EVENT_KEY or not key.isprintable():
        raise Refused(400, f"event id is not printable text of at most {MAX_EVENT_KEY} characters")
    return key


def _account(tenant: Tenant, provider: str):
    account = getattr(tenant.accounts, provider)
    if account is None:
        raise Refused(404, f"no {provider} account for this tenant")
    return account


# Telegram documents no size for webhook updates. The largest is a message at its documented limits
# (4,096 characters of text or 1,024 of caption, with entities) quoting or replying to another such
# message: ~100 KB even with every character JSON-escaped. 1 MiB is ten times that.
@receiver(max_body_bytes=1 * MiB)
async def receive_telegram(request: Request, tenant: Tenant, settings: Settings, extra: str, max_body: int) -> Accepted:
    account = _account(tenant, "telegram")
    if not telegram.verify_webhook(request.headers, settings.secret(account.webhook_secret_env)):
        raise Refused(403, "bad secret token")
    _, payload = await _json_object(request, max_body)
    # A button press is answered right here, in the webhook's answer (telegram.webhook_reply).
    reply = telegram.webhook_reply(payload)
    # Any other update: an empty body, typed so the answer matches the documented ones (gateway/openapi.py).
    return Accepted([(_key(telegram.event_key, payload), payload)], JSONResponse(reply) if reply else PlainTextResponse(""))


# Mailgun documents no size for webhook posts (its 25 MB is a message's limit; an event carries the
# message's headers, not its body). The largest realistic event is a `failed` one with the full
# delivery status, headers and user variables: tens of KB. 1 MiB leaves a wide margin.
@receiver(max_body_bytes=1 * MiB)
async def receive_mailgun(request: Request, tenant: Tenant, settings: Settings, extra: str, max_body: int) -> Accepted:
    account = _account(tenant, "mailgun")
    _, payload = await _json_object(request, max_body)
    # Mailgun stops retrying on a 406 only. That is the answer where no retry can help; where one
    # can, any other refusal keeps Mailgun trying for 8 hours.
    if not mailgun.verify_webhook(payload, settings.secret(account.signing_key_env)):
        raise Refused(403, "bad signature")  # if our signing key is the wrong one, fixing it saves the retries
    age = mailgun.signature_age(payload, time.time())
    if age > mailgun.SIGNATURE_MAX_AGE_S:
        raise Refused(406, f"signature older than {mailgun.SIGNATURE_MAX_AGE_S // 3600} hours")  # retries carry it unchanged
    if age < -CLOCK_SKEW_S:
        raise Refused(403, "signature timestamp ahead of our clock")  # a retry comes when the clocks agree
    key = _key(mailgun.event_key, payload)
    return Accepted([(key, payload)], PlainTextResponse("ok"), replay_token=str(payload["signature"]["token"]))


# SendGrid posts a batch "within approximately 30 seconds or when the batch size reaches 768
# kilobytes" (Event Webhook docs), so a batch passes 768 KB by up to one event, whose custom args
# SendGrid caps at 10,000 bytes. 2 MiB is over twice the largest batch.
@receiver(max_body_bytes=2 * MiB)
async def receive_sendgrid(request: Request, tenant: Tenant, settings: Settings, extra: str, max_body: int) -> Accepted:
    account = _account(tenant, "sendgrid")
    body = await read_body(request, max_body)
    signature = request.headers.get(sendgrid.SIGNATURE_HEADER, "")
    timestamp = request.headers.get(sendgrid.TIMESTAMP_HEADER, "")
    if not sendgrid.verify_webhook(sendgrid_public_key(account.webhook_public_key_env), signature, timestamp, body, now=time.time()):
        raise Refused(403, "bad or stale signature")
    events = _loads(body)
    if not isinstance(events, list) or not all(isinstance(event, dict) for event in events):
        raise Refused(400, "body is not a JSON array of events")
    return Accepted([(_key(sendgrid.event_key, event), event) for event in events])


# VK documents no size for Callback API events. The largest is a `message_new` carrying a chain of
# forwarded messages (`fwd_messages`), each with up to 4,096 characters and its attachments'
# metadata (photo sizes, links): a few MB for a long chain. 4 MiB.
@receiver(max_body_bytes=4 * MiB)
async def receive_vk(request: Request, tenant: Tenant, settings: Settings, extra: str, max_body: int) -> Accepted:
    account = _account(tenant, "vk")
    _, payload = await _json_object(request, max_body)
    if (code := vk.confirmation_answer(payload, settings.secret(account.confirmation_code_env))) is not None:
        if payload.get("group_id") != account.group_id:
            raise Refused(403, "confirmation for another community")
        return Accepted([], PlainTextResponse(code))
    if not vk.verify_webhook(payload, settings.secret(account.callback_secret_env), account.group_id):
        raise Refused(403, "bad secret")
    # The answer must be `ok`: a button press is answered by an API call once stored (gateway/button_answers.py).
    return Accepted([(_key(vk.event_key, payload), payload)], PlainTextResponse(vk.OK_ANSWER), press=vk.press_answer(payload))


# SMSC documents no size for status callbacks: a form of a dozen short fields (id, phone, status,
# err, ts, md5/sha1, …) and at most the message text, a few KB percent-encoded. 256 KiB.
@receiver(max_body_bytes=256 * KiB)
async def receive_smsc(request: Request, tenant: Tenant, settings: Settings, extra: str, max_body: int) -> Accepted:
    account = _account(tenant, "smsc")
    form = dict(await _form(request, max_body))
    if not smsc.verify_webhook(form, settings.secret(account.password_env)):
        raise Refused(403, "bad signature")
    return Accepted([(_key(smsc.event_key, form), form)], PlainTextResponse("OK"))


# SMS.ru documents no size for callbacks: `data[n]` records of three short lines each (kind, sms id,
# status), a few dozen bytes per message, a few KB for a batch. 256 KiB.
@receiver(max_body_bytes=256 * KiB)
async def receive_smsru(request: Request, tenant: Tenant, settings: Settings, extra: str, max_body: int) -> Accepted:
    account = _account(tenant, "smsru")
    if not smsru.verify_path_secret(extra, settings.secret(account.callback_secret_env)):
        raise Refused(404, "unknown callback path")  # a secret path: don't confirm it exists
    records = smsru.records(await _form(request, max_body))
    if not records:
        raise Refused(400, "no data[] records")
    events = [(_key(smsru.event_key, record), {"data[0]": record}) for record in records]
    return Accepted(events, PlainTextResponse(smsru.CALLBACK_ANSWER))


# Twilio documents no size for its webhook requests. The largest is an incoming WhatsApp message:
# WhatsApp lets a person write 65,536 characters, percent-encoded at up to 12 bytes each (~790 KB),
# plus sender fields and up to ten media URLs. 1 MiB.
@receiver(max_body_bytes=1 * MiB)
async def receive_twilio(request: Request, tenant: Tenant, settings: Settings, extra: str, max_body: int) -> Accepted:
    account = _account(tenant, "twilio")
    pairs = await _form(request, max_body)
    public_url = settings.gateway_url + request.url.path + (f"?{request.url.query}" if request.url.query else "")
    if not twilio.verify_webhook(public_url, pairs, request.headers.get("X-Twilio-Signature"), settings.secret(account.auth_token_env)):
        raise Refused(403, "bad X-Twilio-Signature")
    params = dict(pairs)
    return Accepted([(_key(twilio.event_key, params), params)], Response("<Response/>", media_type="application/xml"))


# 360dialog forwards Meta's Cloud API webhooks, and Meta documents "Webhooks payloads can be up to
# 3MB" (WhatsApp Cloud API, set up webhooks): status batches of many messages. 4 MiB is 3 MiB, the
# larger reading of "3MB", plus a MiB.
@receiver(max_body_bytes=4 * MiB)
async def receive_d360(request: Request, tenant: Tenant, settings: Settings, extra: str, max_body: int) -> Accepted:
    account = _account(tenant, "d360")
    if not d360.verify_webhook(request.headers, {d360.WEBHOOK_SECRET_HEADER: settings.secret(account.webhook_secret_env)}):
        raise Refused(403, "bad webhook secret header")
    _, payload = await _json_object(request, max_body)
    return Accepted([(_key(d360.event_key, payload), payload)])


# GREEN-API documents no size for webhooks. The largest is an incoming text message (WhatsApp allows
# 65,536 characters) quoting another: ~0.5 MB even in 4-byte characters. 1 MiB.
@receiver(max_body_bytes=1 * MiB)
async def receive_greenapi(request: Request, tenant: Tenant, settings: Settings, extra: str, max_body: int) -> Accepted:
    account = _account(tenant, "greenapi")
    if not greenapi.verify_webhook(request.headers, settings.secret(account.webhook_token_env)):
        raise Refused(403, "bad Authorization token")
    _, payload = await _json_object(request, max_body)
    return Accepted([(_key(greenapi.event_key, payload), payload)])


RECEIVERS: dict[str, Receiver] = {
    "telegram": receive_telegram,
    "mailgun": receive_mailgun,
    "sendgrid": receive_sendgrid,
    "vk": receive_vk,
    "smsc": receive_smsc,
    "smsru": receive_smsru,
    "twilio": receive_twilio,
    "d360": receive_d360,
    "greenapi": receive_greenapi,
}
