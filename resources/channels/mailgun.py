"""Mailgun connector and webhook helpers.

Send: `POST {base_url}/v3/{domain}/messages`, multipart form, HTTP Basic `api:<key>`. Our ledger id
travels as `v:send_id` and comes back in every event as `event-data.user-variables.send_id`. The
provider id is the answer's "id" without angle brackets, which is how webhooks report it
(`event-data.message.headers.message-id`).
Batch sending: up to 1000 `to` recipients in one call with `recipient-variables`
(`{address: {"send_id": …, "unsubscribe_url": …}}`); `v:send_id` is `%recipient.send_id%` and
List-Unsubscribe `<%recipient.unsubscribe_url%>`, so every recipient gets its own values and its own
events. Which messages can share a call: `resources.channels.batching`. The answer carries one id for
the whole call, so every message of a batch gets that id; events are matched by send_id.
Webhooks: JSON `{"signature": {timestamp, token, signature}, "event-data": {…}}`, signed with
hex(HMAC-SHA256(webhook signing key, timestamp + token)).
Source: Mailgun docs (sending, securing webhooks) and shared/reference/provider-protocols.md §3.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping, Sequence
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
    HttpClient,
    OutboundMessage,
    SendResult,
    fresh_timestamp,
    json_object,
    transport_failure,
    unix_seconds,
    utc_from_timestamp,
)
from resources.channels.batching import Batch, plan

# How old a signature the gateway accepts. Mailgun retries a post it did not get a 200 (or a 406)
# for during 8 hours, at 5 min, 10 min, 15 min, 1 h, 2 h and 4 h ("Automatic Retries"), and a retry
# carries the first attempt's signature block, timestamp included (Mailgun's docs do not say;
# hookdeck's Mailgun reference does, and a receiver checking a few minutes lost mail under load:
# beyondcode/laravel-mailbox#93). The first attempt can leave Mailgun's queue late too. 12 hours
# keeps the last retry with a margin; replays within it meet the token memory and the inbox's key.
SIGNATURE_MAX_AGE_S = 12 * 3600

# recipient-variables keys (the same names as the v:/h: fields they feed).
SEND_ID = "send_id"
UNSUBSCRIBE_URL = "unsubscribe_url"

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
    """Sends e-mail from one sending domain, one message or one batch per call; never retries (the
    caller owns retry policy)."""

    provider = "mailgun"
    channel = "email"
    provider_deduplicates = False  # no idempotency key on messages.send
    ledger_dedup_ids = False
    delivery_receipts = True  # delivered / permanent_fail webhooks
    max_batch = 1000  # Mailgun's limit of recipients per call

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

    def batch_fields(self, batch: Batch, messages: Sequence[OutboundMessage]) -> list[tuple[str, str]]:
        """The form fields of one batch call: the batch's shared content, one `to` per member, and the
        members' own values in `recipient-variables`."""
        members = [messages[index] for index in batch.indexes]
        fields = [("from", self._sender), *(("to", message.address) for message in members)]
        if batch.subject is not None:
            fields.append(("subject", batch.subject))
        fields.append(("text", batch.text))
        if batch.html:
            fields.append(("html", css_inline.inline(batch.html)))
        fields.append(("v:send_id", f"%recipient.{SEND_ID}%"))
        variables: dict[str, dict[str, str]] = {}
        for message in members:
            variables[message.address] = {SEND_ID: message.send_id}
            if message.unsubscribe_url:
                variables[message.address][UNSUBSCRIBE_URL] = message.unsubscribe_url
        if batch.unsubscribe:
            fields.append(("h:List-Unsubscribe", f"<%recipient.{UNSUBSCRIBE_URL}%>"))
            fields.append(("h:List-Unsubscribe-Post", "List-Unsubscribe=One-Click"))
        fields.append(("recipient-variables", json.dumps(variables, ensure_ascii=False)))
        return fields

    async def send(self, client: HttpClient, message: OutboundMessage) -> SendResult:
        return (await self._post(client, self.fields(message)))[1]

    async def send_batch(self, client: HttpClient, messages: list[OutboundMessage]) -> list[SendResult]:
        """One result per message, in order. Calls go out one after another, one per batch of
        `batching.plan` (a batch of one is an ordinary send).

        A 400 on a call of several recipients means nothing was sent, but the fault may be one
        recipient's (an invalid address): that call's messages are then sent one by one, so one bad
        address cannot sink the others. That is not a retry: the 400 rules out a duplicate.
        """
        results: dict[int, SendResult] = {}
        for batch in plan(messages, f"%recipient.{UNSUBSCRIBE_URL}%", self.max_batch):
            if len(batch.indexes) == 1:
                outcome = [await self.send(client, messages[batch.indexes[0]])]
            else:
                status, shared = await self._post(client, self.batch_fields(batch, messages))
                if status == 400:
                    outcome = [await self.send(client, messages[index]) for index in batch.indexes]
                else:
                    outcome = [shared] * len(batch.indexes)
            results.update(zip(batch.indexes, outcome, strict=True))
        return [results[index] for index in range(len(messages))]

    async def _post(self, client: HttpClient, fields: list[tuple[str, str]]) -> tuple[int | None, SendResult]:
        """(HTTP status or None without an answer, result)."""
        # (None, value) parts make httpx send multipart/form-data, as Mailgun documents, without file names.
        files = [(name, (None, value)) for name, value in fields]
        try:
            response = await client.post(self._url, auth=self._auth, files=files)
        except httpx.HTTPError as exc:
            return None, transport_failure(exc)
        return response.status_code, classify(response.status_code, json_object(response), response.text, response.headers)


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


def verify_webhook(payload: Mapping[str, Any], signing_key: str, now: float | None = None, max_age_s: int = SIGNATURE_MAX_AGE_S) -> bool:
    """True when `payload["signature"]` is Mailgun's, over a timestamp that is a clock time; with
    `now`, that timestamp must also be at most `max_age_s` old (and not ahead of `now` by more than
    the clock skew).

    The comparison is constant-time. Replay protection within the window is the caller's job: remember
    each `signature.token` (a fresh 50-character one per event, the same on its retries) and refuse a
    token seen before with another event. An empty signing key verifies nothing.
    """
    signature = payload.get("signature")
    if not signing_key or not isinstance(signature, Mapping):
        return False
    timestamp, token, received = (str(signature.get(name) or "") for name in ("timestamp", "token", "signature"))
    if not (token and received) or unix_seconds(timestamp) is None:
        return False
    if now is not None and not fresh_timestamp(timestamp, now, max_age_s):
        return False
    return hmac.compare_digest(sign(signing_key, timestamp, token).encode(), received.encode())


def signature_age(payload: Mapping[str, Any], now: float) -> float:
    """Seconds from a verified payload's signature timestamp to `now` (negative when it is ahead)."""
    return now - int(payload["signature"]["timestamp"])


def event_key(payload: Mapping[str, Any]) -> str:
    """The dedup key of an event: `event-data.id`. Raises ValueError when it is missing."""
    data = payload.get("event-data")
    event_id = data.get("id") if isinstance(data, Mapping) else None
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
