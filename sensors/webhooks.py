"""The webhook-delivery sensor: a tenant with due outbox rows gets a delivery run, once per state.

It reads only the operational store, never the warehouse. The run key fingerprints the tenant's
due rows (how many, newest id, latest due time, latest expired lease), so a tick evaluated twice
launches nothing twice, while any change (new events, a retry coming due, the lease of a run that
died running out, an endpoint's Retry-After pause ending, an operator enabling a disabled endpoint)
launches a new run. Rows of a paused or disabled endpoint are not due (``outbox.is_due``), so they
launch nothing meanwhile. The cursor keeps the last key per tenant to skip repeats.
"""

import datetime as dt
import json

import dagster as dg
import sqlalchemy as sa

from jobs.webhooks import webhook_delivery_job
from orchestrator_assets.partitions import tenant_partitions
from orchestrator_assets.webhooks.outbox import is_due
from resources.opstore import OperationalStore
from resources.opstore_schema import webhook_outbox as outbox


def delivery_run_requests(conn: sa.Connection, cursor: dict[str, str], now: dt.datetime) -> tuple[list[dg.RunRequest], dict[str, str]]:
    """One run request per tenant whose due rows changed since the key in ``cursor``."""
    query = (
        sa.select(
            outbox.c.tenant,
            sa.func.count(),
            sa.func.max(outbox.c.id),
            sa.func.max(outbox.c.next_attempt_at),
            sa.func.max(outbox.c.claimed_until),
        )
        .where(is_due(now))
        .group_by(outbox.c.tenant)
    )
    tenants = set(tenant_partitions.get_partition_keys())
    requests, new_cursor = [], dict(cursor)
    for tenant, count, newest, due, lease in conn.execute(query):
        key = f"webhooks:{tenant}:{count}:{newest}:{due}:{lease}"
        if tenant not in tenants or cursor.get(tenant) == key:
            continue
        requests.append(dg.RunRequest(run_key=key, partition_key=tenant, tags={"algor/webhooks_due": str(count)}))
        new_cursor[tenant] = key
    return requests, new_cursor


@dg.sensor(
    name="webhook_delivery_sensor",
    job=webhook_delivery_job,
    minimum_interval_seconds=10,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Launches webhook delivery for tenants whose outbound webhooks are due (new, or retries whose backoff ended).",
)
def webhook_delivery_sensor(context: dg.SensorEvaluationContext, opstore: OperationalStore) -> dg.SensorResult | dg.SkipReason:
    cursor = json.loads(context.cursor) if context.cursor else {}
    with opstore.engine().connect() as conn:
        requests, new_cursor = delivery_run_requests(conn, cursor, dt.datetime.now(dt.UTC))
    if not requests:
        return dg.SkipReason("no outbound webhooks due")
    return dg.SensorResult(run_requests=requests, cursor=json.dumps(new_cursor, sort_keys=True))
