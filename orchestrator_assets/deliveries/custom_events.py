"""Tenant-posted custom events from the inbox: a trigger occurrence, and a conversion when marked so.

The gateway stored the post (``gateway/events.py``) under the source ``events``; here, inside the
processing run's transaction, it becomes a ``trigger_events`` row ``custom:<name>`` (which
``trigger_campaign_sensor`` turns into campaign runs, exactly like a Telegram /start) and, with
``conversion: true``, one warehouse event ``conversion`` (reason = the event's name, the contact,
its time; no send, so no funnel counts it) that A/B goals count. Both are idempotent: the trigger
row is unique per inbox row, the warehouse event's id is the stored idempotency key.

A post naming a contact we do not hold (yet) is retried with backoff and then dead-lettered,
as a callback for an unknown message is: the tenant may post before its contact import commits.
A contact merged into another is the survivor's event.
"""

from __future__ import annotations

import datetime as dt

import sqlalchemy as sa

from resources.custom_events import CONVERSION, EVENTS, PostedEvent
from resources.opstore_schema import contacts, trigger_events
from resources.sql import upsert_insert


def apply_custom_event(conn: sa.Connection, tenant: str, row, payload: dict, now: dt.datetime, tally, warehouse_rows: list[tuple]) -> str | None:
    """Apply one stored post; returns why it must be retried, or None when done."""
    event = PostedEvent.model_construct(**payload)  # validated by the gateway before it was stored
    occurred_at = dt.datetime.fromisoformat(payload["occurred_at"])
    reference = contacts.c.id == event.contact_id if event.contact_id is not None else contacts.c.external_id == event.external_id
    found = conn.execute(sa.select(contacts.c.id, contacts.c.merged_into).where(contacts.c.tenant == tenant, reference)).first()
    if found is None:
        tally["custom_event_unknown_contact"] += 1
        return f"custom event {event.name!r} for a contact this tenant does not hold (yet)"
    contact_id = found.merged_into or found.id
    values = {"tenant": tenant, "event": event.occurrence, "contact_id": contact_id, "inbox_id": row.id, "occurred_at": occurred_at, "recorded_at": now}
    tally[f"custom:{event.name}"] += conn.execute(upsert_insert(conn, trigger_events).on_conflict_do_nothing(), [values]).rowcount
    if event.conversion:
        warehouse_rows.append((tenant, f"{EVENTS}:{row.event_key}", CONVERSION, "", "", "", "", contact_id, "", event.name, occurred_at))
        tally["conversions"] += 1
    return None
