"""Jobs of the webhooks domain: delivery (launched by the delivery sensor), and the operator's
manual retry of dead letters and enabling of disabled endpoints."""

import datetime as dt

import dagster as dg
from pydantic import Field

from orchestrator_assets import groups
from orchestrator_assets.partitions import tenant_partitions
from orchestrator_assets.tables import markdown_table
from orchestrator_assets.webhooks.endpoints import EnableRequest, enable
from orchestrator_assets.webhooks.outbox import requeue_dead
from policies.loader import load_bundle
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


class EnableEndpointsConfig(dg.Config):
    """Which disabled endpoints to enable again; see the no_disabled_webhook_endpoints check's table.

    For example::

        ops:
          enable_webhook_endpoints:
            config:
              operator: anna@ops.example.ru
              reason: "CRM fixed their TLS certificate (ticket 4711)"
              subscriptions: [demo/crm]
    """

    operator: str = Field(description="Who decides (name or e-mail); recorded with the endpoint_enabled event")
    reason: str = Field(description="Why the endpoint can take deliveries again")
    subscriptions: list[str] = Field(description="<tenant>/<subscription>, each in tenants.yaml")


@dg.op(description="Enable disabled webhook endpoints (recorded with who and why); their pending deliveries are due at once.")
def enable_webhook_endpoints(context: dg.OpExecutionContext, config: EnableEndpointsConfig, opstore: OperationalStore) -> int:
    if not config.operator.strip() or not config.reason.strip():
        raise dg.Failure("say who enables (operator) and why (reason): both are recorded with the endpoint_enabled event")
    if not config.subscriptions:
        raise dg.Failure("name the endpoints to enable: subscriptions (<tenant>/<subscription>)")
    refs = _subscription_refs(config.subscriptions)
    tenants = load_bundle().tenants
    urls = {(tenant_id, s.name): s.url for tenant_id, tenant in tenants.items() for s in tenant.webhooks}
    unknown = [f"{tenant}/{name}" for tenant, name in refs if (tenant, name) not in urls]
    if unknown:
        raise dg.Failure(f"no such subscription in tenants.yaml: {unknown}; nothing was enabled")
    requests = [EnableRequest(tenant, name, urls[(tenant, name)]) for tenant, name in refs]
    with opstore.engine().begin() as conn:
        enabled = enable(conn, requests, config.operator.strip(), config.reason.strip(), context.run.run_id, dt.datetime.now(dt.UTC))
    not_disabled = sorted({f"{r.tenant}/{r.subscription}" for r in requests} - {f"{r.tenant}/{r.subscription}" for r in enabled})
    context.log.info(f"{config.operator} enabled {len(enabled)} webhook endpoints; not disabled (ignored): {not_disabled}")
    context.add_output_metadata(
        {
            "enabled": len(enabled),
            "ignored_not_disabled": dg.MetadataValue.json(not_disabled),
            "operator": config.operator,
            "reason": config.reason,
            "enabled_endpoints": dg.MetadataValue.md(markdown_table(["tenant", "subscription", "url"], [(r.tenant, r.subscription, r.url) for r in enabled], empty="Nothing enabled: none of them was disabled.")),
        }
    )
    return len(enabled)


@dg.job(description="Enable webhook endpoints disabled after too many failures in a row; the delivery sensor then posts what waited.")
def enable_webhook_endpoints_job():
    enable_webhook_endpoints()
