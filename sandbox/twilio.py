"""Twilio Programmable Messaging as the sandbox speaks it: `POST /2010-04-01/Accounts/<sid>/Messages.json`.

Form-urlencoded, HTTP Basic `<AccountSid>:<AuthToken>`. Errors are Twilio's JSON
`{"code", "message", "more_info", "status"}`. WhatsApp is the same endpoint with `whatsapp:`-prefixed
`To`/`From`; SMS uses plain E.164 numbers.

Status callbacks are form-urlencoded POSTs to the message's `StatusCallback` (else the account's
`webhook_url`), one per status in order, signed with `X-Twilio-Signature` = base64(HMAC-SHA1(auth
token, exact URL + sorted name+value pairs)). The HMAC is implemented here, deliberately not imported
from `resources.channels`, so the tests prove two independent implementations agree. Inbound replies
(the `stop` outcome) go to the account's `inbound_url` (the sender's incoming-message URL), else its
`webhook_url`.

63016 (WhatsApp `Body` outside the 24-hour window) is asynchronous, as at Twilio: the create answers
201 `queued`, then the message's status callback says `failed` with ErrorCode 63016 ("This message
failed to be delivered", error 63016 docs). 21610 (opted out) is synchronous: a 400 and no message.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import secrets
import uuid
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from sandbox.callbacks import Callback
from sandbox.config import TwilioAccount
from sandbox.forms import BadRequest, read_params
from sandbox.outcomes import (
    DELIVER,
    OPTED_OUT,
    READ,
    STOP,
    TWILIO,
    UNDELIVERED,
    WINDOW,
    outcome_for,
)
from sandbox.state import SandboxState

API_VERSION = "2010-04-01"
MAX_BODY, MAX_MEDIA = 1600, 10
WHATSAPP = "whatsapp:"
_E164 = re.compile(r"^\+[1-9]\d{7,14}$")


def routes() -> list[Route]:
    return [Route(f"/{API_VERSION}/Accounts/{{sid}}/Messages.json", _messages, methods=["POST"])]


def signature(auth_token: str, url: str, params: dict[str, str]) -> str:
    """X-Twilio-Signature: base64(HMAC-SHA1(auth_token, url + name + value for each param sorted by name))."""
    payload = url + "".join(name + params[name] for name in sorted(params))
    return base64.b64encode(hmac.new(auth_token.encode(), payload.encode(), hashlib.sha1).digest()).decode()


def _error(status: int, code: int, message: str) -> JSONResponse:
    body = {"code": code, "message": message, "more_info": f"https://www.twilio.com/docs/errors/{code}", "status": status}
    return JSONResponse(body, status_code=status)


def _credentials(request: Request) -> tuple[str, str] | None:
    scheme, _, encoded = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        user, _, password = base64.b64decode(encoded).decode().partition(":")
    except ValueError:
        return None
    return user, password


async def _messages(request: Request) -> JSONResponse:
    state: SandboxState = request.app.state.sandbox
    sid = request.path_params["sid"]
    account = next((acc for acc in state.config.twilio if acc.account_sid == sid), None)
    if account is None or _credentials(request) != (account.account_sid, account.auth_token):
        state.refuse(TWILIO)
        return _error(401, 20003, "Authenticate")
    try:
        params = await read_params(request)
    except BadRequest as exc:
        state.refuse(TWILIO)
        return _error(400, 21600, str(exc))
    fields = {name: str(value) for name, value in params}
    media = [str(value) for name, value in params if name == "MediaUrl"]
    to, sender = fields.get("To", ""), fields.get("From", "") or fields.get("MessagingServiceSid", "")
    body, content_sid = fields.get("Body", ""), fields.get("ContentSid", "")
    whatsapp = to.startswith(WHATSAPP)
    problem = (
        (21604, "A 'To' phone number is required.") if not to else
        (21603, "A 'From' phone number is required.") if not sender else
        (21602, "Message body is required.") if not (body or media or content_sid) else
        (21211, f"Invalid 'To' Phone Number: {to}") if not _E164.match(to.removeprefix(WHATSAPP)) else
        (21910, "Invalid From and To pair. From and To should be of the same channel")
        if "MessagingServiceSid" not in fields and whatsapp != sender.startswith(WHATSAPP) else
        (21617, "The concatenated message body exceeds the 1600 character limit.") if len(body) > MAX_BODY else
        (21623, f"Too many media URLs: at most {MAX_MEDIA}") if len(media) > MAX_MEDIA else
        (21656, "The ContentVariables Parameter is invalid.") if not _json_object(fields.get("ContentVariables")) else
        None
    )
    if problem:
        state.refuse(TWILIO)
        return _error(400, *problem)
    if refusal := await state.admit(request, TWILIO, sid, account.rate_limit_per_s):
        state.refuse(TWILIO)
        if refusal.status == 429:
            return _error(429, 20429, "Too Many Requests")  # no Retry-After on the 2010 API
        return _error(refusal.status, 20000 + refusal.status, refusal.description)

    recipient = to.removeprefix(WHATSAPP)
    outcome = outcome_for(TWILIO, recipient)
    if outcome == WINDOW and (content_sid or not whatsapp):
        outcome = DELIVER  # a template may open a conversation; SMS has no window
    record = {
        "account": sid,
        "channel": "whatsapp" if whatsapp else "sms",
        "recipient": recipient,
        "sender": sender,
        "text": body or None,
        "content_sid": content_sid or None,
        "content_variables": fields.get("ContentVariables"),
        "media_urls": media,
        "status_callback": fields.get("StatusCallback"),
        "send_id": None,
    }
    if outcome == OPTED_OUT:
        state.record(TWILIO, outcome, accepted=False, provider_message_id=None, **record)
        return _error(400, 21610, "Attempt to send to unsubscribed recipient")

    message_sid = ("MM" if media else "SM") + secrets.token_hex(16)
    state.record(TWILIO, outcome, accepted=True, provider_message_id=message_sid, **record)
    message = {"sid": message_sid, "account_sid": sid, "from": sender, "to": to}
    chain = []
    if callback_url := fields.get("StatusCallback") or account.webhook_url:
        chain = [_status_callback(account, callback_url, message, status, code) for status, code in _statuses(outcome, whatsapp)]
    if outcome == STOP and (inbound_url := account.inbound_url or account.webhook_url):
        chain.append(_inbound_stop(account, inbound_url, message, whatsapp))
    state.dispatcher.submit(chain)
    return JSONResponse(_resource(message, fields, media, whatsapp), status_code=201)


def _json_object(text: str | None) -> bool:
    if text is None:
        return True
    try:
        return isinstance(json.loads(text), dict)
    except ValueError:
        return False


def _statuses(outcome: str, whatsapp: bool) -> list[tuple[str, int | None]]:
    """(MessageStatus, ErrorCode) callbacks of one outcome, in order. Twilio sends none for `queued`."""
    if outcome == UNDELIVERED:
        return [("sent", None), ("undelivered", 30003)]
    if outcome == WINDOW:
        return [("failed", 63016)]
    if outcome == READ and whatsapp:
        return [("sent", None), ("delivered", None), ("read", None)]
    return [("sent", None), ("delivered", None)]


def _signed(account: TwilioAccount, url: str, params: dict[str, str]) -> Callback:
    token = str(uuid.uuid4())  # one idempotency token per callback, the same on every retry

    def build() -> tuple[dict[str, str], dict[str, str]]:
        headers = {
            "X-Twilio-Signature": signature(account.auth_token, url, params),
            "I-Twilio-Idempotency-Token": token,
            "User-Agent": "TwilioProxy/1.1",
        }
        return params, headers

    return Callback(url, build, form=True)


def _status_callback(account: TwilioAccount, url: str, message: dict[str, str], status: str, code: int | None) -> Callback:
    params = {
        "AccountSid": message["account_sid"],
        "ApiVersion": API_VERSION,
        "From": message["from"],
        "To": message["to"],
        "MessageSid": message["sid"],
        "SmsSid": message["sid"],
        "MessageStatus": status,
        "SmsStatus": status,
    }
    if message["to"].startswith(WHATSAPP):
        params["ChannelPrefix"] = "whatsapp"
        params["ChannelToAddress"] = message["to"].removeprefix(WHATSAPP)
    if code is not None:
        params["ErrorCode"] = str(code)
    return _signed(account, url, params)


def _inbound_stop(account: TwilioAccount, url: str, message: dict[str, str], whatsapp: bool) -> Callback:
    sid = "SM" + secrets.token_hex(16)
    params = {
        "AccountSid": message["account_sid"],
        "ApiVersion": API_VERSION,
        "MessageSid": sid,
        "SmsMessageSid": sid,
        "SmsSid": sid,
        "SmsStatus": "received",
        "From": message["to"],
        "To": message["from"],
        "Body": "STOP",
        "NumMedia": "0",
        "NumSegments": "1",
    }
    if whatsapp:
        params.update(ProfileName="Sandbox user", WaId=message["to"].removeprefix(WHATSAPP + "+"), MessageType="text")
    else:
        params["OptOutType"] = "STOP"  # Advanced Opt-Out marks the keyword on SMS
    return _signed(account, url, params)


def _segments(body: str) -> int:
    """SMS segments: 160/153 characters for plain ASCII (≈ GSM-7), 70/67 for anything else (UCS-2)."""
    single, multi = (160, 153) if body.isascii() else (70, 67)
    return 1 if len(body) <= single else -(-len(body) // multi)


def _resource(message: dict[str, str], fields: dict[str, str], media: list[str], whatsapp: bool) -> dict[str, Any]:
    """The Message resource as Messages.json returns it on create (status `queued`, no Messaging Service)."""
    now = format_datetime(datetime.now(UTC), usegmt=True)
    uri = f"/{API_VERSION}/Accounts/{message['account_sid']}/Messages/{message['sid']}.json"
    body = fields.get("Body", "")
    return {
        "account_sid": message["account_sid"],
        "api_version": API_VERSION,
        "body": body,
        "date_created": now,
        "date_sent": None,
        "date_updated": now,
        "direction": "outbound-api",
        "error_code": None,
        "error_message": None,
        "from": message["from"],
        "messaging_service_sid": fields.get("MessagingServiceSid"),
        "num_media": str(len(media)),
        "num_segments": "1" if whatsapp else str(_segments(body)),
        "price": None,
        "price_unit": "USD",
        "sid": message["sid"],
        "status": "queued",
        "subresource_uris": {"media": uri.replace(".json", "/Media.json")},
        "to": message["to"],
        "uri": uri,
    }
