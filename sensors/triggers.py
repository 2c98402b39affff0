"""The trigger-campaign sensor: people who just did a campaign's trigger event get that campaign.

Delivery processing records each occurrence in ``trigger_events`` (a Telegram /start, a VK
message_allow, a custom event ``custom:<name>`` the tenant posted to the gateway). The cursor is JSON ``{tenant: last trigger_events id seen}``. For each tenant's new
rows and each of its campaigns triggered by their event, one ``campaign_pipeline_job`` run renders
and sends that campaign for just those contacts (campaign → sends; a trigger campaign's segment rule
is evaluated live), with ``run_key = trigger:<tenant>:<campaign>:<first id>-<last id>``, so a tick
evaluated twice launches nothing twice. Exactly once per contact comes from the send ledger's key
(tenant, campaign, step, contact, channel): a second /start launches a run that finds the row final
and sends nothing. Occurrences older than the trigger's ``max_delay_minutes`` are skipped, and the
cursor moves past every row even when no campaign listens, so adding a trigger campaign later never
replays history; so are the occurrences of a paused or cancelled campaign (a pause stops welcomes,
it does not queue them for later).

Rows are read in id order. In the embedded default the warehouse pool runs one delivery step at a
time, so they commit in id order; with a server warehouse (pool limit > 1) two processing runs of
one tenant can overlap and a row could commit behind the cursor: that contact would miss the
campaign (never get it twice), the same caveat as the inbox sensor's. Reads only the policy files
and the operational store, never the warehouse.
"""

import datetime as dt
import json
from collections import defaultdict
from collections.abc import Callable

import dagster as dg
import sqlalchemy as sa

from jobs import campaign_pipeline_job
from orchestrator_assets.campaign_control import halted_by_tenant
from orchestrator_assets.consent_ledger import utc  # SQLite hands times back without the offset
from policies.campaigns import Campaign
from policies.loader import load_bundle
from resources.opstore import OperationalStore
from resources.opstore_schema import trigger_events
from sensors.campaigns import MESSAGES, SENDS_ASSET, campaign_run_request

TRIGGERED_SELECTION = (MESSAGES, SENDS_ASSET)
MAX_ROWS_PER_TICK = 5_000  # per tenant; the rest waits for the next tick


def trigger_run_requests(
    conn: sa.Connection, campaigns: dict[str, dict[str, Campaign]], cursor: dict[str, int], now: dt.datetime
) -> tuple[list[dg.RunRequest], dict[str, int]]:
    """Planning step: run requests for the trigger campaigns whose event occurred since ``cursor``."""
    requests, new_cursor, halted = [], dict(cursor), halted_by_tenant(conn)
    for tenant in sorted(campaigns):
        rows = conn.execute(
            sa.select(trigger_events.c.id, trigger_events.c.event, trigger_events.c.contact_id, trigger_events.c.occurred_at)
            .where(trigger_events.c.tenant == tenant, trigger_events.c.id > cursor.get(tenant, 0))
            .order_by(trigger_events.c.id)
            .limit(MAX_ROWS_PER_TICK)
        ).all()
        if not rows:
            continue
        first, last = rows[0].id, rows[-1].id
        new_cursor[tenant] = last
        occurrences: defaultdict[str, list] = defaultdict(list)
        for row in rows:
            occurrences[row.event].append(row)
        for campaign in sorted(campaigns[tenant].values(), key=lambda c: c.name):
            if campaign.trigger is None or campaign.name in halted.get(tenant, ()):
                continue
            oldest = now - dt.timedelta(minutes=campaign.trigger.max_delay_minutes)
            contact_ids = sorted({row.contact_id for row in occurrences[campaign.trigger.occurrence] if utc(row.occurred_at) >= oldest})
            if contact_ids:
                run_key = f"trigger:{tenant}:{campaign.name}:{first}-{last}"
                requests.append(
                    campaign_run_request(tenant, campaign.name, run_key, TRIGGERED_SELECTION, contact_ids, {"algor/trigger": str(campaign.trigger.event)})
                )
    return requests, new_cursor


def planned_trigger_runs(context: dg.SensorEvaluationContext, opstore: OperationalStore, plan: Callable, idle: str) -> dg.SensorResult:
    """What every trigger sensor does on a tick: ``plan(conn, campaigns, cursor, now)`` from its
    JSON cursor (``{tenant: last id seen}``) on the operational store, never the warehouse;
    ``idle`` is the skip reason of a tick that requests nothing."""
    cursor = json.loads(context.cursor) if context.cursor else {}
    with opstore.engine().connect() as conn:
        requests, new_cursor = plan(conn, load_bundle().campaigns, cursor, dt.datetime.now(dt.UTC))
    return dg.SensorResult(run_requests=requests, cursor=json.dumps(new_cursor, sort_keys=True), skip_reason=None if requests else idle)


@dg.sensor(
    name="trigger_campaign_sensor",
    job=campaign_pipeline_job,
    minimum_interval_seconds=5,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Starts trigger campaigns (e.g. a welcome on Telegram /start) for the contacts who just triggered them.",
)
def trigger_campaign_sensor(context: dg.SensorEvaluationContext, opstore: OperationalStore) -> dg.SensorResult:
    return planned_trigger_runs(context, opstore, trigger_run_requests, "no new trigger event for a trigger campaign")
