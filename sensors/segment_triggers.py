"""The segment_entered sensor: contacts who just entered a segment get the campaigns triggered on it.

``segment_members`` records each contact that enters a segment in ``segment_events``. The cursor is
JSON ``{tenant: last segment_events id seen}``. For each tenant's new ``entered`` rows and each of
its campaigns with ``trigger: {event: segment_entered, segment: <name>}``, one
``campaign_pipeline_job`` run renders and sends that campaign for just those contacts, with
``run_key = segment_entered:<tenant>:<campaign>:<first id>-<last id>``, so a tick evaluated twice
launches nothing twice; exactly once per contact comes from the send ledger's key (tenant,
campaign, step, contact, channel), so a contact who leaves and enters again is not messaged again.
Entries older than the trigger's ``max_delay_minutes`` are skipped, and the cursor moves past every
row even when no campaign listens, so adding a campaign later never replays history. Note that the
first materialisation of a new segment enters every member at once.

A sensor of its own beside ``trigger_campaign_sensor`` (which reads ``trigger_events``, the
occurrences providers report): the two tables are numbered independently, so each keeps its own
cursor. Reads only the policy files and the operational store, never the warehouse.
"""

import datetime as dt
from collections import defaultdict

import dagster as dg
import sqlalchemy as sa

from jobs import campaign_pipeline_job
from orchestrator_assets.consent_ledger import utc
from orchestrator_assets.segment_membership import ENTERED
from policies.campaigns import Campaign, TriggerEvent
from resources.opstore import OperationalStore
from resources.opstore_schema import segment_events
from sensors.campaigns import campaign_run_request
from sensors.triggers import MAX_ROWS_PER_TICK, TRIGGERED_SELECTION, planned_trigger_runs


def segment_entered_requests(
    conn: sa.Connection, campaigns: dict[str, dict[str, Campaign]], cursor: dict[str, int], now: dt.datetime
) -> tuple[list[dg.RunRequest], dict[str, int]]:
    """Planning step: run requests for the campaigns triggered by entries since ``cursor``."""
    requests, new_cursor = [], dict(cursor)
    e = segment_events.c
    for tenant in sorted(campaigns):
        rows = conn.execute(
            sa.select(e.id, e.segment, e.contact_id, e.occurred_at)
            .where(e.tenant == tenant, e.id > cursor.get(tenant, 0), e.change == ENTERED)
            .order_by(e.id)
            .limit(MAX_ROWS_PER_TICK)
        ).all()
        if not rows:
            continue
        first, last = rows[0].id, rows[-1].id
        new_cursor[tenant] = last
        entries: defaultdict[str, list] = defaultdict(list)
        for row in rows:
            entries[row.segment].append(row)
        for campaign in sorted(campaigns[tenant].values(), key=lambda c: c.name):
            if campaign.trigger is None or campaign.trigger.event is not TriggerEvent.SEGMENT_ENTERED:
                continue
            oldest = now - dt.timedelta(minutes=campaign.trigger.max_delay_minutes)
            contact_ids = sorted({row.contact_id for row in entries[campaign.trigger.segment] if utc(row.occurred_at) >= oldest})
            if contact_ids:
                run_key = f"segment_entered:{tenant}:{campaign.name}:{first}-{last}"
                tags = {"algor/trigger": str(TriggerEvent.SEGMENT_ENTERED), "algor/segment": campaign.trigger.segment}
                requests.append(campaign_run_request(tenant, campaign.name, run_key, TRIGGERED_SELECTION, contact_ids, tags))
    return requests, new_cursor


@dg.sensor(
    name="segment_entered_sensor",
    job=campaign_pipeline_job,
    minimum_interval_seconds=15,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Starts campaigns triggered on segment_entered for the contacts who just entered their segment.",
)
def segment_entered_sensor(context: dg.SensorEvaluationContext, opstore: OperationalStore) -> dg.SensorResult:
    return planned_trigger_runs(context, opstore, segment_entered_requests, "no new segment entry for a segment_entered campaign")
