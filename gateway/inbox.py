"""Durable inbox writes: a verified callback is stored once, before the provider gets its 2xx."""

from __future__ import annotations

import datetime as dt
import json

import sqlalchemy as sa

from resources.opstore_schema import webhook_inbox
from resources.sql import upsert_insert


def store_callbacks(engine: sa.Engine, tenant: str, provider: str, events: list[tuple[str, dict]]) -> int:
    """Insert a post's events in one transaction, skipping event ids already stored; returns how
    many were new. Nothing is acknowledged to the provider before this commits."""
    if not events:
        return 0
    now = dt.datetime.now(dt.UTC)
    rows = [
        {"tenant": tenant, "provider": provider, "account": provider, "event_key": key, "payload": json.dumps(payload, ensure_ascii=False), "received_at": now}
        for key, payload in events
    ]
    with engine.begin() as conn:
        result = conn.execute(upsert_insert(conn, webhook_inbox).on_conflict_do_nothing(), rows)
    return max(result.rowcount, 0)


def already_stored(engine: sa.Engine, tenant: str, provider: str, event_key: str) -> bool:
    query = sa.select(webhook_inbox.c.id).where(
        webhook_inbox.c.tenant == tenant, webhook_inbox.c.provider == provider, webhook_inbox.c.event_key == event_key
    )
    with engine.connect() as conn:
        return conn.execute(query).first() is not None
