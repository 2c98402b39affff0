"""Mailgun connector and webhook helpers.

Send: `POST {base_url}/v3/{domain}/messages`, multipart form, HTTP Basic `api:<key>`. Our ledger id
travels as `v:send_id` and comes back in every event as `event-data.user-variables.send_id`. The
provider id is the answer's "id" without angle brackets, which is how webhooks report it
(`event-data.message.headers.message-id`).
Webhooks: JSON `{"signature": {timestamp, token, signature}, "event-data": {…}}`, signed with
hex(HMAC-SHA256(webhook signing key, timestamp + token)).
Source: Mailgun docs (sending, securing webhooks) and shared/reference/provider-protocols.md §3.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import css_inline
import httpx

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
    OutboundMessage,
    SendResult,
    json_object,
    transport_failure,
    utc_from_timestamp,
)

# `failed` is handled apart: only permanent failures are final (Mailgun retries temporary ones itself).
# `rejected` means Mailgun refused before sending (e.g. a suppressed address): as final as a hard bounce.
_EVENT_KINDS = {
    "delivered": DELIVERED,
    "opened": OPENED,
    "clicked": CLICKED,
    "complained": COMPLAINED,
    "unsubscribed": UNSUBSCRIBED,
    "rejected": DELIVERY_FAILED,
}


class MailgunConnector:
    """Sends one e-mail per call from one sending domain; never retries (the caller owns retry policy)."""

    provider = "mailgun"
    channel = "email"
    provider_deduplicates = False  # no idempotency key on messages.send

    def __init__(self, base_url: str, domain: str, api_key: str, sender: str):
        self._url = f"{base_url.rstrip('/')}/v3/{domain}/messages"
        self._auth = ("api", api_key)
        self._sender = sender

    def fields(self, message: OutboundMessage) -> list[tuple[str, str]]:
        """The form fields of one send. HTML gets its CSS inlined: most mail clients drop <style> blocks."""
        fields = [("from", self._sender), ("to", message.address)]
        if message.subject is not None:  # no subject → Mailgun answers 400, which is the honest outcome
            fields.append(("subject", message.subject))
        fields.append(("text", message.text))
        if message.html:
            fields.append(("html", css_inline.inline(message.html)))
        fields.append(("v:send_id", message.send_id))
        if message.unsubscribe_url:
            # RFC 8058 one-click unsubscribe: required by Gmail/Yahoo for bulk senders.
            fields.append(("h:List-Unsubscribe", f"<{message.unsubscribe_url}>"))
            fields.append(("h:List-Unsubscribe-Post", "List-Unsubscribe=One-Click"))
        return fields

    async def send(self, client: httpx.AsyncClient, message: OutboundMessage) -> SendResult:
        # (None, value) parts make httpx send multipart/form-data, as Mailgun documents, without file names.
        files = [(name, (None, value)) for name, value in self.fields(message)]
        try:
            response = await client.post(self._url, auth=self._auth, files=files)
        except httpx.HTTPError as exc:
            return transport_failure(exc)
        return classify(response.status_code, json_object(response), response.text, response.headers)


def classify(
    status: int, body: Mapping[str, Any], text: str = "", headers: Mapping[str, str] | None = None
) -> SendResult:
    """Map a messages-API answer to a SendResult. 400/401/403/404 are our fault (payload, key, domain)."""
    error = str(body.get("message") or text.strip() or f"HTTP {status}")
    if 200 <= status < 300 and body.get("id"):
        return SendResult(ok=True, provider_message_id=str(body["id"]).strip("<>"))
    if status == 429:
        # Mailgun documents no Retry-After; honour one if it ever comes.
        retry_after = (headers or {}).get("retry-after", "")
        return SendResult(
            ok=False,
            error_class=RATE_LIMITED,
            error=error,
            retry_after=float(retry_after) if retry_after.isdigit() else None,
        )
    if status >= 500 or 200 <= status < 300:  # a 2xx without an id is garbled: try again
        return SendResult(ok=False, error_class=TRANSIENT, error=error)
    return SendResult(ok=False, error_class=REJECTED, error=error)


def sign(signing_key: str, timestamp: str, token: str) -> str:
    """hex(HMAC-SHA256(signing_key, timestamp + token)), exactly as Mailgun signs webhooks."""
    return hmac.new(signing_key.encode(), f"{timestamp}{token}".encode(), hashlib.sha256).hexdigest()


def verify_webhook(payload: Mapping[str, Any], signing_key: str, now: float, max_age_s: int = 300) -> bool:
    """True when `payload["signature"]` is Mailgun's and its timestamp is within `max_age_s` of `now`.

    The comparison is constant-time. Replay protection within the window is the caller's job: remember
    each `signature.token` (Mailgun sends a fresh 50-character one per POST) for `max_age_s` and refuse
    a token seen before. An empty signing key verifies nothing.
    """
    signature = payload.get("signature")
    if not signing_key or not isinstance(signature, Mapping):
        return False
    timestamp, token, received = (str(signature.get(name) or "") for name in ("timestamp", "token", "signature"))
    if not (timestamp.isdigit() and token and received):
        return False
    if abs(now - int(timestamp)) > max_age_s:
        return False
    return hmac.compare_digest(sign(signing_key, timestamp, token).encode(), received.encode())


def event_key(payload: Mapping[str, Any]) -> str:
    """The dedup key of an event: `event-data.id`. Raises ValueError when it is missing."""
    event_id = (payload.get("event-data") or {}).get("id")
    if not event_id:
        raise ValueError("Mailgun event without event-data.id")
    return str(event_id)


def parse_event(payload: Mapping[str, Any]) -> list[CallbackEvent]:
    """One webhook POST → one event (a list, like every parser, so receivers treat providers alike).

    `failed` with severity "permanent" → DELIVERY_FAILED (reason "permanent bounce: 550 5.1.1 …");
    "temporary" → IGNORED, because Mailgun keeps retrying and will report the final outcome. A click's
    reason is the clicked URL. Unknown events (accepted, stored, …) → IGNORED, reason = the event name.
    Unknown fields are ignored.
    """
    data = payload.get("event-data") or {}
    name = str(data.get("event") or "")
    if name == "failed":
        kind = DELIVERY_FAILED if data.get("severity") == "permanent" else IGNORED
        reason = _failure_reason(data)
    else:
        kind = _EVENT_KINDS.get(name, IGNORED)
        reason = {IGNORED: name, CLICKED: str(data.get("url") or "")}.get(kind, "")
    message_id = ((data.get("message") or {}).get("headers") or {}).get("message-id")
    send_id = (data.get("user-variables") or {}).get("send_id")
    return [
        CallbackEvent(
            event_key=event_key(payload),
            kind=kind,
            provider_message_id=str(message_id).strip("<>") if message_id else None,
            address=data.get("recipient"),
            occurred_at=utc_from_timestamp(data["timestamp"]) if "timestamp" in data else datetime.now(UTC),
            reason=reason,
            send_id=str(send_id) if send_id else None,
        )
    ]


def _failure_reason(data: Mapping[str, Any]) -> str:
    status = data.get("delivery-status") or {}
    detail = " ".join(str(part) for part in (status.get("code"), status.get("message")) if part)
    return f"{data.get('severity') or 'unknown'} {data.get('reason') or 'failed'}: {detail}".strip(": ")
