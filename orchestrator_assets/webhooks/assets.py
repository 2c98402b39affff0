"""Dagster assets of the webhooks domain: tenants' subscribed events POSTed to their endpoints."""

import asyncio
import datetime as dt

import dagster as dg

from orchestrator_assets.groups import CONSENTS, DELIVERIES, SENDS, WEBHOOKS
from orchestrator_assets.partitions import tenant_partitions
from orchestrator_assets.tables import markdown_table
from orchestrator_assets.webhooks.delivery import deliver_due, endpoints_for
from orchestrator_assets.webhooks.endpoints import describe, disabled_endpoints, endpoint_states
from orchestrator_assets.webhooks.events import utc_iso
from orchestrator_assets.webhooks.outbox import CANCELLED, DEAD, DELIVERED, PENDING, count_dead, dead_letters, status_counts
from policies.loader import load_bundle
from resources.opstore import OperationalStore
from resources.settings import SettingsError

DEAD_LETTER_CHECK = "no_dead_webhook_deliveries"
DISABLED_CHECK = "no_disabled_webhook_endpoints"
REMOVED = "(removed from tenants.yaml)"


@dg.asset(
    key=[WEBHOOKS, "tenant_webhook_deliveries"],
    group_name=WEBHOOKS,
    partitions_def=tenant_partitions,
    # The writers of the outbox, each in the transaction of the change an event reports.
    deps=[dg.AssetKey([SENDS, "campaign_sends"]), dg.AssetKey([DELIVERIES, "delivery_events"]), dg.AssetKey([CONSENTS, "contact_consents"])],
    check_specs=[
        dg.AssetCheckSpec(
            DEAD_LETTER_CHECK,
            asset=[WEBHOOKS, "tenant_webhook_deliveries"],
            description="No webhook delivery gave up after its retries (re-queue with retry_webhook_deliveries_job)",
        ),
        dg.AssetCheckSpec(
            DISABLED_CHECK,
            asset=[WEBHOOKS, "tenant_webhook_deliveries"],
            description="No endpoint was disabled for failing too often in a row (enable with enable_webhook_endpoints_job)",
        ),
    ],
)
def tenant_webhook_deliveries(context: dg.AssetExecutionContext, opstore: OperationalStore) -> dg.MaterializeResult:
    """Outbound webhooks delivered to the tenant's subscribed endpoints.

    Grain: one ``webhook_outbox`` row per (subscription, event) and one ``webhook_attempts`` row
    per POST. Source: the outbox, filled by sends, delivery processing and consents in the same
    transaction as the change each event reports. Each due row is POSTed once per run, signed per
    Standard Webhooks; a failure waits out an exponential backoff or the receiver's Retry-After
    (the delivery sensor launches the retry) and is dead-lettered after
    ``webhook_delivery.max_attempts``. An endpoint failing ``disable_after_failures`` times in a row
    is disabled, its rows kept pending, until an operator enables it.
    """
    tenant = context.partition_key
    bundle = load_bundle()
    subscriptions = bundle.tenants[tenant].webhooks
    try:
        endpoints = endpoints_for(subscriptions)
    except SettingsError as exc:
        raise dg.Failure(f"tenant {tenant}: {exc}. Nothing was delivered.") from None
    engine = opstore.engine()
    report = asyncio.run(deliver_due(engine, tenant, context.run.run_id, endpoints, bundle.policy.webhook_delivery))
    with engine.connect() as conn:
        counts = status_counts(conn, tenant)
        dead = dead_letters(conn, tenant)
        dead_total = count_dead(conn, tenant)
        states = endpoint_states(conn, tenant)
        disabled = disabled_endpoints(conn, tenant)
    now = dt.datetime.now(dt.UTC)
    urls = {subscription.name: subscription.url for subscription in subscriptions}
    names = sorted(set(urls) | {name for name, _ in counts})
    per_subscription = [
        (
            name,
            urls.get(name, REMOVED),
            report.by_subscription[name]["delivered"],
            report.by_subscription[name]["retrying"],
            report.by_subscription[name]["dead_lettered"],
            counts.get((name, DELIVERED), 0),
            counts.get((name, PENDING), 0),
            counts.get((name, DEAD), 0),
            counts.get((name, CANCELLED), 0),
            describe(states.get(name), now),
            states[name].consecutive_failures if name in states else 0,
        )
        for name in names
    ]
    totals = report.totals
    context.log.info(
        f"webhooks for {tenant}: {dict(totals)}, {report.skipped} leased elsewhere, {report.held} held (endpoint paused or disabled), "
        f"{report.cancelled} cancelled; {dead_total} dead letters; disabled now: {report.disabled or 'none'}"
    )
    return dg.MaterializeResult(
        metadata={
            "delivered": totals["delivered"],
            "retrying": totals["retrying"],
            "dead_lettered": totals["dead_lettered"],
            "skipped_leased_elsewhere": report.skipped,
            "held_endpoint_paused_or_disabled": report.held,
            "cancelled_unsubscribed": report.cancelled,
            "endpoints_disabled_by_this_run": dg.MetadataValue.json(report.disabled),
            "disabled_endpoints": len(disabled),
            "by_subscription": dg.MetadataValue.md(
                markdown_table(
                    [
                        "subscription",
                        "url",
                        "delivered (run)",
                        "retrying (run)",
                        "dead-lettered (run)",
                        "delivered (all)",
                        "pending now",
                        "dead now",
                        "cancelled",
                        "endpoint",
                        "failures in a row",
                    ],
                    per_subscription,
                    empty="The tenant subscribes no webhooks.",
                )
            ),
        },
        check_results=[
            dg.AssetCheckResult(
                check_name=DEAD_LETTER_CHECK,
                passed=dead_total == 0,
                metadata={
                    "dead_letters": dead_total,
                    "dead": dg.MetadataValue.md(
                        markdown_table(
                            ["delivery id", "subscription", "url", "event", "event id", "attempts", "last error"],
                            [(r.id, r.subscription, urls.get(r.subscription, REMOVED), r.event_type, r.event_id, r.attempts, r.last_error) for r in dead],
                            empty="No dead webhook deliveries.",
                        )
                    ),
                },
            ),
            dg.AssetCheckResult(
                check_name=DISABLED_CHECK,
                passed=not disabled,
                metadata={
                    "disabled_endpoints": len(disabled),
                    "disabled": dg.MetadataValue.md(
                        markdown_table(
                            ["subscription", "url", "disabled at", "why", "deliveries waiting"],
                            [(r.subscription, urls.get(r.subscription, REMOVED), utc_iso(r.disabled_at.replace(microsecond=0)), r.disabled_reason, r.pending) for r in disabled],
                            empty="No endpoint is disabled.",
                        )
                    ),
                },
            ),
        ],
    )
