"""Jobs of the webhooks domain: delivery (launched by the delivery sensor) and the operator's manual retry."""

import datetime as dt

import dagster as dg
from pydantic import Field

from orchestrator_assets import groups
from orchestrator_assets.partitions import tenant_partitions
from orchestrator_assets.tables import markdown_table
from orchestrator_assets.webhooks.outbox import requeue_dead
from resources.opstore import OperationalStore

webhook_delivery_job = dg.define_asset_job(
    name="webhook_delivery_job",
    description="POST due outbound webhooks of one tenant to its subscribed endpoints (launched by webhook_delivery_sensor).",
    selection=dg.AssetSelection.groups(groups.WEBHOOKS),
    partitions_def=tenant_partitions,
)


class WebhookRetryConfig(dg.Config):
    """Which dead letters to try again; see the no_dead_webhook_deliveries check's table."""

    delivery_ids: list[int] = Field(default_factory=list, description='Outbox ids (the check\'s "delivery id" column).')
    subscriptions: list[str] = Field(default_factory=list, description="<tenant>/<subscription>: every dead letter of these.")


def _subscription_refs(refs: list[str]) -> list[tuple[str, str]]:
    bad = [ref for ref in refs if ref.count("/") != 1 or "" in ref.split("/")]
    if bad:
        raise dg.Failure(f"subscriptions must be written <tenant>/<subscription> (e.g. demo/crm); got {bad}")
    return [tuple(ref.split("/")) for ref in refs]


@dg.op(description="Put the named dead-lettered webhook deliveries back in the outbox, due now (attempts from zero).")
def requeue_dead_webhooks(context: dg.OpExecutionContext, config: WebhookRetryConfig, opstore: OperationalStore) -> int:
    if not config.delivery_ids and not config.subscriptions:
        raise dg.Failure("name the dead letters to retry: delivery_ids and/or subscriptions (<tenant>/<subscription>)")
    subscriptions = _subscription_refs(config.subscriptions)
    with opstore.engine().begin() as conn:
        requeued = requeue_dead(conn, dt.datetime.now(dt.UTC), config.delivery_ids, subscriptions)
    not_dead = sorted(set(config.delivery_ids) - {row.id for row in requeued})
    context.log.info(f"re-queued {len(requeued)} dead webhook deliveries; delivery ids not dead (ignored): {not_dead}")
    context.add_output_metadata(
        {
            "requeued": len(requeued),
            "ignored_not_dead": dg.MetadataValue.json(not_dead),
            "requeued_rows": dg.MetadataValue.md(markdown_table(["delivery id", "tenant", "subscription"], [tuple(row) for row in requeued[:200]], empty="Nothing re-queued: none of them was dead.")),
        }
    )
    return len(requeued)


@dg.job(description="Manually retry dead-lettered outbound webhooks named in the run config; the delivery sensor then posts them.")
def retry_webhook_deliveries_job():
    requeue_dead_webhooks()
