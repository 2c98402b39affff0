"""The webhook outbox: enqueued with the change behind each event, leased to one delivery at a time.

Row life::

    enqueue ──▶ pending ──claim (lease)──▶ POST ──2xx──────────────────────▶ delivered
                   ▲                         └──else, attempts left──▶ pending, next_attempt_at = now + wait
                   │                         └──else, none left──────▶ dead ──▶ (operator) requeue ──▶ pending
    subscription removed from tenants.yaml ──▶ cancelled

A pending row is not due while its endpoint is paused (its Retry-After) or disabled (too many
failures in a row, until an operator enables it): ``endpoints.py``.

Why this shape:

- ``enqueue`` runs inside the caller's transaction, so an event exists exactly when the change it
  reports committed (a transactional outbox), and inserts-or-ignores on (tenant, subscription,
  event id), so deriving an event twice enqueues it once.
- The wait before a retry is stored (``next_attempt_at``), never slept: runs stay short, and a
  restart loses no schedule. It is the backoff, or longer when the receiver's Retry-After asks.
- ``claim`` takes a lease with one conditional UPDATE, so of two runs racing for a row exactly one
  posts it; a run that dies mid-POST only delays the row until its lease expires.
"""

from __future__ import annotations

import datetime as dt
import json
import random
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass

import sqlalchemy as sa

from orchestrator_assets.webhooks.events import WebhookEvent, utc_iso
from policies.policy import WebhookDeliveryPolicy
from policies.tenants import WebhookSubscription
from resources.opstore_schema import contacts, webhook_attempts, webhook_endpoints, webhook_outbox
from resources.sql import upsert_insert

PENDING, DELIVERED, DEAD, CANCELLED = "pending", "delivered", "dead", "cancelled"
_CHUNK = 500  # ids per IN (…): well under every database's bound-parameter limit


@dataclass(frozen=True)
class Attempt:
    """One POST of an outbox row and what came back."""

    url: str
    started_at: dt.datetime
    status_code: int | None  # None: no answer (refused, timed out, reset)
    latency_ms: int
    error: str | None
    response_excerpt: str
    retry_after: dt.timedelta | None = None  # a 429/503's Retry-After, from the answer (uncapped)

    @property
    def finished_at(self) -> dt.datetime:
        return self.started_at + dt.timedelta(milliseconds=self.latency_ms)

    @property
    def delivered(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


def enqueue(conn: sa.Connection, tenant: str, subscriptions: Sequence[WebhookSubscription], events: Iterable[WebhookEvent], now: dt.datetime) -> int:
    """Add one pending row per (subscription, event it subscribes to), in the caller's transaction.

    Returns how many rows are new; an event already enqueued for a subscription is ignored.
    """
    wanted = [(subscription, event) for event in events for subscription in subscriptions if event.type in subscription.events]
    if not wanted:
        return 0
    external_ids = _external_ids(conn, tenant, {event.contact_id for _, event in wanted if event.contact_id is not None})
    bodies: dict[str, str] = {}
    rows = []
    for subscription, event in wanted:
        if event.event_id not in bodies:
            contact = None if event.contact_id is None else {"id": event.contact_id, "external_id": external_ids.get(event.contact_id)}
            body = {"type": event.type.value, "timestamp": utc_iso(event.occurred_at), "data": {"tenant": tenant, **event.data, "contact": contact}}
            bodies[event.event_id] = json.dumps(body, ensure_ascii=False, separators=(",", ":"), sort_keys=True)
        rows.append(
            {
                "tenant": tenant,
                "subscription": subscription.name,
                "event_id": event.event_id,
                "event_type": event.type.value,
                "payload": bodies[event.event_id],
                "status": PENDING,
                "attempts": 0,
                "next_attempt_at": now,
                "created_at": now,
            }
        )
    inserted = conn.execute(upsert_insert(conn, webhook_outbox).on_conflict_do_nothing().returning(webhook_outbox.c.id), rows)
    return len(inserted.all())


def _external_ids(conn: sa.Connection, tenant: str, contact_ids: Collection[int]) -> dict[int, str]:
    """The tenant's own ids of the contacts: what their systems know them by."""
    ids = sorted(contact_ids)
    found: dict[int, str] = {}
    for start in range(0, len(ids), _CHUNK):
        query = sa.select(contacts.c.id, contacts.c.external_id).where(contacts.c.tenant == tenant, contacts.c.id.in_(ids[start : start + _CHUNK]))
        found.update({row.id: row.external_id for row in conn.execute(query)})
    return found


def is_due(now: dt.datetime) -> sa.ColumnElement[bool]:
    """Pending, past its backoff, not leased to a delivery in progress, and its endpoint neither
    disabled nor paused."""
    endpoint_held = sa.exists().where(
        webhook_endpoints.c.tenant == webhook_outbox.c.tenant,
        webhook_endpoints.c.subscription == webhook_outbox.c.subscription,
        sa.or_(webhook_endpoints.c.disabled_at.is_not(None), webhook_endpoints.c.paused_until > now),
    )
    return sa.and_(
        webhook_outbox.c.status == PENDING,
        webhook_outbox.c.next_attempt_at <= now,
        sa.or_(webhook_outbox.c.claimed_until.is_(None), webhook_outbox.c.claimed_until < now),
        ~endpoint_held,
    )


def cancel_unsubscribed(conn: sa.Connection, tenant: str, subscriptions: Collection[str], now: dt.datetime) -> int:
    """Cancel pending rows of subscriptions no longer in tenants.yaml: nobody wants them any more."""
    result = conn.execute(
        sa.update(webhook_outbox)
        .where(webhook_outbox.c.tenant == tenant, webhook_outbox.c.status == PENDING, webhook_outbox.c.subscription.not_in(subscriptions))
        .values(status=CANCELLED, last_error=f"subscription removed from tenants.yaml (cancelled {utc_iso(now)})")
    )
    return result.rowcount


def due_rows(conn: sa.Connection, tenant: str, subscriptions: Collection[str], now: dt.datetime, limit: int) -> list[tuple[int, str]]:
    """(id, subscription) of the due rows of these subscriptions, longest waiting first."""
    query = sa.select(webhook_outbox.c.id, webhook_outbox.c.subscription).where(
        webhook_outbox.c.tenant == tenant, webhook_outbox.c.subscription.in_(subscriptions), is_due(now)
    )
    return [tuple(row) for row in conn.execute(query.order_by(webhook_outbox.c.next_attempt_at, webhook_outbox.c.id).limit(limit))]


def claim(conn: sa.Connection, outbox_id: int, run_id: str, now: dt.datetime, lease: dt.timedelta):
    """Lease one due row to ``run_id``; the row, or None when it is no longer due (another run holds
    it, or it was delivered meanwhile)."""
    leased = conn.execute(sa.update(webhook_outbox).where(webhook_outbox.c.id == outbox_id, is_due(now)).values(claimed_by=run_id, claimed_until=now + lease))
    if leased.rowcount != 1:
        return None
    return conn.execute(sa.select(webhook_outbox).where(webhook_outbox.c.id == outbox_id)).one()


def backoff(attempt: int, policy: WebhookDeliveryPolicy, rng: random.Random) -> dt.timedelta:
    """The wait after failed attempt number ``attempt`` (1-based).

    Equal jitter: the step ``base_delay_s · 2^(attempt-1)`` (at most ``max_delay_s``) is waited
    half in full and half at random. Full jitter (as dispatch uses) could wait almost nothing after
    a late failure; here every wait is at least the half step, so waits grow from one attempt to
    the next until the cap, while a receiver coming back from an outage still gets its retries
    spread out rather than all at once.
    """
    step = min(policy.max_delay_s, policy.base_delay_s * 2 ** (attempt - 1))
    return dt.timedelta(seconds=step / 2 + rng.uniform(0, step / 2))


def capped_retry_after(attempt: Attempt, policy: WebhookDeliveryPolicy) -> dt.timedelta | None:
    """The receiver's Retry-After, at most ``max_delay_s`` (the longest wait we ever schedule), so a
    receiver asking for days cannot park its events beyond the backoff's own cap."""
    if attempt.retry_after is None:
        return None
    return min(attempt.retry_after, dt.timedelta(seconds=policy.max_delay_s))


def retry_wait(number: int, attempt: Attempt, policy: WebhookDeliveryPolicy, rng: random.Random) -> dt.timedelta:
    """The wait after failed attempt ``number``: the backoff, or the receiver's (capped) Retry-After
    when that is longer. Never shorter than the backoff: a ``Retry-After: 0`` does not make us hammer."""
    wait = backoff(number, policy, rng)
    asked = capped_retry_after(attempt, policy)
    return wait if asked is None else max(wait, asked)


def record_attempt(conn: sa.Connection, row, run_id: str, attempt: Attempt, policy: WebhookDeliveryPolicy, rng: random.Random) -> str:
    """Record ``attempt`` of a row this run has leased and move the row on; returns its new status."""
    number = row.attempts + 1
    finished = attempt.finished_at
    conn.execute(
        sa.insert(webhook_attempts).values(
            outbox_id=row.id,
            tenant=row.tenant,
            attempt=number,
            run_id=run_id,
            url=attempt.url,
            started_at=attempt.started_at,
            status_code=attempt.status_code,
            latency_ms=attempt.latency_ms,
            error=attempt.error,
            response_excerpt=attempt.response_excerpt,
            retry_after_s=None if attempt.retry_after is None else round(attempt.retry_after.total_seconds()),
        )
    )
    if attempt.delivered:
        status, values = DELIVERED, {"delivered_at": finished, "last_error": None}
    elif number >= policy.max_attempts:
        status, values = DEAD, {"dead_lettered_at": finished, "last_error": attempt.error}
    else:
        status, values = PENDING, {"next_attempt_at": finished + retry_wait(number, attempt, policy, rng), "last_error": attempt.error}
    conn.execute(
        sa.update(webhook_outbox)
        .where(webhook_outbox.c.id == row.id, webhook_outbox.c.claimed_by == run_id)
        .values(status=status, attempts=number, claimed_by=None, claimed_until=None, **values)
    )
    return status


def requeue_dead(conn: sa.Connection, now: dt.datetime, outbox_ids: Sequence[int] = (), subscriptions: Sequence[tuple[str, str]] = ()) -> list:
    """Put dead letters back in line (attempts from zero, due now), chosen by outbox id or by
    (tenant, subscription); returns the (id, tenant, subscription) rows re-queued."""
    chosen = [webhook_outbox.c.id.in_(list(outbox_ids))] if outbox_ids else []
    chosen += [sa.and_(webhook_outbox.c.tenant == tenant, webhook_outbox.c.subscription == name) for tenant, name in subscriptions]
    if not chosen:
        return []
    condition = sa.and_(webhook_outbox.c.status == DEAD, sa.or_(*chosen))
    rows = conn.execute(sa.select(webhook_outbox.c.id, webhook_outbox.c.tenant, webhook_outbox.c.subscription).where(condition)).all()
    if rows:
        conn.execute(
            sa.update(webhook_outbox)
            .where(webhook_outbox.c.id.in_([row.id for row in rows]), webhook_outbox.c.status == DEAD)
            .values(status=PENDING, attempts=0, next_attempt_at=now, dead_lettered_at=None)
        )
    return rows


def dead_letters(conn: sa.Connection, tenant: str, limit: int = 50) -> list:
    columns = (
        webhook_outbox.c.id,
        webhook_outbox.c.subscription,
        webhook_outbox.c.event_type,
        webhook_outbox.c.event_id,
        webhook_outbox.c.attempts,
        webhook_outbox.c.last_error,
    )
    query = sa.select(*columns).where(webhook_outbox.c.tenant == tenant, webhook_outbox.c.status == DEAD)
    return conn.execute(query.order_by(webhook_outbox.c.id).limit(limit)).all()


def count_dead(conn: sa.Connection, tenant: str) -> int:
    query = sa.select(sa.func.count()).where(webhook_outbox.c.tenant == tenant, webhook_outbox.c.status == DEAD)
    return conn.execute(query).scalar_one()


def status_counts(conn: sa.Connection, tenant: str) -> dict[tuple[str, str], int]:
    """(subscription, status) → rows, for the tenant's whole outbox."""
    query = (
        sa.select(webhook_outbox.c.subscription, webhook_outbox.c.status, sa.func.count())
        .where(webhook_outbox.c.tenant == tenant)
        .group_by(webhook_outbox.c.subscription, webhook_outbox.c.status)
    )
    return {(subscription, status): count for subscription, status, count in conn.execute(query)}
