"""Dagster assets of the deliveries domain: what happened to each sent message, from provider callbacks."""

import datetime as dt

import dagster as dg
import sqlalchemy as sa

from orchestrator_assets.deliveries.processing import process_rows
from orchestrator_assets.deliveries.retries import due_rows, schedule_retries
from orchestrator_assets.groups import DELIVERIES, SENDS
from orchestrator_assets.partitions import tenant_partitions
from orchestrator_assets.tables import markdown_table
from orchestrator_assets.webhooks.outbox import enqueue
from policies.loader import load_bundle
from resources.opstore import OperationalStore
from resources.opstore_schema import webhook_inbox as inbox
from resources.warehouse import WAREHOUSE_POOL, Warehouse


class InboxRange(dg.Config):
    """Which inbox rows to process (inclusive); the inbox sensor fills it in, 0 = open-ended."""

    from_id: int = 0
    to_id: int = 0


DEAD_LETTER_CHECK = "no_dead_letters"


@dg.asset(
    key=[DELIVERIES, "delivery_events"],
    group_name=DELIVERIES,
    partitions_def=tenant_partitions,
    deps=[dg.AssetKey([SENDS, "campaign_sends"])],
    pool=WAREHOUSE_POOL,
    check_specs=[
        dg.AssetCheckSpec(
            DEAD_LETTER_CHECK,
            asset=[DELIVERIES, "delivery_events"],
            description="No callback gave up after its retries (re-drive with redrive_dead_letters_job)",
        )
    ],
)
def delivery_events(context: dg.AssetExecutionContext, config: InboxRange, opstore: OperationalStore, warehouse: Warehouse) -> dg.MaterializeResult:
    """Delivery states and the delivery/click/complaint events behind them.

    Grain: one ``deliveries`` row per send (its furthest status) and one warehouse event per
    provider callback event. Source: verified callbacks in the webhook inbox, written by the
    gateway. Opt-outs and complaints withdraw consent here, with the callback as evidence. A row
    that cannot be applied yet is retried with exponential backoff, then dead-lettered.
    """
    tenant = context.partition_key
    now = dt.datetime.now(dt.UTC)
    condition = sa.and_(due_rows(tenant, now), inbox.c.id >= config.from_id)
    if config.to_id:
        condition = sa.and_(condition, inbox.c.id <= config.to_id)
    bundle = load_bundle()
    policy = bundle.policy
    engine = opstore.engine()
    with engine.begin() as conn:
        rows = conn.execute(sa.select(inbox).where(condition).order_by(inbox.c.id)).all()
        batch = process_rows(conn, tenant, rows, policy.suppression.complaint_suppresses_all_channels, now)
        webhooks_enqueued = enqueue(conn, tenant, bundle.tenants[tenant].webhooks, batch.webhook_events, now)
        # Append before the commit that marks rows processed: a crash in between re-processes
        # the rows, and the warehouse drops the repeated event ids.
        warehouse.append_events(batch.events)
        if batch.processed_ids:
            conn.execute(sa.update(inbox).where(inbox.c.id.in_(batch.processed_ids)).values(processed_at=now, error=None))
        attempts = {row.id: row.attempts for row in rows}
        dead = schedule_retries(conn, batch.retry, attempts, now)
        dead_letters = conn.execute(
            sa.select(inbox.c.id, inbox.c.provider, inbox.c.attempts, inbox.c.error)
            .where(inbox.c.tenant == tenant, inbox.c.dead_lettered_at.is_not(None), inbox.c.processed_at.is_(None))
            .order_by(inbox.c.id)
        ).all()
    context.log.info(
        f"{len(rows)} inbox rows: {len(batch.processed_ids)} processed, {len(batch.retry) - dead} to retry, "
        f"{dead} dead-lettered; {len(batch.events)} events appended"
    )
    return dg.MaterializeResult(
        metadata={
            "inbox_rows": len(rows),
            "processed": len(batch.processed_ids),
            "retrying": len(batch.retry) - dead,
            "dead_lettered": dead,
            "events_appended": len(batch.events),
            "webhook_events_enqueued": webhooks_enqueued,
            "outcomes": dg.MetadataValue.md(markdown_table(["outcome", "count"], sorted(batch.tally.items()), empty="No inbox rows to apply.")),
        },
        check_results=[
            dg.AssetCheckResult(
                check_name=DEAD_LETTER_CHECK,
                passed=not dead_letters,
                metadata={
                    "dead_letters": len(dead_letters),
                    "reasons": dg.MetadataValue.md(
                        markdown_table(["inbox id", "provider", "attempts", "reason"], [tuple(r) for r in dead_letters[:50]], empty="No dead letters.")
                    ),
                },
            )
        ],
    )
