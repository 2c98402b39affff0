"""Durable inbox writes: a verified callback is stored once, before the provider gets its 2xx.

Under load many requests wait on the store at the same moment, and one transaction per request
makes the commit the bottleneck. ``InboxWriter`` commits them as a group: a request enqueues its
events and waits; one writer task takes everything queued, inserts it in one transaction on a
worker thread (skipping event ids already stored), commits, and only then tells each waiting
request how many of its events were new. A failed commit fails every request of that batch, so
nothing is acknowledged that was not persisted. Batches form by themselves (whatever queued while
the previous one was being written), so a lone request is written at once, without waiting.
"""

from __future__ import annotations

import asyncio
import contextvars
import datetime as dt
from dataclasses import dataclass

import sqlalchemy as sa
import structlog

from resources.event_keys import event_key_secret, stored_event_key
from resources.inbox_payloads import inbox_keys, seal_payload
from resources.opstore_schema import webhook_inbox
from resources.sql import upsert_insert

MAX_BATCH_ROWS = 500  # bounds one transaction's duration, and so the latency of the requests behind it

log = structlog.get_logger("algor.gateway.inbox")
EventKey = tuple[str, str, str]  # (tenant, provider, stored event key): the inbox's unique key


def inbox_rows(tenant: str, provider: str, events: list[tuple[str, dict]]) -> list[dict]:
    """The rows of one post's events (provider event id, payload): the id kept as its keyed hash
    (``resources/event_keys.py``: some name the recipient), the payload sealed and bound to it."""
    now = dt.datetime.now(dt.UTC)
    keys, secret = inbox_keys(), event_key_secret()
    rows = []
    for raw, payload in events:
        key = stored_event_key(tenant, provider, raw, secret)
        rows.append(
            {
                "tenant": tenant,
                "provider": provider,
                "account": provider,
                "event_key": key,
                "payload": seal_payload(tenant, provider, key, payload, keys),
                "received_at": now,
            }
        )
    return rows


def insert_new(engine: sa.Engine, rows: list[dict]) -> set[EventKey]:
    """Insert ``rows`` in one transaction, skipping event ids already stored (also repeats within
    ``rows``); returns the keys actually inserted. Nothing is acknowledged before this commits."""
    if not rows:
        return set()
    columns = (webhook_inbox.c.tenant, webhook_inbox.c.provider, webhook_inbox.c.event_key)
    with engine.begin() as conn:
        statement = upsert_insert(conn, webhook_inbox).on_conflict_do_nothing().returning(*columns)
        return {tuple(row) for row in conn.execute(statement, rows)}


def store_callbacks(engine: sa.Engine, tenant: str, provider: str, events: list[tuple[str, dict]]) -> int:
    """Store one post's events in their own transaction; returns how many were new."""
    return len(insert_new(engine, inbox_rows(tenant, provider, events)))


def already_stored(engine: sa.Engine, tenant: str, provider: str, raw_event_key: str) -> bool:
    """Whether the inbox holds the event whose provider event id is ``raw_event_key``."""
    key = stored_event_key(tenant, provider, raw_event_key)
    query = sa.select(webhook_inbox.c.id).where(
        webhook_inbox.c.tenant == tenant, webhook_inbox.c.provider == provider, webhook_inbox.c.event_key == key
    )
    with engine.connect() as conn:
        return conn.execute(query).first() is not None


@dataclass
class _Waiter:
    rows: list[dict]
    done: asyncio.Future[int]


class InboxWriter:
    """Group commit of inbox writes for one event loop (one per gateway process)."""

    def __init__(self, engine: sa.Engine, max_batch_rows: int = MAX_BATCH_ROWS) -> None:
        self._engine = engine
        self._max_batch_rows = max_batch_rows
        self._queue: list[_Waiter] = []
        self._writer: asyncio.Task[None] | None = None

    async def store(self, tenant: str, provider: str, events: list[tuple[str, dict]]) -> int:
        """Store one post's events durably; returns how many were new. Raises what the store
        raised (``sqlalchemy.exc.OperationalError`` when it is down) if the commit failed."""
        if not events:
            return 0
        waiter = _Waiter(inbox_rows(tenant, provider, events), asyncio.get_running_loop().create_future())
        self._queue.append(waiter)
        if self._writer is None:
            # A fresh context: the writer serves many requests and must not carry this one's log fields.
            self._writer = asyncio.create_task(self._drain(), context=contextvars.Context())
        return await waiter.done

    async def _drain(self) -> None:
        try:
            while self._queue:
                batch = self._take_batch()
                try:
                    inserted = await asyncio.to_thread(insert_new, self._engine, [row for waiter in batch for row in waiter.rows])
                except sa.exc.OperationalError as exc:  # the store is down: every waiter gets it (503)
                    log.error("inbox_batch_failed", requests=len(batch), error=str(exc).splitlines()[0])
                    for waiter in batch:
                        _settle(waiter, exception=exc)
                except sa.exc.SQLAlchemyError:
                    # Rows the store refuses (e.g. a tenant id too long for its column) must not cost the
                    # other requests of the batch: write each request alone, so only its own fails.
                    await self._write_alone(batch)
                else:
                    _count_new(batch, inserted)
        finally:
            self._writer = None

    def _take_batch(self) -> list[_Waiter]:
        """Queued requests up to MAX_BATCH_ROWS rows (always at least one request)."""
        size, rows = 0, 0
        while size < len(self._queue) and (size == 0 or rows + len(self._queue[size].rows) <= self._max_batch_rows):
            rows += len(self._queue[size].rows)
            size += 1
        batch, self._queue = self._queue[:size], self._queue[size:]
        return batch

    async def _write_alone(self, batch: list[_Waiter]) -> None:
        for waiter in batch:
            try:
                inserted = await asyncio.to_thread(insert_new, self._engine, waiter.rows)
            except sa.exc.SQLAlchemyError as exc:
                _settle(waiter, exception=exc)
            else:
                _count_new([waiter], inserted)


def _count_new(batch: list[_Waiter], inserted: set[EventKey]) -> None:
    """Credit each inserted key to the first request in the batch that carried it."""
    unclaimed = set(inserted)
    for waiter in batch:
        new = 0
        for row in waiter.rows:
            key = (row["tenant"], row["provider"], row["event_key"])
            if key in unclaimed:
                unclaimed.discard(key)
                new += 1
        _settle(waiter, result=new)


def _settle(waiter: _Waiter, result: int = 0, exception: BaseException | None = None) -> None:
    if waiter.done.done():  # the request was cancelled (client went away); its rows are stored anyway
        return
    if exception is not None:
        waiter.done.set_exception(exception)
    else:
        waiter.done.set_result(result)
