"""Delivering a tenant's due outbox rows: a signed POST per row, bounded concurrency, every attempt recorded.

A row is leased just before its POST (one short transaction) and its attempt is recorded right after
the answer (another), so at most the POSTs in flight are in doubt if the run dies: their leases run
out and a later run posts them again, with the same ``webhook-id`` for the receiver to drop the
repeat. Failed rows are not retried within the run: their next attempt time is stored, and the
delivery sensor launches the run that retries them once it has come. Each attempt also counts
against its endpoint (``endpoints.record_outcome``, same transaction); once an endpoint is paused
by its Retry-After or disabled, the run posts nothing more to it.

Time comes from ``clock`` (default: the system's), so tests move it instead of sleeping.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import random
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any

import sqlalchemy as sa
from standardwebhooks import Webhook

from orchestrator_assets.sends.http import provider_client
from orchestrator_assets.webhooks.endpoints import DISABLED, record_outcome
from orchestrator_assets.webhooks.outbox import DEAD, DELIVERED, PENDING, Attempt, cancel_unsubscribed, claim, due_rows, record_attempt
from orchestrator_assets.webhooks.signing import signed_headers, signing_secret
from policies.policy import WebhookDeliveryPolicy
from policies.tenants import WebhookSubscription

MAX_ROWS_PER_RUN = 5_000  # the rest stay due, and the sensor launches another run for them
LEASE_MARGIN = dt.timedelta(seconds=60)  # beyond the POST's timeout: time to record the answer
EXCERPT_BYTES = 512
USER_AGENT = "algor-orchestrator-webhooks/1"
OUTCOME_LABELS = {DELIVERED: "delivered", PENDING: "retrying", DEAD: "dead_lettered"}
RETRY_AFTER_STATUSES = frozenset({429, 503})  # where a Retry-After is honoured (RFC 9110 §10.2.3)
Clock = Callable[[], dt.datetime]


@dataclass(frozen=True)
class Endpoint:
    subscription: WebhookSubscription
    signer: Webhook


@dataclass
class DeliveryReport:
    by_subscription: defaultdict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))  # OUTCOME_LABELS values
    cancelled: int = 0  # pending rows of subscriptions removed from tenants.yaml
    skipped: int = 0  # due when listed, but leased by another run (or finished) by the time we claimed
    held: int = 0  # due when listed, but their endpoint was paused or disabled during this run
    disabled: list[str] = field(default_factory=list)  # subscriptions this run disabled

    @property
    def totals(self) -> Counter[str]:
        return sum(self.by_subscription.values(), Counter())


def endpoints_for(subscriptions: Sequence[WebhookSubscription]) -> dict[str, Endpoint]:
    """Each subscription with its signer; raises ``SettingsError`` for a missing or malformed secret."""
    return {subscription.name: Endpoint(subscription, Webhook(signing_secret(subscription.secret_env))) for subscription in subscriptions}


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _describe(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def retry_after(status: int, value: str | None, now: dt.datetime) -> dt.timedelta | None:
    """A 429's or 503's ``Retry-After`` as a wait from ``now``: delay-seconds or an HTTP-date (a date
    in the past is no wait). None for other statuses and for a value that is neither."""
    if status not in RETRY_AFTER_STATUSES or not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return dt.timedelta(seconds=min(int(value), 10**9))  # beyond any cap, within timedelta's range
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if moment.tzinfo is None:  # "-0000": UTC by RFC 5322
        moment = moment.replace(tzinfo=dt.UTC)
    return max(moment - now, dt.timedelta(0))


async def post(client: Any, endpoint: Endpoint, event_id: str, payload: str, clock: Clock = _utcnow) -> Attempt:
    """One signed POST; any answer or failure becomes an ``Attempt`` (nothing raises)."""
    url = endpoint.subscription.url
    started = clock()
    headers = signed_headers(endpoint.signer, event_id, payload, started)
    timer = time.perf_counter()
    try:
        response = await client.post(url, content=payload.encode(), headers=headers)
    except Exception as exc:  # noqa: BLE001 - refused, timed out, reset, bad TLS …: the attempt failed, say how
        return Attempt(url, started, None, round((time.perf_counter() - timer) * 1000), _describe(exc), "")
    latency_ms = round((time.perf_counter() - timer) * 1000)
    excerpt = response.content[:EXCERPT_BYTES].decode("utf-8", errors="replace")
    error = None if 200 <= response.status_code < 300 else f"HTTP {response.status_code}" + (f": {excerpt[:200]}" if excerpt.strip() else "")
    wait = retry_after(response.status_code, response.headers.get("retry-after"), started + dt.timedelta(milliseconds=latency_ms))
    return Attempt(url, started, response.status_code, latency_ms, error, excerpt, wait)


async def deliver_due(
    engine: sa.Engine,
    tenant: str,
    run_id: str,
    endpoints: Mapping[str, Endpoint],
    policy: WebhookDeliveryPolicy,
    client: Any = None,
    rng: random.Random | None = None,
    clock: Clock = _utcnow,
) -> DeliveryReport:
    """Post every due row of ``tenant`` once (up to ``MAX_ROWS_PER_RUN``), ``max_in_flight`` at a time."""
    rng = rng or random.Random()
    report = DeliveryReport()
    subscriptions = [endpoint.subscription for endpoint in endpoints.values()]
    with engine.begin() as conn:
        report.cancelled = cancel_unsubscribed(conn, tenant, list(endpoints), clock())
        due = due_rows(conn, tenant, list(endpoints), clock(), MAX_ROWS_PER_RUN)
    if not due:
        return report
    lease = dt.timedelta(seconds=policy.timeout_s) + LEASE_MARGIN
    queue = iter(due)  # shared by the workers: one event loop thread, so each row is taken once
    stopped: set[str] = set()  # subscriptions paused or disabled during this run: post them nothing more

    async def work() -> None:
        for outbox_id, name in queue:
            if name in stopped:
                report.held += 1
                continue
            with engine.begin() as conn:
                row = claim(conn, outbox_id, run_id, clock(), lease)
            if row is None:
                report.skipped += 1
                continue
            endpoint = endpoints[name]
            attempt = await post(client, endpoint, row.event_id, row.payload, clock)
            with engine.begin() as conn:
                status = record_attempt(conn, row, run_id, attempt, policy, rng)
                change = record_outcome(conn, tenant, endpoint.subscription, attempt, policy, run_id, subscriptions)
            report.by_subscription[name][OUTCOME_LABELS[status]] += 1
            if change is not None:
                stopped.add(name)
            if change == DISABLED:
                report.disabled.append(name)

    own_client = client is None
    client = client or provider_client(policy.max_in_flight, timeout=policy.timeout_s, headers={"user-agent": USER_AGENT})
    try:
        await asyncio.gather(*(work() for _ in range(min(policy.max_in_flight, len(due)))))
    finally:
        if own_client:
            await client.aclose()
    return report
