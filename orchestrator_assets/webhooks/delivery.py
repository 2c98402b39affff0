"""Delivering a tenant's due outbox rows: a signed POST per row, bounded concurrency, every attempt recorded.

A row is leased just before its POST (one short transaction) and its attempt is recorded right after
the answer (another), so at most the POSTs in flight are in doubt if the run dies: their leases run
out and a later run posts them again, with the same ``webhook-id`` for the receiver to drop the
repeat. Failed rows are not retried within the run: their next attempt time is stored, and the
delivery sensor launches the run that retries them once it has come.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import random
import time
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from standardwebhooks import Webhook

from orchestrator_assets.sends.http import provider_client
from orchestrator_assets.webhooks.outbox import DEAD, DELIVERED, PENDING, Attempt, cancel_unsubscribed, claim, due_ids, record_attempt
from orchestrator_assets.webhooks.signing import signed_headers, signing_secret
from policies.policy import WebhookDeliveryPolicy
from policies.tenants import WebhookSubscription

MAX_ROWS_PER_RUN = 5_000  # the rest stay due, and the sensor launches another run for them
LEASE_MARGIN = dt.timedelta(seconds=60)  # beyond the POST's timeout: time to record the answer
EXCERPT_BYTES = 512
USER_AGENT = "algor-orchestrator-webhooks/1"
OUTCOME_LABELS = {DELIVERED: "delivered", PENDING: "retrying", DEAD: "dead_lettered"}


@dataclass(frozen=True)
class Endpoint:
    subscription: WebhookSubscription
    signer: Webhook


@dataclass
class DeliveryReport:
    by_subscription: defaultdict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))  # OUTCOME_LABELS values
    cancelled: int = 0  # pending rows of subscriptions removed from tenants.yaml
    skipped: int = 0  # due when listed, but leased by another run (or finished) by the time we claimed

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


async def post(client: Any, endpoint: Endpoint, event_id: str, payload: str) -> Attempt:
    """One signed POST; any answer or failure becomes an ``Attempt`` (nothing raises)."""
    url = endpoint.subscription.url
    started = _utcnow()
    headers = signed_headers(endpoint.signer, event_id, payload, started)
    clock = time.perf_counter()
    try:
        response = await client.post(url, content=payload.encode(), headers=headers)
    except Exception as exc:  # noqa: BLE001 - refused, timed out, reset, bad TLS …: the attempt failed, say how
        return Attempt(url, started, None, round((time.perf_counter() - clock) * 1000), _describe(exc), "")
    latency_ms = round((time.perf_counter() - clock) * 1000)
    excerpt = response.content[:EXCERPT_BYTES].decode("utf-8", errors="replace")
    error = None if 200 <= response.status_code < 300 else f"HTTP {response.status_code}" + (f": {excerpt[:200]}" if excerpt.strip() else "")
    return Attempt(url, started, response.status_code, latency_ms, error, excerpt)


async def deliver_due(
    engine: sa.Engine,
    tenant: str,
    run_id: str,
    endpoints: Mapping[str, Endpoint],
    policy: WebhookDeliveryPolicy,
    client: Any = None,
    rng: random.Random | None = None,
) -> DeliveryReport:
    """Post every due row of ``tenant`` once (up to ``MAX_ROWS_PER_RUN``), ``max_in_flight`` at a time."""
    rng = rng or random.Random()
    report = DeliveryReport()
    with engine.begin() as conn:
        report.cancelled = cancel_unsubscribed(conn, tenant, list(endpoints), _utcnow())
        ids = due_ids(conn, tenant, list(endpoints), _utcnow(), MAX_ROWS_PER_RUN)
    if not ids:
        return report
    lease = dt.timedelta(seconds=policy.timeout_s) + LEASE_MARGIN
    queue = iter(ids)  # shared by the workers: one event loop thread, so each id is taken once

    async def work() -> None:
        for outbox_id in queue:
            with engine.begin() as conn:
                row = claim(conn, outbox_id, run_id, _utcnow(), lease)
            if row is None:
                report.skipped += 1
                continue
            attempt = await post(client, endpoints[row.subscription], row.event_id, row.payload)
            with engine.begin() as conn:
                status = record_attempt(conn, row, run_id, attempt, policy, rng)
            report.by_subscription[row.subscription][OUTCOME_LABELS[status]] += 1

    own_client = client is None
    client = client or provider_client(policy.max_in_flight, timeout=policy.timeout_s, headers={"user-agent": USER_AGENT})
    try:
        await asyncio.gather(*(work() for _ in range(min(policy.max_in_flight, len(ids)))))
    finally:
        if own_client:
            await client.aclose()
    return report
