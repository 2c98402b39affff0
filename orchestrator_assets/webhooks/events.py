"""The events tenants can subscribe to, built where the state behind them changes.

An event's id is derived from the fact it reports (the provider's event key, the send id, the
consent fact), never from a clock or a counter: the same fact always gets the same id, so an inbox
row processed twice derives the same events and the outbox's unique key drops the repeats, and a
receiver can deduplicate on the ``webhook-id`` header, which carries this id.
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass
from typing import Any

from policies.tenants import WebhookEventType
from resources import warehouse as wh

# Delivery statuses and send outcomes (the warehouse's event kinds) → webhook event types.
MESSAGE_EVENT_TYPES = {
    wh.SENT: WebhookEventType.MESSAGE_SENT,
    wh.SEND_FAILED: WebhookEventType.MESSAGE_SEND_FAILED,
    wh.DELIVERED: WebhookEventType.MESSAGE_DELIVERED,
    wh.DELIVERY_FAILED: WebhookEventType.MESSAGE_DELIVERY_FAILED,
    wh.OPENED: WebhookEventType.MESSAGE_OPENED,
    wh.CLICKED: WebhookEventType.MESSAGE_CLICKED,
    wh.UNSUBSCRIBED: WebhookEventType.MESSAGE_UNSUBSCRIBED,
    wh.COMPLAINED: WebhookEventType.MESSAGE_COMPLAINED,
}
CONSENT_EVENT_TYPES = {"grant": WebhookEventType.CONSENT_GRANTED, "withdraw": WebhookEventType.CONSENT_WITHDRAWN}
_ID_NAMESPACE = uuid.UUID("5f0c3a4e-8d7b-4e63-9a51-2b1f6c0d9e47")


@dataclass(frozen=True)
class WebhookEvent:
    type: WebhookEventType
    event_id: str
    occurred_at: dt.datetime
    data: dict[str, Any]  # JSON-ready; ``contact`` is added when the event is enqueued
    contact_id: int | None = None


def utc_iso(moment: dt.datetime) -> str:
    """ISO 8601 in UTC with a ``Z``; a naive value is UTC (SQLite returns stored times naive)."""
    aware = moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)
    return aware.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def _event_id(event_type: WebhookEventType, tenant: str, *fact: object) -> str:
    return "msg_" + uuid.uuid5(_ID_NAMESPACE, "|".join(map(str, (event_type.value, tenant, *fact)))).hex


def message_event(kind: str, tenant: str, send: Any, source_event: str, reason: str, occurred_at: dt.datetime) -> WebhookEvent:
    """A send outcome or delivery status of ``send`` (a ``sends`` row); ``source_event`` is what
    makes the fact unique: the provider's event key for callbacks, the send id for outcomes."""
    event_type = MESSAGE_EVENT_TYPES[kind]
    data = {
        "send_id": send.send_id,
        "campaign": send.campaign,
        "step": send.step,
        "channel": send.channel,
        "provider": send.provider,
        "provider_message_id": send.provider_message_id,
        "status": kind,
        "reason": reason or None,
        "occurred_at": utc_iso(occurred_at),
    }
    return WebhookEvent(event_type, _event_id(event_type, tenant, source_event), occurred_at, data, send.contact_id)


def consent_event(action: str, tenant: str, contact_id: int, channel: str, purpose: str, source: str, occurred_at: dt.datetime) -> WebhookEvent:
    """A consent granted or withdrawn; the fact is the one ``consent_events`` keys on."""
    event_type = CONSENT_EVENT_TYPES[action]
    moment = utc_iso(occurred_at)
    data = {"channel": channel, "purpose": purpose, "source": source, "occurred_at": moment}
    event_id = _event_id(event_type, tenant, contact_id, channel, purpose, source, moment)
    return WebhookEvent(event_type, event_id, occurred_at, data, contact_id)


def endpoint_disabled_event(tenant: str, subscription: str, url: str, disabled_at: dt.datetime, reason: str, failures: int) -> WebhookEvent:
    """One of the tenant's endpoints was disabled after too many failed attempts in a row
    (``endpoints.record_outcome``); the fact is that endpoint's disabling at that moment."""
    event_type = WebhookEventType.WEBHOOK_ENDPOINT_DISABLED
    moment = utc_iso(disabled_at)
    data = {"subscription": subscription, "url": url, "reason": reason, "consecutive_failures": failures, "occurred_at": moment}
    return WebhookEvent(event_type, _event_id(event_type, tenant, subscription, moment), disabled_at, data)
