"""Twilio Programmable Messaging connector (WhatsApp and SMS) and webhook helpers.

Send: `POST {base_url}/2010-04-01/Accounts/{AccountSid}/Messages.json`, form-urlencoded, HTTP Basic
`AccountSid:AuthToken`. WhatsApp addresses carry the `whatsapp:` prefix on both `To` and `From`; SMS
uses the plain E.164 number. A `TemplateRef` is sent as `ContentSid` + `ContentVariables` (JSON
`{"1": …, "2": …}`) with no `Body`: since 2025-04-01 a template sent as `Body` outside the 24-hour
window fails with 63016. The provider id is the answer's `sid` (`SM…`/`MM…`).
Twilio has no idempotency key on Messages create, so a resend after an ambiguous failure may duplicate.
Delivery receipts go only to the message's `StatusCallback`: `resources.connectors` sets it to the
tenant's hook on the public gateway URL, so they come back signed to the right tenant.

Webhooks (status callbacks and inbound messages) are form-urlencoded POSTs signed with
`X-Twilio-Signature = base64(HMAC-SHA1(AuthToken, URL + each POST param sorted by name: name + value))`;
JSON bodies are signed over the URL alone, which then carries `bodySHA256=<hex sha256(body)>`.
Status callbacks are deduplicated by (MessageSid, MessageStatus), inbound messages by MessageSid.
Source: https://www.twilio.com/docs/usage/security, twilio-python `request_validator.py`, error pages
21610 / 63016 / 20429, and shared/reference/provider-protocols.md §5.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

from resources.channels.base import (
    DELIVERED,
    DELIVERY_FAILED,
    IGNORED,
    OPENED,
    OPT_IN,
    OPT_OUT,
    RATE_LIMITED,
    REJECTED,
    TRANSIENT,
    UNREACHABLE,
    CallbackEvent,
    HttpClient,
    OutboundMessage,
    SendResult,
    json_object,
    post_or_failure,
    refusal,
)

SIGNATURE_HEADER = "X-Twilio-Signature"
WHATSAPP_PREFIX = "whatsapp:"
MAX_MEDIA = 10  # MediaUrl values per message

OPTED_OUT = 21610  # the recipient replied STOP to this sender
NEEDS_TEMPLATE = 63016  # WhatsApp outside the 24-hour window: resend as a ContentSid template
# The recipient cannot be reached on this channel: stop sending to it.
UNREACHABLE_CODES = frozenset({OPTED_OUT, 21211, 21614, 30003, 30005, 30006})
TRANSIENT_CODES = frozenset({30001, 30008})  # queue overflow, unknown error
RATE_LIMIT_CODES = frozenset({20429})

# Keywords Twilio itself treats as opt-out / opt-in on long codes, plus the Russian "стоп".
STOP_KEYWORDS = frozenset({"stop", "unsubscribe", "end", "quit", "stopall", "revoke", "optout", "cancel", "стоп"})
# Not "yes": a plain "yes" answers many questions, and an accidental re-subscription is the worse error.
# Twilio's own opt-in handling of YES still arrives, as OptOutType=START.
START_KEYWORDS = frozenset({"start", "unstop"})

_FORM = {"Content-Type": "application/x-www-form-urlencoded"}
_STATUS_KINDS = {"delivered": DELIVERED, "read": OPENED, "undelivered": DELIVERY_FAILED, "failed": DELIVERY_FAILED}
_INBOUND_STATUSES = frozenset({"received", "receiving"})


class TwilioConnector:
    """Sends one WhatsApp message or SMS per call from one sender; never retries (the caller owns retry policy).

    `buttons` are not sent: Twilio puts buttons only in approved content templates (twilio/quick-reply),
    so a message that needs them must use a `TemplateRef` whose template has them.
    """

    provider = "twilio"
    provider_deduplicates = False  # no idempotency key on Messages create
    ledger_dedup_ids = False
    delivery_receipts = True  # StatusCallback: delivered / undelivered / failed

    def __init__(
        self,
        base_url: str,
        account_sid: str,
        auth_token: str,
        sender: str,
        status_callback: str | None = None,
        channel: str = "whatsapp",
    ):
        if channel not in ("whatsapp", "sms"):
            raise ValueError(f"Twilio channel must be 'whatsapp' or 'sms', not {channel!r}")
        self.channel = channel
        self._url = f"{base_url.rstrip('/')}/2010-04-01/Accounts/{account_sid}/Messages.json"
        self._auth = (account_sid, auth_token)
        self._sender = sender
        self._status_callback = status_callback

    def validate(self, message: OutboundMessage) -> None:
        """Raise ValueError for a message Twilio would refuse or that this connector cannot express."""
        if len(message.attachments) > MAX_MEDIA:
            raise ValueError(f"Twilio takes at most {MAX_MEDIA} MediaUrl per message, got {len(message.attachments)}")
        if message.template is not None and message.attachments:
            raise ValueError("a content template carries its own media: send it without attachments")
        if message.template is None and not message.text and not message.attachments:
            raise ValueError("nothing to send: no text, template or attachment")

    def fields(self, message: OutboundMessage) -> list[tuple[str, str]]:
        """The form fields of one send, in order (MediaUrl repeated)."""
        fields = [("To", self._address(message.address)), ("From", self._address(self._sender))]
        if message.template is not None:
            variables = {str(n): value for n, value in enumerate(message.template.variables, start=1)}
            fields.append(("ContentSid", message.template.template_id))
            if variables:
                fields.append(("ContentVariables", json.dumps(variables, ensure_ascii=False)))
        else:
            if message.text:
                fields.append(("Body", message.text))
            fields.extend(("MediaUrl", attachment.url) for attachment in message.attachments)
        if self._status_callback:
            fields.append(("StatusCallback", self._status_callback))
        return fields

    async def send(self, client: HttpClient, message: OutboundMessage) -> SendResult:
        """One Messages.json call. A message `validate` refuses is REJECTED without calling Twilio."""
        if (refused := refusal(self.validate, message)) is not None:
            return refused
        # Encoded by hand: httpx's `data=` takes a dict, and MediaUrl repeats.
        response = await post_or_failure(client.post(self._url, auth=self._auth, content=urlencode(self.fields(message)), headers=_FORM))
        if isinstance(response, SendResult):
            return response
        return classify(response.status_code, json_object(response), response.headers)

    def _address(self, number: str) -> str:
        if self.channel == "whatsapp" and not number.startswith(WHATSAPP_PREFIX):
            return WHATSAPP_PREFIX + number
        return number


def classify(status: int, body: Mapping[str, Any], headers: Mapping[str, str] | None = None) -> SendResult:
    """Map a Messages.json answer (`{"code","message","more_info","status"}` on errors) to a SendResult."""
    code = _int(body.get("code"))
    message = str(body.get("message") or f"HTTP {status}")
    error = f"{code}: {message}" if code is not None else message
    if 200 <= status < 300 and body.get("sid"):
        return SendResult(ok=True, provider_message_id=str(body["sid"]))
    if status == 429 or code in RATE_LIMIT_CODES:
        return SendResult(ok=False, error_class=RATE_LIMITED, error=error, retry_after=_retry_after(headers))
    if code == OPTED_OUT:
        return SendResult(ok=False, error_class=UNREACHABLE, error=f"opted out: {error}")
    if code in UNREACHABLE_CODES:
        return SendResult(ok=False, error_class=UNREACHABLE, error=error)
    if code == NEEDS_TEMPLATE:
        # Not an opt-out: the recipient is fine, the message must be an approved template.
        return SendResult(ok=False, error_class=REJECTED, error=f"needs a template (outside the 24-hour window): {error}")
    if status >= 500 or code in TRANSIENT_CODES or 200 <= status < 300:  # a 2xx without a sid is garbled
        return SendResult(ok=False, error_class=TRANSIENT, error=error)
    return SendResult(ok=False, error_class=REJECTED, error=error)  # 20003 bad credentials, 21602/21604 …


# --- signatures ------------------------------------------------------------------------------------

Params = Mapping[str, str] | Iterable[tuple[str, str]]


def compute_signature(auth_token: str, url: str, params: Params | None = None) -> str:
    """base64(HMAC-SHA1(auth_token, url + name + value for each param, sorted by name, then value)).

    `params` is a mapping or a list of pairs (a repeated name, e.g. MediaUrl0, is signed once per value).
    """
    pairs = sorted(_pairs(params) if params is not None else ())
    payload = url + "".join(f"{name}{value}" for name, value in pairs)
    digest = hmac.new(auth_token.encode(), payload.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


def body_sha256(body: bytes | str) -> str:
    """hex(SHA-256(body)): the `bodySHA256` query value Twilio adds when it posts a JSON body."""
    return hashlib.sha256(body.encode() if isinstance(body, str) else body).hexdigest()


def verify_webhook(url: str, params_or_body: Params | bytes | str, signature: str | None, auth_token: str) -> bool:
    """True when `signature` (the X-Twilio-Signature header) is Twilio's for this request.

    `url` is the full public URL Twilio called, query string included (not one rewritten by a proxy).
    Form posts: pass the POST params. JSON posts: pass the raw body; its SHA-256 must match the URL's
    `bodySHA256` and the signature then covers the URL alone. Like Twilio's SDKs, the URL is tried with
    and without its port (Twilio is inconsistent about :443). Constant-time; an empty token verifies nothing.
    """
    if not auth_token or not signature:
        return False
    params: Params = ()
    if isinstance(params_or_body, bytes | str):
        claimed = parse_qs(urlsplit(url).query).get("bodySHA256", [""])[0]
        if not claimed or not hmac.compare_digest(claimed.encode(), body_sha256(params_or_body).encode()):
            return False
    else:
        params = _pairs(params_or_body)
    return any(
        hmac.compare_digest(compute_signature(auth_token, candidate, params).encode(), signature.encode())
        for candidate in _url_variants(url)
    )


def _pairs(params: Params) -> list[tuple[str, str]]:
    """(name, value) pairs, keeping repeats of a multi-dict (Starlette FormData, Django QueryDict)."""
    if hasattr(params, "multi_items"):
        return list(params.multi_items())  # type: ignore[union-attr]
    if isinstance(params, Mapping):
        return list(params.items())
    return list(params)


def _url_variants(url: str) -> list[str]:
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    userinfo = parts.netloc.rpartition("@")[0]
    host = f"{userinfo}@{host}" if userinfo else host
    default_port = 443 if parts.scheme == "https" else 80
    without = urlunsplit(parts._replace(netloc=host))
    with_port = url if parts.port else urlunsplit(parts._replace(netloc=f"{host}:{default_port}"))
    return list(dict.fromkeys((url, without, with_port)))


# --- callbacks -------------------------------------------------------------------------------------


def is_inbound(params: Mapping[str, str]) -> bool:
    """An inbound message (someone wrote to our number) rather than a status callback for our message."""
    status = params.get("MessageStatus") or params.get("SmsStatus") or ""
    return status in _INBOUND_STATUSES or ("MessageStatus" not in params and "Body" in params)


def event_key(params: Mapping[str, str]) -> str:
    """"<MessageSid>:<MessageStatus>" for a status callback, "<MessageSid>" for an inbound message.

    Raises ValueError when MessageSid (or a status callback's MessageStatus) is missing.
    """
    sid = params.get("MessageSid") or params.get("SmsSid")
    if not sid:
        raise ValueError("Twilio webhook without MessageSid")
    if is_inbound(params):
        return str(sid)
    status = params.get("MessageStatus") or params.get("SmsStatus")
    if not status:
        raise ValueError("Twilio status callback without MessageStatus")
    return f"{sid}:{status}"


def parse_callback(params: Mapping[str, str], received_at: datetime | None = None) -> list[CallbackEvent]:
    """One webhook POST → one event. Unknown parameters are ignored (Twilio adds them without notice).

    Status callbacks (address = To): `delivered` → DELIVERED, `read` → OPENED, `undelivered`/`failed`
    → DELIVERY_FAILED with reason "<status> <ErrorCode>" plus "unreachable" (21610 and friends: stop
    sending to this address) or "needs a template" (63016: resend as a template; not an opt-out).
    queued/sent/accepted/sending/scheduled/… → IGNORED.
    Inbound messages (address = From): a STOP keyword (or `OptOutType=STOP`) → OPT_OUT, a START
    keyword (or `OptOutType=START`) → OPT_IN, anything else → IGNORED.
    Twilio puts no timestamp on callbacks, so occurred_at is `received_at` (default: now).
    Addresses lose the `whatsapp:` prefix: "+79161234567".
    """
    key = event_key(params)
    now = received_at or datetime.now(UTC)
    sid = str(params.get("MessageSid") or params.get("SmsSid"))
    if is_inbound(params):
        opt_out_type = str(params.get("OptOutType") or "").upper()
        word = _keyword(params.get("Body"))
        if opt_out_type == "STOP" or (not opt_out_type and word in STOP_KEYWORDS):
            kind, reason = OPT_OUT, f"keyword:{word or opt_out_type.lower()}"
        elif opt_out_type == "START" or (not opt_out_type and word in START_KEYWORDS):
            kind, reason = OPT_IN, f"keyword:{word or opt_out_type.lower()}"
        else:
            kind, reason = IGNORED, "inbound message"
        return [_event(key, kind, None, params.get("From"), now, reason)]
    status = str(params.get("MessageStatus") or params.get("SmsStatus"))
    kind = _STATUS_KINDS.get(status, IGNORED)
    reason = status
    if kind == DELIVERY_FAILED:
        reason = _failure_reason(status, _int(params.get("ErrorCode")))
    return [_event(key, kind, sid, params.get("To"), now, reason)]


def _failure_reason(status: str, code: int | None) -> str:
    if code is None:
        return status
    if code in UNREACHABLE_CODES:
        return f"{status} {code}: unreachable" + (" (opted out)" if code == OPTED_OUT else "")
    if code == NEEDS_TEMPLATE:
        return f"{status} {code}: outside the 24-hour window, needs a template"
    return f"{status} {code}"


def _event(key: str, kind: str, provider_id: str | None, address: Any, at: datetime, reason: str) -> CallbackEvent:
    return CallbackEvent(
        event_key=key,
        kind=kind,
        provider_message_id=provider_id,
        address=strip_channel(str(address)) if address else None,
        occurred_at=at,
        reason=reason,
    )


def strip_channel(address: str) -> str:
    """"whatsapp:+79161234567" → "+79161234567"; plain numbers unchanged."""
    return address.removeprefix(WHATSAPP_PREFIX)


def _keyword(body: Any) -> str:
    """The message as a keyword: trimmed, case-folded, trailing punctuation dropped ("Stop!" → "stop")."""
    return str(body or "").strip().rstrip(".!").strip().casefold()


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _retry_after(headers: Mapping[str, str] | None) -> float | None:
    value = next((v for name, v in (headers or {}).items() if name.lower() == "retry-after"), "")
    try:
        return float(value) if value else None
    except ValueError:
        return None
