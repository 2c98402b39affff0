"""Replay protection for signatures that do not cover the body (Mailgun signs timestamp + token).

Anyone who saw one genuine post could re-send its signature with an event of their own within the
timestamp window. So a token may be used again only with the event it first came with (a provider
retrying the same post). Tokens live in the operational store, not in a worker's memory, so the
rule holds across every gateway worker and restart; the primary key settles two workers racing.
"""

from __future__ import annotations

import datetime as dt
import hashlib

import sqlalchemy as sa

from resources.opstore_schema import signature_tokens
from resources.sql import upsert_insert

KEEP_FOR = dt.timedelta(minutes=10)  # twice the signature window: older tokens fail the timestamp check anyway
PRUNE_EVERY = 1_000  # claims between deletions of expired tokens


class TokenLedger:
    def __init__(self, engine: sa.Engine) -> None:
        self._engine = engine
        self._claims = 0

    def first_use_or_same_event(self, tenant: str, provider: str, token: str, event_key: str) -> bool:
        """Record ``token`` for ``event_key``; False when it was already used for another event."""
        now = dt.datetime.now(dt.UTC)
        token = hashlib.sha256(token.encode()).hexdigest()  # fixed width, whatever the post carried
        row = {"tenant": tenant, "provider": provider, "token": token, "event_key": event_key[:256], "seen_at": now}
        self._claims += 1
        with self._engine.begin() as conn:
            if self._claims % PRUNE_EVERY == 0:
                conn.execute(sa.delete(signature_tokens).where(signature_tokens.c.seen_at < now - KEEP_FOR))
            if conn.execute(upsert_insert(conn, signature_tokens).on_conflict_do_nothing(), row).rowcount:
                return True
            first = conn.execute(
                sa.select(signature_tokens.c.event_key).where(
                    signature_tokens.c.tenant == tenant, signature_tokens.c.provider == provider, signature_tokens.c.token == token
                )
            ).scalar()
        return first == event_key[:256]
