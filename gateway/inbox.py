"""Durable inbox writes: a verified callback is stored once, before the provider gets its 2xx."""

from __future__ import annotations

import datetime as dt

import sqlalchemy as sa

from resources.opstore_schema import webhook_inbox
from resources.sql import upsert_insert


def store_callback(engine: sa.Engine, tenant: str, provider: str, account: str, event_key: str, payload: str) -> bool:
    """Insert one callback; returns False when the provider's event id was already stored."""
    row = {
        "tenant": tenant,
        "provider": provider,
        "account": account,
        "event_key": event_key,
        "payload": payload,
        "received_at": dt.datetime.now(dt.UTC),
    }
    with engine.begin() as conn:
        result = conn.execute(upsert_insert(conn, webhook_inbox).on_conflict_do_nothing(), [row])
    return result.rowcount == 1


def already_stored(engine: sa.Engine, tenant: str, provider: str, event_key: str) -> bool:
    query = sa.select(webhook_inbox.c.id).where(
        webhook_inbox.c.tenant == tenant, webhook_inbox.c.provider == provider, webhook_inbox.c.event_key == event_key
    )
    with engine.connect() as conn:
        return conn.execute(query).first() is not None
