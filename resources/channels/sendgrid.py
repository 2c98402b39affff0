"""Twilio SendGrid connector (v3 Mail Send) and Event Webhook helpers.

Send: `POST {base_url}/v3/mail/send`, JSON, `Authorization: Bearer <API key>`. One call carries up to
1000 personalizations, one per recipient, each with its own `subject`, `custom_args.send_id` (our
ledger id: SendGrid echoes custom args as top-level fields of every event), List-Unsubscribe
`headers` and, when the body contains the recipient's unsubscribe link, a `substitutions` entry for
it. `content` (text/plain, then text/html with CSS inlined) is shared by the call, so only messages
whose bodies agree once their own unsubscribe URL is templated share a call
(`resources.channels.batching`). Success is 202 with an empty body and the message id in the
`X-Message-Id` header: one id per call, given to every message of the call; events are matched by
send_id (their `sg_message_id` is that id plus a ".filter…" suffix).
Event Webhook: a JSON array of events, signed with ECDSA P-256/SHA-256 over
`X-Twilio-Email-Event-Webhook-Timestamp` + raw body; the signature (base64 DER) is in
`X-Twilio-Email-Event-Webhook-Signature`, the public key (base64 DER SubjectPublicKeyInfo) is shown
in the settings and by `GET /v3/user/webhooks/event/settings/signed`. Events are deduplicated by
`sg_event_id`.
Source: SendGrid Mail Send / errors / rate-limit / Event Webhook docs and
shared/reference/provider-protocols.md §4.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from email.utils import parseaddr
from typing import Any

import css_inline
import httpx
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_der_public_key

from resources.channels.base import (
    CLICKED,
    COMPLAINED,
    DELIVERED,
    DELIVERY_FAILED,
    IGNORED,
    OPENED,
    RATE_LIMITED,
    REJECTED,
    TRANSIENT,
    UNSUBSCRIBED,
    CallbackEvent,
    HttpClient,
    OutboundMessage,
    SendResult,
    fresh_timestamp,
    json_object,
    transport_failure,
    utc_from_timestamp,
)
from resources.channels.batching import Batch, plan

# How old a signature the gateway accepts. SendGrid retries a batch that got no 2xx for up to 24
# hours (Event Webhook docs). Whether a retry is signed anew is documented nowhere we found, so the
# window assumes it carries the first attempt's timestamp, with margin for a late first attempt.
# The signature covers the body: a replay within the window is the same events, which the inbox
# already holds under their sg_event_id.
SIGNATURE_MAX_AGE_S = 36 * 3600

SIGNATURE_HEADER = "X-Twilio-Email-Event-Webhook-Signature"
TIMESTAMP_HEADER = "X-Twilio-Email-Event-Webhook-Timestamp"
MAX_PERSONALIZATIONS = 1000
SEND_ID = "send_id"  # the custom_args key carrying our ledger id
# The substitution tag standing for the recipient's own unsubscribe URL in a shared body.
UNSUBSCRIBE_TAG = "-algor_unsubscribe_url-"

# processed and deferred are intermediate (SendGrid keeps trying after a deferral): ignored.
_EVENT_KINDS = {
    "delivered": DELIVERED,
    "bounce": DELIVERY_FAILED,
    "dropped": DELIVERY_FAILED,
    "open": OPENED,
    "click": CLICKED,
    "spamreport": COMPLAINED,
    "unsubscribe": UNSUBSCRIBED,
    "group_unsubscribe": UNSUBSCRIBED,
}


class SendGridConnector:
    """Sends e-mail through one SendGrid API key, one batch of personalizations per call; never
    retries (the caller owns retry policy)."""

    provider = "sendgrid"
    channel = "email"
    provider_deduplicates = False  # mail/send has no idempotency key
    ledger_dedup_ids = False
    delivery_receipts = True  # delivered / bounce / dropped events

    def __init__(self, base_url: str, api_key: str, sender: str, max_batch: int = MAX_PERSONALIZATIONS):
        if not 1 <= max_batch <= MAX_PERSONALIZATIONS:
            raise ValueError(f"max_batch must be 1-{MAX_PERSONALIZATIONS}, not {max_batch}")
        self._url = f"{base_url.rstrip('/')}/v3/mail/send"
        self._headers = {"Authorization": f"Bearer {api_key}"}
        name, address = parseaddr(sender)
        self._from = {"email": address, **({"name": name} if name else {})}
        self.max_batch = max_batch

    def body(self, batch: Batch, messages: Sequence[OutboundMessage]) -> dict[str, Any]:
        """The mail/send JSON of one call: the batch's shared content and one personalization per member."""
        personalizations = []
        for index in batch.indexes:
            message = messages[index]
            item: dict[str, Any] = {"to": [{"email": message.address}], "custom_args": {SEND_ID: message.send_id}}
            if message.subject is not None:  # no subject anywhere → SendGrid answers 400: the honest outcome
                item["subject"] = message.subject
            if url := message.unsubscribe_url:
                # RFC 8058 one-click unsubscribe, per recipient: headers are per personalization.
                item["headers"] = {"List-Unsubscribe": f"<{url}>", "List-Unsubscribe-Post": "List-Unsubscribe=One-Click"}
                if UNSUBSCRIBE_TAG in batch.text or UNSUBSCRIBE_TAG in (batch.html or ""):
                    item["substitutions"] = {UNSUBSCRIBE_TAG: url}
            personalizations.append(item)
        content = [{"type": "text/plain", "value": batch.text}] if batch.text else []  # text/plain must come first
        if batch.html:
            content.append({"type": "text/html", "value": css_inline.inline(batch.html)})
        return {"personalizations": personalizations, "from": self._from, "content": content}

    async def send(self, client: HttpClient, message: OutboundMessage) -> SendResult:
        return (await self.send_batch(client, [message]))[0]

    async def send_batch(self, client: HttpClient, messages: list[OutboundMessage]) -> list[SendResult]:
        """One result per message, in order; one call per batch of `batching.plan`, one after another.

        A 400 on a call of several personalizations sends nothing, but the fault may be one
        recipient's (an invalid address): that call's messages are then sent one by one, so one bad
        address cannot sink the others. That is not a retry: the 400 rules out a duplicate.
        """
        results: dict[int, SendResult] = {}
        for batch in plan(messages, UNSUBSCRIBE_TAG, self.max_batch, shared_subject=False):
            status, shared = await self._post(client, self.body(batch, messages))
            if status == 400 and len(batch.indexes) > 1:
                for index in batch.indexes:
                    results[index] = (await self._post(client, self.body(_single(batch, index, messages), messages)))[1]
            else:
                results.update(dict.fromkeys(batch.indexes, shared))
        return [results[index] for index in range(len(messages))]

    async def _post(self, client: HttpClient, body: dict[str, Any]) -> tuple[int | None, SendResult]:
        """(HTTP status or None without an answer, result)."""
        try:
            response = await client.post(self._url, json=body, headers=self._headers)
        except httpx.HTTPError as exc:
            return None, transport_failure(exc)
        return response.status_code, classify(response.status_code, json_object(response), response.headers)


def classify(status: int, body: Mapping[str, Any], headers: Mapping[str, str] | None = None, now: float | None = None) -> SendResult:
    """Map a mail/send answer to a SendResult.

    2xx: accepted (202; the id is the X-Message-Id header, possibly absent, which does not make the
    acceptance doubtful). 429: rate limited, `retry_after` = X-RateLimit-Reset (Unix time) − now.
    5xx: transient. Every other status (400 payload, 401/403 key or permission, 413 too large) is
    our request's fault: rejected. The error text joins `errors[].message`.
    """
    headers = httpx.Headers(headers or {})
    if 200 <= status < 300:
        return SendResult(ok=True, provider_message_id=headers.get("x-message-id") or None)
    messages = [str(item.get("message")) for item in body.get("errors") or [] if isinstance(item, Mapping)]
    error = "; ".join(messages) or f"HTTP {status}"
    if status == 429:
        reset = headers.get("x-ratelimit-reset", "")
        wait = max(0.0, float(reset) - (time.time() if now is None else now)) if reset.isdigit() else None
        return SendResult(ok=False, error_class=RATE_LIMITED, error=error, retry_after=wait)
    if status >= 500:
        return SendResult(ok=False, error_class=TRANSIENT, error=error)
    return SendResult(ok=False, error_class=REJECTED, error=error)


def verify_webhook(
    public_key_b64: str,
    signature_b64: str,
    timestamp: str,
    raw_body: bytes | str,
    *,
    now: float | None = None,
    max_age_s: int = SIGNATURE_MAX_AGE_S,
) -> bool:
    """True when `signature_b64` is a valid ECDSA P-256/SHA-256 signature of `timestamp + raw_body`.

    `raw_body` must be the bytes as received, before any JSON parsing. With `now`, a timestamp more
    than `max_age_s` old (or ahead of `now` by more than the clock skew) is refused too (replay
    protection: ``SIGNATURE_MAX_AGE_S`` says why the window is wide). A malformed key, signature or
    timestamp is False, never an exception; an empty key verifies nothing.
    """
    if isinstance(raw_body, str):
        raw_body = raw_body.encode()
    try:
        key = load_der_public_key(base64.b64decode(public_key_b64, validate=True))
        signature = base64.b64decode(signature_b64, validate=True)
    except (ValueError, binascii.Error, TypeError):
        return False
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        return False
    if now is not None and not fresh_timestamp(timestamp, now, max_age_s):
        return False
    try:
        key.verify(signature, timestamp.encode() + raw_body, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        return False
    return True


def event_key(event: Mapping[str, Any]) -> str:
    """The dedup key of one event: `sg_event_id`. An event without one (SendGrid always sends it)
    gets "sha256:<hash of its canonical JSON>", so a redelivery of the same event still dedups."""
    if not isinstance(event, Mapping):
        raise ValueError("SendGrid event is not a JSON object")
    if event_id := event.get("sg_event_id"):
        return str(event_id)
    canonical = json.dumps(event, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()


def parse_events(payload: Sequence[Mapping[str, Any]]) -> list[CallbackEvent]:
    """One Event Webhook POST (a JSON array) → one CallbackEvent per event, in order.

    delivered → DELIVERED; bounce and dropped → DELIVERY_FAILED with reason "bounce: <why>",
    "dropped: <why>", or "blocked: <why>" for a bounce of type "blocked" (a reputation or policy
    refusal, not a bad address: do not suppress the recipient for it); open → OPENED; click → CLICKED (reason = url); spamreport → COMPLAINED;
    unsubscribe and group_unsubscribe → UNSUBSCRIBED; processed, deferred and anything unknown →
    IGNORED (reason = the event name). `send_id` is our custom arg, echoed as a top-level field.
    Unknown fields are ignored. Raises ValueError when the payload is not a list of objects.
    """
    if not isinstance(payload, Sequence) or isinstance(payload, str | bytes):
        raise ValueError("SendGrid Event Webhook payload is not a JSON array")
    return [_event(event) for event in payload]


def provider_message_id(sg_message_id: str | None) -> str | None:
    """The X-Message-Id of the send an event's `sg_message_id` belongs to (the part before ".filter")."""
    return sg_message_id.split(".filter", 1)[0] if sg_message_id else None


def _event(event: Mapping[str, Any]) -> CallbackEvent:
    key = event_key(event)
    name = str(event.get("event") or "")
    kind = _EVENT_KINDS.get(name, IGNORED)
    if kind == DELIVERY_FAILED:
        detail = event.get("reason") or event.get("response") or event.get("status") or ""
        reason = f"{event.get('type') or name}: {detail}".strip(": ")
    elif kind == CLICKED:
        reason = str(event.get("url") or "")
    elif kind == IGNORED:
        reason = name
    else:
        reason = ""
    timestamp, send_id, message_id = event.get("timestamp"), event.get(SEND_ID), event.get("sg_message_id")
    return CallbackEvent(
        event_key=key,
        kind=kind,
        provider_message_id=provider_message_id(str(message_id)) if message_id else None,
        address=str(event["email"]) if event.get("email") else None,
        occurred_at=utc_from_timestamp(timestamp) if timestamp not in (None, "") else datetime.now(UTC),
        reason=reason,
        send_id=str(send_id) if send_id else None,
    )


def _single(batch: Batch, index: int, messages: Sequence[OutboundMessage]) -> Batch:
    """A batch of one member of `batch` (its content stays templated; the substitution restores it)."""
    return Batch((index,), None, batch.text, batch.html, messages[index].unsubscribe_url is not None)
