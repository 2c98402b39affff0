"""One receiver per provider: prove authenticity the provider's way, split the post into events,
and say what the provider expects back.

A receiver returns the events to store (provider event key + the JSON payload the delivery
processor's parser takes) and the answer; it raises ``Refused`` (logged, never stored) for a
request that is not authentic or not well-formed. Receivers never touch the store.
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

from policies.schema import Tenant
from resources.channels import d360, greenapi, mailgun, sendgrid, smsc, smsru, telegram, twilio, vk
from resources.embedded_keys import sendgrid_public_key
from resources.opstore_schema import webhook_inbox
from resources.settings import Settings

MAX_BODY_BYTES = 1_000_000
MAX_EVENT_KEY = webhook_inbox.c.event_key.type.length  # PostgreSQL refuses longer ones
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


Receiver = Callable[[Request, Tenant, Settings, str], Awaitable[Accepted]]


async def read_body(request: Request) -> bytes:
    """The request body, refused (413) once it exceeds MAX_BODY_BYTES: a larger declared
    Content-Length is refused before reading, and a chunked body is never buffered past the limit."""
    declared = request.headers.get("content-length", "")
    if declared.isascii() and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise Refused(413, "body too large")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise Refused(413, "body too large")
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


async def _json(request: Request) -> tuple[bytes, Any]:
    body = await read_body(request)
    return body, _loads(body)


async def _json_object(request: Request) -> tuple[bytes, dict]:
    body, payload = await _json(request)
    if not isinstance(payload, dict):
        raise Refused(400, "body is not a JSON object")
    return body, payload


async def _form(request: Request) -> list[tuple[str, str]]:
    """An ``application/x-www-form-urlencoded`` body as ordered pairs (how these providers post),
    decoded with the ``charset`` the Content-Type names (UTF-8 when it names none)."""
    content_type = Message()
    content_type["content-type"] = request.headers.get("content-type", "")
    if content_type.get_content_type() != FORM:
        raise Refused(415, f"expected an {FORM} post")
    charset = content_type.get_content_charset("utf-8")
    body = await read_body(request)
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
    """The provider's event id, which the inbox stores as text: present, printable and short."""
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


async def receive_telegram(request: Request, tenant: Tenant, settings: Settings, extra: str) -> Accepted:
    account = _account(tenant, "telegram")
    if not telegram.verify_webhook(request.headers, settings.secret(account.webhook_secret_env)):
        raise Refused(403, "bad secret token")
    _, payload = await _json_object(request)
    # A button press is answered right here, in the webhook's answer (telegram.webhook_reply).
    reply = telegram.webhook_reply(payload)
    # Any other update: an empty body, typed so the answer matches the documented ones (gateway/openapi.py).
    return Accepted([(_key(telegram.event_key, payload), payload)], JSONResponse(reply) if reply else PlainTextResponse(""))


async def receive_mailgun(request: Request, tenant: Tenant, settings: Settings, extra: str) -> Accepted:
    account = _account(tenant, "mailgun")
    _, payload = await _json_object(request)
    if not mailgun.verify_webhook(payload, settings.secret(account.signing_key_env), time.time()):
        raise Refused(406, "bad or stale signature")  # Mailgun stops retrying on 406
    key = _key(mailgun.event_key, payload)
    return Accepted([(key, payload)], PlainTextResponse("ok"), replay_token=str(payload["signature"]["token"]))


async def receive_sendgrid(request: Request, tenant: Tenant, settings: Settings, extra: str) -> Accepted:
    account = _account(tenant, "sendgrid")
    body = await read_body(request)
    signature = request.headers.get(sendgrid.SIGNATURE_HEADER, "")
    timestamp = request.headers.get(sendgrid.TIMESTAMP_HEADER, "")
    if not sendgrid.verify_webhook(sendgrid_public_key(account.webhook_public_key_env), signature, timestamp, body, now=time.time()):
        raise Refused(403, "bad or stale signature")
    events = _loads(body)
    if not isinstance(events, list) or not all(isinstance(event, dict) for event in events):
        raise Refused(400, "body is not a JSON array of events")
    return Accepted([(_key(sendgrid.event_key, event), event) for event in events])


async def receive_vk(request: Request, tenant: Tenant, settings: Settings, extra: str) -> Accepted:
    account = _account(tenant, "vk")
    _, payload = await _json_object(request)
    if (code := vk.confirmation_answer(payload, settings.secret(account.confirmation_code_env))) is not None:
        if payload.get("group_id") != account.group_id:
            raise Refused(403, "confirmation for another community")
        return Accepted([], PlainTextResponse(code))
    if not vk.verify_webhook(payload, settings.secret(account.callback_secret_env), account.group_id):
        raise Refused(403, "bad secret")
    # The answer must be `ok`: a button press is answered by an API call once stored (gateway/button_answers.py).
    return Accepted([(_key(vk.event_key, payload), payload)], PlainTextResponse(vk.OK_ANSWER), press=vk.press_answer(payload))


async def receive_smsc(request: Request, tenant: Tenant, settings: Settings, extra: str) -> Accepted:
    account = _account(tenant, "smsc")
    form = dict(await _form(request))
    if not smsc.verify_webhook(form, settings.secret(account.password_env)):
        raise Refused(403, "bad signature")
    return Accepted([(_key(smsc.event_key, form), form)], PlainTextResponse("OK"))


async def receive_smsru(request: Request, tenant: Tenant, settings: Settings, extra: str) -> Accepted:
    account = _account(tenant, "smsru")
    if not smsru.verify_path_secret(extra, settings.secret(account.callback_secret_env)):
        raise Refused(404, "unknown callback path")  # a secret path: don't confirm it exists
    records = smsru.records(await _form(request))
    if not records:
        raise Refused(400, "no data[] records")
    events = [(_key(smsru.event_key, record), {"data[0]": record}) for record in records]
    return Accepted(events, PlainTextResponse(smsru.CALLBACK_ANSWER))


async def receive_twilio(request: Request, tenant: Tenant, settings: Settings, extra: str) -> Accepted:
    account = _account(tenant, "twilio")
    pairs = await _form(request)
    public_url = settings.gateway_url + request.url.path + (f"?{request.url.query}" if request.url.query else "")
    if not twilio.verify_webhook(public_url, pairs, request.headers.get("X-Twilio-Signature"), settings.secret(account.auth_token_env)):
        raise Refused(403, "bad X-Twilio-Signature")
    params = dict(pairs)
    return Accepted([(_key(twilio.event_key, params), params)], Response("<Response/>", media_type="application/xml"))


async def receive_d360(request: Request, tenant: Tenant, settings: Settings, extra: str) -> Accepted:
    account = _account(tenant, "d360")
    if not d360.verify_webhook(request.headers, {d360.WEBHOOK_SECRET_HEADER: settings.secret(account.webhook_secret_env)}):
        raise Refused(403, "bad webhook secret header")
    _, payload = await _json_object(request)
    return Accepted([(_key(d360.event_key, payload), payload)])


async def receive_greenapi(request: Request, tenant: Tenant, settings: Settings, extra: str) -> Accepted:
    account = _account(tenant, "greenapi")
    if not greenapi.verify_webhook(request.headers, settings.secret(account.webhook_token_env)):
        raise Refused(403, "bad Authorization token")
    _, payload = await _json_object(request)
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
