"""The health of tenants' webhook endpoints: failures in a row, Retry-After pauses, auto-disabling.

One ``webhook_endpoints`` row per (tenant, subscription), written in the transaction that records
each attempt, so concurrent runs count exactly (the row's UPDATE serialises them):

- A 2xx sets the failures in a row back to 0.
- Any other answer, or none, adds one. At the subscription's ``disable_after_failures`` the endpoint
  is **disabled**: ``outbox.is_due`` holds all its rows, which stay pending (never dead-lettered
  while nobody tries them); a ``webhook_endpoint_events`` row says when and why; and a
  ``webhook.endpoint_disabled`` event goes into the outbox, in the same transaction, for every
  subscription of the tenant that asks for it. That event is the tenant's own record: a tenant
  subscribes an alerting endpoint to it; the failing endpoint, if subscribed, gets it once enabled.
- A 429 or 503 with Retry-After **pauses** the whole endpoint that long (capped like every wait):
  the receiver asked the sender to slow down, not to skip one row and post the next at once.

Nothing but an operator enables a disabled endpoint (``enable``, run by
``enable_webhook_endpoints_job``), recorded with who, why and the run, like other operator
decisions; the endpoint's pending rows are then due at once and the count starts from zero.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

import sqlalchemy as sa

from orchestrator_assets.webhooks.events import endpoint_disabled_event, utc_iso
from orchestrator_assets.webhooks.outbox import PENDING, Attempt, capped_retry_after, enqueue
from policies.policy import WebhookDeliveryPolicy
from policies.tenants import WebhookSubscription
from resources.opstore_schema import webhook_endpoint_events, webhook_endpoints, webhook_outbox
from resources.sql import upsert_insert

ENDPOINT_DISABLED, ENDPOINT_ENABLED = "endpoint_disabled", "endpoint_enabled"
PAUSED, DISABLED = "paused", "disabled"  # what an attempt did to its endpoint
DELIVERY_ACTOR = "webhook_delivery_job"  # who disables: the delivery run, never a person


@dataclass(frozen=True)
class EnableRequest:
    """An operator's request to enable one subscription's endpoint (its URL goes into the record)."""

    tenant: str
    subscription: str
    url: str


def _endpoint(tenant: str, subscription: str) -> sa.ColumnElement[bool]:
    return sa.and_(webhook_endpoints.c.tenant == tenant, webhook_endpoints.c.subscription == subscription)


def record_outcome(
    conn: sa.Connection,
    tenant: str,
    subscription: WebhookSubscription,
    attempt: Attempt,
    policy: WebhookDeliveryPolicy,
    run_id: str,
    subscriptions: Sequence[WebhookSubscription],
) -> str | None:
    """Count ``attempt`` against its endpoint in the caller's transaction; returns DISABLED when
    this attempt disabled the endpoint, PAUSED when its Retry-After paused it, else None.

    ``subscriptions`` are the tenant's, for the ``webhook.endpoint_disabled`` event."""
    now = attempt.finished_at
    key = _endpoint(tenant, subscription.name)
    if attempt.delivered:  # a healthy endpoint has nothing to reset: no write
        conn.execute(sa.update(webhook_endpoints).where(key, webhook_endpoints.c.consecutive_failures > 0).values(consecutive_failures=0, updated_at=now))
        return None
    first = {"tenant": tenant, "subscription": subscription.name, "consecutive_failures": 0, "updated_at": now}
    conn.execute(upsert_insert(conn, webhook_endpoints).on_conflict_do_nothing(), [first])
    values: dict = {"consecutive_failures": webhook_endpoints.c.consecutive_failures + 1, "updated_at": now}
    asked = capped_retry_after(attempt, policy)
    if asked is not None:  # a longer pause already asked for stays
        until = now + asked
        values["paused_until"] = sa.case((webhook_endpoints.c.paused_until > until, webhook_endpoints.c.paused_until), else_=until)
    failures = conn.execute(sa.update(webhook_endpoints).where(key).values(**values).returning(webhook_endpoints.c.consecutive_failures)).scalar_one()
    if failures < subscription.disable_after_failures:
        return None if asked is None else PAUSED
    reason = f"{failures} failed attempts in a row (disable_after_failures: {subscription.disable_after_failures}); last: {attempt.error}"
    disabled = conn.execute(sa.update(webhook_endpoints).where(key, webhook_endpoints.c.disabled_at.is_(None)).values(disabled_at=now, disabled_reason=reason))
    if disabled.rowcount != 1:  # already disabled: an attempt that was in flight when it happened
        return None
    _record(conn, tenant, subscription.name, ENDPOINT_DISABLED, subscription.url, reason, failures, DELIVERY_ACTOR, run_id, now)
    enqueue(conn, tenant, subscriptions, [endpoint_disabled_event(tenant, subscription.name, subscription.url, now, reason, failures)], now)
    return DISABLED


def _record(
    conn: sa.Connection, tenant: str, subscription: str, event: str, url: str, reason: str, failures: int, actor: str, run_id: str, now: dt.datetime
) -> None:
    """One ``webhook_endpoint_events`` row: the endpoint's history, who changed it and why."""
    conn.execute(
        sa.insert(webhook_endpoint_events).values(
            tenant=tenant,
            subscription=subscription,
            event=event,
            url=url,
            reason=reason,
            consecutive_failures=failures,
            actor=actor,
            run_id=run_id,
            occurred_at=now,
        )
    )


def enable(conn: sa.Connection, requests: Sequence[EnableRequest], operator: str, reason: str, run_id: str, now: dt.datetime) -> list[EnableRequest]:
    """Enable the disabled endpoints among ``requests`` (others are left alone): failures back to 0,
    no pause, each recorded as ``endpoint_enabled`` with who and why, and their pending rows due now.
    Returns the ones enabled."""
    enabled = []
    for request in requests:
        key = _endpoint(request.tenant, request.subscription)
        failures = conn.execute(sa.select(webhook_endpoints.c.consecutive_failures).where(key, webhook_endpoints.c.disabled_at.is_not(None))).scalar()
        if failures is None:
            continue
        conn.execute(
            sa.update(webhook_endpoints)
            .where(key)
            .values(disabled_at=None, disabled_reason=None, paused_until=None, consecutive_failures=0, updated_at=now)
        )
        _record(conn, request.tenant, request.subscription, ENDPOINT_ENABLED, request.url, reason, failures, operator, run_id, now)
        conn.execute(
            sa.update(webhook_outbox)
            .where(
                webhook_outbox.c.tenant == request.tenant,
                webhook_outbox.c.subscription == request.subscription,
                webhook_outbox.c.status == PENDING,
                webhook_outbox.c.next_attempt_at > now,
            )
            .values(next_attempt_at=now)
        )
        enabled.append(request)
    return enabled


def endpoint_states(conn: sa.Connection, tenant: str) -> dict[str, sa.Row]:
    """Subscription → its ``webhook_endpoints`` row (subscriptions without one are healthy)."""
    rows = conn.execute(sa.select(webhook_endpoints).where(webhook_endpoints.c.tenant == tenant))
    return {row.subscription: row for row in rows}


def disabled_endpoints(conn: sa.Connection, tenant: str) -> list[sa.Row]:
    """The tenant's disabled endpoints with when, why, and how many deliveries wait for them."""
    pending = (
        sa.select(sa.func.count())
        .where(webhook_outbox.c.tenant == tenant, webhook_outbox.c.subscription == webhook_endpoints.c.subscription, webhook_outbox.c.status == PENDING)
        .scalar_subquery()
    )
    query = sa.select(
        webhook_endpoints.c.subscription, webhook_endpoints.c.disabled_at, webhook_endpoints.c.disabled_reason, pending.label("pending")
    ).where(webhook_endpoints.c.tenant == tenant, webhook_endpoints.c.disabled_at.is_not(None))
    return conn.execute(query.order_by(webhook_endpoints.c.subscription)).all()


def describe(state: sa.Row | None, now: dt.datetime) -> str:
    """An endpoint's health in a few words, for the asset's per-subscription table."""
    if state is None:
        return "ok"
    if state.disabled_at is not None:
        return f"disabled since {utc_iso(state.disabled_at.replace(microsecond=0))}"
    paused_until = state.paused_until and state.paused_until.replace(tzinfo=state.paused_until.tzinfo or dt.UTC)  # SQLite: naive
    if paused_until and paused_until > now:
        return f"paused until {utc_iso(paused_until.replace(microsecond=0))} (Retry-After)"
    return "ok"

