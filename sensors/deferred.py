"""The deferred-campaign sensor: messages held by quiet hours, a local-time schedule or the
tenant's daily cap go out by themselves when their time comes.

A ``campaign_messages`` run that defers messages records the campaign's next wake-up in
``campaign_wakeups`` (the earliest moment one of them becomes due; ``orchestrator_assets/
audience_policies.py``). For each row whose ``wake_at`` has come this sensor requests one
``campaign_pipeline_job`` run of the campaign (campaign → sends; the segment is not rebuilt, so the
audience stays the one the campaign started with) keyed ``deferred:<tenant>:<campaign>:<wake_at>``:
Dagster launches a run key once, and that run rewrites the row with the next wake-up (the next time
zone's turn) or deletes it. Exactly once per message comes from the send ledger's key (tenant,
campaign, step, contact, channel): contacts already sent are skipped by the send step. A run that
fails keeps its row and key, so it is not relaunched in a loop: an operator re-executes it.

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
from resources.opstore import OperationalStore
from resources.opstore_schema import campaign_wakeups
from sensors.campaigns import campaign_run_request
from sensors.triggers import TRIGGERED_SELECTION



def deferred_run_requests(conn: sa.Connection, campaigns: dict[str, dict[str, Campaign]], now: dt.datetime) -> list[dg.RunRequest]:
    """Planning step: a run request for every campaign whose wake-up has come (a campaign since
    removed from campaigns.yaml is left alone)."""
    now = now.astimezone(dt.UTC)  # SQLite compares the stored text: UTC on both sides
    rows = conn.execute(sa.select(campaign_wakeups).where(campaign_wakeups.c.wake_at <= now).order_by(campaign_wakeups.c.tenant, campaign_wakeups.c.campaign))
    requests = []
    for row in rows:
        if row.campaign not in campaigns.get(row.tenant, {}):
            continue
        wake_at = utc(row.wake_at).isoformat()
        run_key = f"deferred:{row.tenant}:{row.campaign}:{wake_at}"
        requests.append(campaign_run_request(row.tenant, row.campaign, run_key, TRIGGERED_SELECTION, tags={"algor/wake_at": wake_at, "algor/deferred": row.reasons}))
    return requests


@dg.sensor(
    name="deferred_campaign_sensor",
    job=campaign_pipeline_job,
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Sends deferred campaign messages (quiet hours, local-time schedules, tenant caps) when their time comes.",
)
def deferred_campaign_sensor(context: dg.SensorEvaluationContext, opstore: OperationalStore) -> dg.SensorResult:
    requested = set(json.loads(context.cursor)) if context.cursor else set()
    with opstore.engine().connect() as conn:
        due = deferred_run_requests(conn, load_bundle().campaigns, dt.datetime.now(dt.UTC))
    requests = [request for request in due if request.run_key not in requested]
    skip = None if requests else "no deferred campaign has come due"
    # The cursor keeps the keys of rows still due, so a tick repeats nothing; rewritten rows drop out.
    return dg.SensorResult(run_requests=requests, cursor=json.dumps(sorted(r.run_key for r in due)), skip_reason=skip)
