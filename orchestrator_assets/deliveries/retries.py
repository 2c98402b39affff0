"""Inbox retry bookkeeping: exponential backoff, then a dead letter an operator can re-drive."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping

import sqlalchemy as sa

from resources.opstore_schema import webhook_inbox as inbox

MAX_ATTEMPTS = 8
BASE_DELAY_S = 2.0  # 2 s, 4 s, … 256 s: about eight minutes before a row is given up


def backoff(attempt: int) -> dt.timedelta:
    """Wait before retry number ``attempt`` (1-based)."""
    return dt.timedelta(seconds=BASE_DELAY_S * 2 ** (attempt - 1))


def due_rows(tenant: str, now: dt.datetime) -> sa.ColumnElement[bool]:
    """Rows of ``tenant`` to process now: not done, not dead, and past any backoff."""
    return sa.and_(
        inbox.c.tenant == tenant,
        inbox.c.processed_at.is_(None),
        inbox.c.dead_lettered_at.is_(None),
        sa.or_(inbox.c.next_attempt_at.is_(None), inbox.c.next_attempt_at <= now),
    )


def schedule_retries(conn: sa.Connection, retry: Mapping[int, str], attempts: Mapping[int, int], now: dt.datetime) -> int:
    """Record a failed attempt per row: back off, or dead-letter after MAX_ATTEMPTS. Returns the
    number dead-lettered now."""
    dead = 0
    for row_id, reason in retry.items():
        attempt = attempts.get(row_id, 0) + 1
        values: dict = {"attempts": attempt, "error": reason}
        if attempt >= MAX_ATTEMPTS:
            values["dead_lettered_at"] = now
            dead += 1
        else:
            values["next_attempt_at"] = now + backoff(attempt)
        conn.execute(sa.update(inbox).where(inbox.c.id == row_id).values(**values))
    return dead


def redrive(conn: sa.Connection, inbox_ids: list[int], now: dt.datetime) -> int:
    """Put dead letters back in line (attempts reset, due now); returns how many were re-driven."""
    result = conn.execute(
        sa.update(inbox)
        .where(inbox.c.id.in_(inbox_ids), inbox.c.dead_lettered_at.is_not(None), inbox.c.processed_at.is_(None))
        .values(dead_lettered_at=None, attempts=0, next_attempt_at=now)
    )
    return result.rowcount
