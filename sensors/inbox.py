"""The webhook-inbox sensor: new verified callbacks become delivery-processing runs, once.

The cursor is JSON ``{tenant: last inbox id handed to a run}``; each run request covers the id
range after it and carries ``run_key = inbox:<tenant>:<from>-<to>``, so a tick evaluated twice
(daemon restart, cursor not yet saved) launches nothing twice. The sensor reads only the
operational store, never the warehouse.

An id behind the cursor can still be unprocessed and never attempted: on PostgreSQL several gateway
workers commit concurrently, so a row may commit after a higher id was already handed out, and a
run can die before it records anything. Such rows, once older than ``LATE_AFTER``, get a sweep run
(``run_key = inbox-late:<tenant>:<from>-<to>``): nothing the gateway acknowledged is left behind.
"""

import datetime as dt
import json

import dagster as dg
import sqlalchemy as sa

from jobs import delivery_processing_job
from orchestrator_assets.groups import DELIVERIES
from resources.opstore import OperationalStore
from resources.opstore_schema import webhook_inbox as inbox

DELIVERY_OP = f"{DELIVERIES}__delivery_events"
MAX_ROWS_PER_RUN = 50_000
LATE_AFTER = dt.timedelta(seconds=60)  # longer than any commit takes; runs usually start sooner


def inbox_run_requests(conn: sa.Connection, cursor: dict[str, int], now: dt.datetime) -> tuple[list[dg.RunRequest], dict[str, int]]:
    """Planning step: one run request per tenant with unprocessed rows past its cursor, plus one per
    tenant whose retried rows are due again."""
    tenants = conn.execute(sa.select(inbox.c.tenant).where(inbox.c.processed_at.is_(None)).distinct()).scalars().all()
    requests, new_cursor = [], dict(cursor)
    for tenant in sorted(tenants):
        first, last = conn.execute(
            sa.select(sa.func.min(inbox.c.id), sa.func.max(inbox.c.id)).where(
                inbox.c.tenant == tenant, inbox.c.processed_at.is_(None), inbox.c.id > cursor.get(tenant, 0)
            )
        ).one()
        if first is None:
            continue
        end = min(last, first + MAX_ROWS_PER_RUN - 1)
        requests.append(range_request("inbox", tenant, first, end))
        new_cursor[tenant] = end
    requests += retry_run_requests(conn, cursor, now)
    requests += late_run_requests(conn, cursor, now)
    return requests, new_cursor


def range_request(kind: str, tenant: str, first: int, last: int) -> dg.RunRequest:
    """A processing run of ``tenant``'s inbox ids ``first``..``last``, keyed by kind and range."""
    return dg.RunRequest(
        run_key=f"{kind}:{tenant}:{first}-{last}",
        partition_key=tenant,
        run_config={"ops": {DELIVERY_OP: {"config": {"from_id": first, "to_id": last}}}},
        tags={"algor/inbox_range": f"{kind} {first}-{last}"},
    )


def late_run_requests(conn: sa.Connection, cursor: dict[str, int], now: dt.datetime) -> list[dg.RunRequest]:
    """Runs for rows behind the cursor that no run has attempted although they are older than
    ``LATE_AFTER`` (committed out of id order, or their run died)."""
    requests = []
    for tenant, last_handed_out in sorted(cursor.items()):
        first, last = conn.execute(
            sa.select(sa.func.min(inbox.c.id), sa.func.max(inbox.c.id)).where(
                inbox.c.tenant == tenant,
                inbox.c.id <= last_handed_out,
                inbox.c.processed_at.is_(None),
                inbox.c.dead_lettered_at.is_(None),
                inbox.c.next_attempt_at.is_(None),
                inbox.c.received_at <= now - LATE_AFTER,
            )
        ).one()
        if first is None:
            continue
        requests.append(range_request("inbox-late", tenant, first, last))
    return requests


def retry_run_requests(conn: sa.Connection, cursor: dict[str, int], now: dt.datetime) -> list[dg.RunRequest]:
    """Runs for rows already handed out whose backoff has expired; the run key names the latest
    due time, so the same due set is requested once."""
    query = (
        sa.select(inbox.c.tenant, sa.func.max(inbox.c.next_attempt_at))
        .where(inbox.c.processed_at.is_(None), inbox.c.dead_lettered_at.is_(None), inbox.c.next_attempt_at <= now)
        .group_by(inbox.c.tenant)
    )
    requests = []
    for tenant, due in conn.execute(query):
        if tenant not in cursor:
            continue  # never handed out: the new-rows request covers it
        requests.append(
            dg.RunRequest(
                run_key=f"inbox-retry:{tenant}:{due}",
                partition_key=tenant,
                run_config={"ops": {DELIVERY_OP: {"config": {"from_id": 0, "to_id": cursor[tenant]}}}},
                tags={"algor/inbox_range": f"retry<= {cursor[tenant]}"},
            )
        )
    return requests


@dg.sensor(
    name="webhook_inbox_sensor",
    job=delivery_processing_job,
    minimum_interval_seconds=5,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Launches delivery processing for new verified provider callbacks.",
)
def webhook_inbox_sensor(context: dg.SensorEvaluationContext, opstore: OperationalStore) -> dg.SensorResult | dg.SkipReason:
    cursor = json.loads(context.cursor) if context.cursor else {}
    with opstore.engine().connect() as conn:
        requests, new_cursor = inbox_run_requests(conn, cursor, dt.datetime.now(dt.UTC))
    if not requests:
        return dg.SkipReason("no new callbacks in the inbox")
    return dg.SensorResult(run_requests=requests, cursor=json.dumps(new_cursor, sort_keys=True))
