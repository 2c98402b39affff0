"""Shared shapes for channel connectors: what we send, what the provider answered, what it told us later.

A connector turns one `OutboundMessage` into one provider API call and classifies the answer into a
`SendResult`; it never retries (retry policy belongs to the caller, which knows the ledger). Callback
parsers turn one provider webhook payload into `CallbackEvent`s keyed by the provider's own event id,
so the receiver can deduplicate redeliveries.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import httpx

# Error classes, from the caller's point of view:
UNREACHABLE = "unreachable"  # this recipient cannot be reached on this channel: stop sending to it
TRANSIENT = "transient"  # provider or network hiccup: retry later (a retry may duplicate; no idempotency key)
RATE_LIMITED = "rate_limited"  # slow down; `retry_after` says how long when the provider tells us
REJECTED = "rejected"  # our request is wrong (bad token, bad payload): retrying will not help

# Callback event kinds.
DELIVERED = "delivered"
DELIVERY_FAILED = "delivery_failed"
OPENED = "opened"
CLICKED = "clicked"
COMPLAINED = "complained"
UNSUBSCRIBED = "unsubscribed"
OPT_OUT = "opt_out"
OPT_IN = "opt_in"
IGNORED = "ignored"  # authentic but uninteresting; still carries an event_key so the receiver can ack it


@dataclass(frozen=True)
class OutboundMessage:
    send_id: str  # our ledger id (uuid str); carried to the provider where it allows (Mailgun v:send_id)
    tenant: str
    campaign: str
    channel: str  # "telegram" | "email"
    address: str  # telegram chat_id as str, or e-mail address
    text: str  # plain text body
    subject: str | None = None
    html: str | None = None  # e-mail HTML (the connector inlines CSS with css_inline)
    buttons: tuple[tuple[str, str], ...] = ()  # (label, callback_data) inline buttons (telegram)
    unsubscribe_url: str | None = None  # e-mail: List-Unsubscribe target


@dataclass(frozen=True)
class SendResult:
    ok: bool
    provider_message_id: str | None = None
    error_class: str | None = None  # UNREACHABLE | TRANSIENT | RATE_LIMITED | REJECTED
    error: str | None = None  # the provider's words
    retry_after: float | None = None


@dataclass(frozen=True)
class CallbackEvent:
    event_key: str  # provider's unique event id (dedup key), e.g. "update:900000001", Mailgun event-data.id
    kind: str  # DELIVERED | DELIVERY_FAILED | OPENED | CLICKED | COMPLAINED | UNSUBSCRIBED | OPT_OUT | OPT_IN | IGNORED
    provider_message_id: str | None
    address: str | None
    occurred_at: datetime  # tz-aware UTC
    reason: str = ""
    send_id: str | None = None  # when the provider echoes ours back


class ChannelConnector(Protocol):
    provider: str
    channel: str

    async def send(self, client: httpx.AsyncClient, message: OutboundMessage) -> SendResult: ...


def transport_failure(exc: httpx.HTTPError) -> SendResult:
    """A timeout or connection error: transient, although the provider may already have accepted the send."""
    return SendResult(ok=False, error_class=TRANSIENT, error=f"{type(exc).__name__}: {exc}")


def json_object(response: httpx.Response) -> dict[str, Any]:
    """The response body as a JSON object, or {} when it is not one (some errors are plain text)."""
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def utc_from_timestamp(value: float | int | str) -> datetime:
    """Provider Unix timestamps (seconds, possibly fractional or a string) as aware UTC datetimes."""
    return datetime.fromtimestamp(float(value), tz=UTC)
