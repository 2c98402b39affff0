"""The fallback sensor: a campaign with a ``fallback:`` block moves on to the next channel by itself.

A contact's send on one channel stops counting when the provider refused it (``failed``), the
delivery failed (a bounce: ``delivery_failed``), or, with ``undelivered_after_minutes``, no
delivery was confirmed that long after it went out (only where the provider reports deliveries
at all: Telegram and VK never do, so there acceptance ends the chain). That moment is the send's
*fallback moment*. For each such campaign the sensor finds the sends whose fallback moment lies
after its cursor (per tenant × campaign: the latest moment already handled) and up to now, and
requests one ``campaign_pipeline_job`` run of the campaign, keyed
``fallback:<tenant>:<campaign>:<latest moment>``. That run's fallback plan
(``orchestrator_assets.fallback``) sends those contacts on their next channel; the send ledger's
key (tenant, campaign, step, contact, channel) makes every message go at most once, and the cursor
plus the run key make each moment start at most one run. A trigger campaign's run names the
contacts (it never runs for a whole audience); a scheduled one's runs over its audience.

Reads only the policy files and the operational store, never the warehouse.
"""

import datetime as dt
import json

import dagster as dg
import sqlalchemy as sa

from jobs import campaign_pipeline_job
from orchestrator_assets.consent_ledger import utc  # SQLite hands times back without the offset
from policies.campaigns import Campaign
from policies.loader import load_bundle
from resources.connectors import has_delivery_receipts
from resources.opstore import OperationalStore
from resources.opstore_schema import deliveries, sends
from sensors.campaigns import campaign_run_request
from sensors.triggers import TRIGGERED_SELECTION

# Ledger and delivery statuses (orchestrator_assets/sends/ledger.py, delivery_status.py).
FAILED, SENT, DELIVERY_FAILED = "failed", "sent", "delivery_failed"



def fallback_moments(conn: sa.Connection, tenant: str, campaign: Campaign, since: dt.datetime | None, now: dt.datetime) -> dict[int, dt.datetime]:
    """Contact → the latest fallback moment of its sends in ``(since, now]``, on every channel but the last."""
    now, since = now.astimezone(dt.UTC), since and since.astimezone(dt.UTC)  # SQLite compares the stored text: UTC on both sides
    after = dt.timedelta(minutes=campaign.fallback.undelivered_after_minutes) if campaign.fallback.undelivered_after_minutes else None

    def within(column: sa.ColumnElement, shift: dt.timedelta = dt.timedelta(0)) -> sa.ColumnElement[bool]:
        upto = column <= now - shift
        return upto if since is None else sa.and_(upto, column > since - shift)

    stopped = [sa.and_(sends.c.status == FAILED, within(sends.c.finished_at)), sa.and_(deliveries.c.status == DELIVERY_FAILED, within(deliveries.c.updated_at))]
    if after is not None:
        unconfirmed = sa.or_(deliveries.c.status.is_(None), deliveries.c.status == SENT)
        stopped.append(sa.and_(sends.c.status == SENT, unconfirmed, within(sends.c.finished_at, after)))
    query = (
        sa.select(sends.c.contact_id, sends.c.provider, sends.c.status, sends.c.finished_at, deliveries.c.status.label("delivery"), deliveries.c.updated_at)
        .outerjoin(deliveries, deliveries.c.send_id == sends.c.send_id)
        .where(
            sends.c.tenant == tenant,
            sends.c.campaign == campaign.name,
            sends.c.step == campaign.step,
            sends.c.channel != str(campaign.channels[-1].channel),
            sa.or_(*stopped),
        )
    )
    moments: dict[int, dt.datetime] = {}
    for row in conn.execute(query):
        if row.status == FAILED:
            moment = utc(row.finished_at)
        elif row.delivery == DELIVERY_FAILED:
            moment = utc(row.updated_at)
        elif has_delivery_receipts(row.provider):
            moment = utc(row.finished_at) + after
        else:
            continue  # accepted where no receipt ever comes: reached as far as anyone can tell
        moments[row.contact_id] = max(moment, moments.get(row.contact_id, moment))
    return moments


def fallback_run_requests(
    conn: sa.Connection, campaigns: dict[str, dict[str, Campaign]], cursor: dict[str, str], now: dt.datetime
) -> tuple[list[dg.RunRequest], dict[str, str]]:
    """Planning step: a run request per campaign with sends that stopped counting since ``cursor``."""
    requests, new_cursor = [], dict(cursor)
    for tenant in sorted(campaigns):
        for campaign in sorted(campaigns[tenant].values(), key=lambda c: c.name):
            if campaign.fallback is None or len(campaign.channels) < 2:
                continue
            key = f"{tenant}:{campaign.name}"
            since = dt.datetime.fromisoformat(cursor[key]) if key in cursor else None
            moments = fallback_moments(conn, tenant, campaign, since, now)
            if not moments:
                continue
            latest = max(moments.values()).isoformat()
            new_cursor[key] = latest
            contact_ids = sorted(moments) if campaign.trigger is not None else ()
            run_key = f"fallback:{tenant}:{campaign.name}:{latest}"
            requests.append(campaign_run_request(tenant, campaign.name, run_key, TRIGGERED_SELECTION, contact_ids, {"algor/fallback": latest}))
    return requests, new_cursor


@dg.sensor(
    name="campaign_fallback_sensor",
    job=campaign_pipeline_job,
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Sends a fallback campaign's message on the next channel to contacts the previous channel did not reach (once).",
)
def campaign_fallback_sensor(context: dg.SensorEvaluationContext, opstore: OperationalStore) -> dg.SensorResult:
    cursor = json.loads(context.cursor) if context.cursor else {}
    with opstore.engine().connect() as conn:
        requests, new_cursor = fallback_run_requests(conn, load_bundle().campaigns, cursor, dt.datetime.now(dt.UTC))
    skip = None if requests else "no fallback send has stopped counting since the last tick"
    return dg.SensorResult(run_requests=requests, cursor=json.dumps(new_cursor, sort_keys=True), skip_reason=skip)
