"""The campaign schedule sensor: a campaign whose start time has come is started once.

For each tenant and scheduled campaign with ``schedule.start_at <= now`` it requests a
``campaign_pipeline_job`` run of that tenant's partition with the campaign selected, keyed
``campaign:<tenant>:<name>:<start_at ISO>``. Dagster launches a run key once per sensor, so a tick
evaluated twice (daemon restart, cursor not yet saved) starts nothing twice, while moving a
campaign's start time makes a new key and so a new start. The cursor lists the keys already
requested, to keep ticks quiet. The run selects segments → campaign → sends: importing contacts is
an operator's act with a file, not part of a scheduled start. The sensor reads only the policy
files, never the warehouse.

Stopped by default: turning it on starts every due campaign it has not started yet, however long
ago its time came, so an operator decides when. ``make demo`` launches its own pipeline run; if
this sensor ran too, the send ledger's key (tenant, campaign, step, contact, channel) would still
keep every message single: the later run finds the rows final (or claimed, and holds them).
"""

import datetime as dt
import json
from collections.abc import Iterable

import dagster as dg

from jobs import campaign_pipeline_job
from orchestrator_assets.groups import CAMPAIGNS, SEGMENTS, SENDS
from policies.campaigns import Campaign
from policies.loader import load_bundle

CAMPAIGN_OP = f"{CAMPAIGNS}__campaign_messages"
MESSAGES = dg.AssetKey([CAMPAIGNS, "campaign_messages"])
SENDS_ASSET = dg.AssetKey([SENDS, "campaign_sends"])
SCHEDULED_SELECTION = (dg.AssetKey([SEGMENTS, "segment_members"]), MESSAGES, SENDS_ASSET)


def campaign_run_request(
    tenant: str, campaign: str, run_key: str, selection: Iterable[dg.AssetKey], contact_ids: Iterable[int] = (), tags: dict[str, str] | None = None
) -> dg.RunRequest:
    """A ``campaign_pipeline_job`` run of ``tenant`` rendering and sending one campaign (for
    ``contact_ids`` only, when given)."""
    config: dict = {"campaign": campaign}
    if contact_ids := list(contact_ids):
        config["contact_ids"] = contact_ids
    return dg.RunRequest(
        run_key=run_key,
        partition_key=tenant,
        asset_selection=list(selection),
        run_config={"ops": {CAMPAIGN_OP: {"config": config}}},
        tags={"algor/campaign": campaign, **(tags or {})},
    )


def schedule_run_key(campaign: Campaign) -> str:
    return f"campaign:{campaign.tenant}:{campaign.name}:{campaign.schedule.start_at.isoformat()}"


def due_campaign_requests(campaigns: dict[str, dict[str, Campaign]], requested: Iterable[str], now: dt.datetime) -> tuple[list[dg.RunRequest], list[str]]:
    """Run requests for scheduled campaigns due at ``now`` not yet in ``requested``, and the new
    cursor: the keys of every due campaign requested so far (removed campaigns drop out)."""
    done = set(requested)
    due = [c for tenant in sorted(campaigns) for c in campaigns[tenant].values() if c.schedule is not None and c.schedule.start_at <= now]
    requests = [
        campaign_run_request(c.tenant, c.name, key, SCHEDULED_SELECTION, tags={"algor/start_at": c.schedule.start_at.isoformat()})
        for c in due
        if (key := schedule_run_key(c)) not in done
    ]
    return requests, sorted(schedule_run_key(c) for c in due)


@dg.sensor(
    name="campaign_schedule_sensor",
    job=campaign_pipeline_job,
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.STOPPED,
    description="Starts each scheduled campaign once when its start time has come (stopped by default).",
)
def campaign_schedule_sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult:
    requested = json.loads(context.cursor) if context.cursor else []
    requests, cursor = due_campaign_requests(load_bundle().campaigns, requested, dt.datetime.now(dt.UTC))
    skip = None if requests else "no scheduled campaign has come due since the last start"
    return dg.SensorResult(run_requests=requests, cursor=json.dumps(cursor), skip_reason=skip)
