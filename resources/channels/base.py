"""Shared shapes for channel connectors: what we send, what the provider answered, what it told us later.

A connector turns one `OutboundMessage` into one provider API call and classifies the answer into a
`SendResult`; it never retries (retry policy belongs to the caller, which knows the ledger). Callback
parsers turn one provider webhook payload into `CallbackEvent`s keyed by the provider's own event id,
so the receiver can deduplicate redeliveries.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
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
OPT_IN = "opt_in"  # an explicit act asking for messages (Telegram /start, VK message_allow, a START keyword)
# Authentic signals that are NOT a request for messages: recorded, no consent change (docs/architecture.md).
UNBLOCKED = "unblocked"  # Telegram: the user unblocked the bot (my_chat_member → member)
JOINED = "joined"  # VK: the user joined the community (group_join)
IGNORED = "ignored"  # authentic but uninteresting; still carries an event_key so the receiver can ack it


@dataclass(frozen=True)
class Attachment:
    kind: str  # "photo" | "document" | "video" | "audio" (each connector says which it supports)
    url: str  # HTTPS URL the provider fetches (or a provider media id, e.g. VK "photo-123_456")
    filename: str | None = None
    caption: str | None = None


@dataclass(frozen=True)
class TemplateRef:
    """A provider-approved template (WhatsApp outside the 24-hour window): Twilio ContentSid, 360dialog name."""

    template_id: str
    language: str = "ru"
    variables: tuple[str, ...] = ()  # positional: {{1}}, {{2}}, …


@dataclass(frozen=True)
class OutboundMessage:
    send_id: str  # our ledger id (uuid str); carried to the provider where it allows (Mailgun v:send_id)
    tenant: str
    campaign: str
    channel: str  # "telegram" | "email" | "vk" | "sms" | "whatsapp"
    address: str  # chat id / peer id as str, e-mail address, or E.164 phone
    text: str  # plain text body
    subject: str | None = None
    html: str | None = None  # e-mail HTML (the connector inlines CSS with css_inline)
    buttons: tuple[tuple[str, str], ...] = ()  # (label, callback_data/payload) inline buttons
    unsubscribe_url: str | None = None  # e-mail: List-Unsubscribe target
    attachments: tuple[Attachment, ...] = ()
    template: TemplateRef | None = None
    # The provider's dedup key where the ledger allocates one per send (VK random_id): the same on
    # every attempt of the send, unique per tenant and provider.
    dedup_id: int | None = None


@dataclass(frozen=True)
class SendResult:
    ok: bool
    provider_message_id: str | None = None
    error_class: str | None = None  # UNREACHABLE | TRANSIENT | RATE_LIMITED | REJECTED
    error: str | None = None  # the provider's words
    retry_after: float | None = None
    # True when the request may have reached the provider although we got no answer (read timeout,
    # connection reset after sending): resending could duplicate unless the provider deduplicates.
    may_have_been_accepted: bool = False


@dataclass(frozen=True)
class CallbackEvent:
    event_key: str  # provider's unique event id (dedup key), e.g. "update:900000001", Mailgun event-data.id
    kind: str  # DELIVERED | DELIVERY_FAILED | OPENED | CLICKED | COMPLAINED | UNSUBSCRIBED | OPT_OUT | OPT_IN | UNBLOCKED | JOINED | IGNORED
    provider_message_id: str | None
    address: str | None
    occurred_at: datetime  # tz-aware UTC
    reason: str = ""
    send_id: str | None = None  # when the provider echoes ours back
    # (campaign, step, contact_id, channel): our own tracked links name the ledger row directly.
    ledger_key: tuple[str, str, int, str] | None = None
    # What the person brought along with an opt-in: the Telegram /start deep-link payload, the VK
    # allow-messages link's key (a signed one names an existing contact: resources/links.py).
    ref: str | None = None


class HttpResponse(Protocol):
    """What connectors read from a provider's answer."""

    status_code: int
    headers: Mapping[str, str]  # names case-insensitive

    @property
    def text(self) -> str: ...

    def json(self) -> Any: ...


class HttpClient(Protocol):
    """The part of ``httpx.AsyncClient`` connectors may use: an ``httpx.AsyncClient`` is one (tests,
    one-off calls), and so is the send path's faster client (``orchestrator_assets.sends.http``),
    which offers no more. Failures raise ``httpx.HTTPError`` subclasses (see ``transport_failure``)."""

    async def post(
        self,
        url: str,
        *,
        json: Any = None,
        data: Mapping[str, Any] | None = None,
        files: Any = None,
        content: str | bytes | None = None,
        params: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        auth: tuple[str, str] | None = None,
    ) -> HttpResponse: ...

    async def get(
        self, url: str, *, params: Mapping[str, Any] | None = None, headers: Mapping[str, str] | None = None, auth: tuple[str, str] | None = None
    ) -> HttpResponse: ...


class ChannelConnector(Protocol):
    provider: str
    channel: str
    # True when the provider itself drops a repeated send of the same send_id (VK random_id, SMSC
    # id + error 9), so an ambiguous send may safely be sent again.
    provider_deduplicates: bool
    # True when that dedup key is a number the ledger allocates at claim time and stores on the
    # row (``OutboundMessage.dedup_id``: VK random_id), rather than one derived from the send id.
    ledger_dedup_ids: bool
    # True when the provider reports delivery (a callback saying delivered or undelivered); False
    # when acceptance is all it ever says (Telegram, VK): then delivery is unknown, never assumed.
    delivery_receipts: bool

    async def send(self, client: HttpClient, message: OutboundMessage) -> SendResult: ...


class BatchConnector(ChannelConnector, Protocol):
    """A connector whose provider takes many recipients in one call (Mailgun, SendGrid)."""

    max_batch: int

    async def send_batch(self, client: HttpClient, messages: list[OutboundMessage]) -> list[SendResult]:
        """One result per message, in the order given."""
        ...


_MAX_TIMESTAMP_DIGITS = 12  # Unix seconds until the year 33658: longer is no clock's time
# How far a signer's clock may run ahead of ours: NTP keeps clocks within seconds of each other.
CLOCK_SKEW_S = 300

# Transport errors raised before any byte of the request left: the provider cannot have seen it.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


def transport_failure(exc: httpx.HTTPError) -> SendResult:
    """A timeout or connection error: transient; unless it happened while connecting, the provider
    may already have accepted the send."""
    return SendResult(
        ok=False,
        error_class=TRANSIENT,
        error=f"{type(exc).__name__}: {exc}",
        may_have_been_accepted=not isinstance(exc, _NOT_SENT),
    )


def refusal(validate: Callable[[OutboundMessage], None], message: OutboundMessage) -> SendResult | None:
    """REJECTED when the connector's own ``validate`` refuses ``message`` (no request is made)."""
    try:
        validate(message)
    except ValueError as exc:
        return SendResult(ok=False, error_class=REJECTED, error=str(exc))
    return None


async def post_or_failure(request: Awaitable[HttpResponse]) -> HttpResponse | SendResult:
    """Await a provider call; a timeout or connection error becomes its transient SendResult."""
    try:
        return await request
    except httpx.HTTPError as exc:
        return transport_failure(exc)


def json_object(response: HttpResponse) -> dict[str, Any]:
    """The response body as a JSON object, or {} when it is not one (some errors are plain text)."""
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def utc_from_timestamp(value: float | int | str) -> datetime:
    """Provider Unix timestamps (seconds, possibly fractional or a string) as aware UTC datetimes.

    Raises ValueError for anything that is not such a time, including numbers too large (or
    infinite) for a date, so callers need to handle one error class only.
    """
    try:
        return datetime.fromtimestamp(float(value), tz=UTC)
    except (OverflowError, OSError) as exc:
        raise ValueError(f"timestamp {str(value)[:32]!r} is out of range") from exc


def unix_seconds(timestamp: str) -> int | None:
    """``timestamp`` as whole Unix seconds when it is ASCII digits of a clock time, else None: for
    signature checks, where ``"²"`` (a digit to ``str.isdigit`` but not to ``int``) or a 400-digit
    number (past a float) must be a refusal, never an exception."""
    if not (timestamp.isascii() and timestamp.isdigit()) or len(timestamp) > _MAX_TIMESTAMP_DIGITS:
        return None
    return int(timestamp)


def fresh_timestamp(timestamp: str, now: float, max_age_s: int) -> bool:
    """True when ``timestamp`` is Unix seconds (``unix_seconds``) at most ``max_age_s`` old and at
    most ``CLOCK_SKEW_S`` ahead of ``now``."""
    seconds = unix_seconds(timestamp)
    return seconds is not None and -CLOCK_SKEW_S <= now - seconds <= max_age_s
