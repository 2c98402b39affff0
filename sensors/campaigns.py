"""The campaign schedule sensor: a campaign whose start time has come is started once.

For each tenant and scheduled campaign whose latest start (``schedule.start_at``, or the latest
occurrence of its ``cron`` in its ``timezone``) is at or before now, it requests a
``campaign_pipeline_job`` run of that tenant's partition with the campaign (and the occurrence)
selected, keyed ``campaign:<tenant>:<name>:<start ISO>``. Dagster launches a run key once per
sensor, so a tick evaluated twice (daemon restart, cursor not yet saved) starts nothing twice, while
moving a campaign's start time makes a new key and so a new start. The cursor lists the keys of the
current starts already requested, to keep ticks quiet; a cron campaign's older keys drop out of it,
so it stays as long as the campaigns file.

Only the latest occurrence of a cron campaign is ever requested: after the sensor was stopped for a
week, a daily campaign sends once, not seven times. Each occurrence would go to the same people with
the same message; a backlog burst would be late, repetitive and unwanted, and the latest occurrence
supersedes the ones before it. A paused or cancelled campaign (``campaign_control_job``) is not
started and its key is not recorded: once resumed, its latest occurrence still starts. The run selects segments → campaign → sends: importing contacts is
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
from orchestrator_assets.campaign_control import halted_by_tenant
from orchestrator_assets.groups import CAMPAIGNS, SEGMENTS, SENDS
from policies.campaign_schedule import occurrence_label
from policies.campaigns import Campaign
from policies.loader import load_bundle
from resources.opstore import OperationalStore

CAMPAIGN_OP = f"{CAMPAIGNS}__campaign_messages"
MESSAGES = dg.AssetKey([CAMPAIGNS, "campaign_messages"])
SENDS_ASSET = dg.AssetKey([SENDS, "campaign_sends"])
SCHEDULED_SELECTION = (dg.AssetKey([SEGMENTS, "segment_members"]), MESSAGES, SENDS_ASSET)


def campaign_run_request(
    tenant: str, campaign: str, run_key: str, selection: Iterable[dg.AssetKey], contact_ids: Iterable[int] = (), tags: dict[str, str] | None = None,
    occurrence: str = "",
) -> dg.RunRequest:
    """A ``campaign_pipeline_job`` run of ``tenant`` rendering and sending one campaign (for
    ``contact_ids`` only, when given; one cron ``occurrence``, when given)."""
    config: dict = {"campaign": campaign}
    if contact_ids := list(contact_ids):
        config["contact_ids"] = contact_ids
    if occurrence:
        config["occurrence"] = occurrence
    return dg.RunRequest(
        run_key=run_key,
        partition_key=tenant,
        asset_selection=list(selection),
        run_config={"ops": {CAMPAIGN_OP: {"config": config}}},
        tags={"algor/campaign": campaign, **(tags or {})},
    )


def schedule_run_key(campaign: Campaign, start: dt.datetime) -> str:
    return f"campaign:{campaign.tenant}:{campaign.name}:{start.isoformat()}"


def due_campaign_requests(
    campaigns: dict[str, dict[str, Campaign]], requested: Iterable[str], now: dt.datetime, halted: dict[str, frozenset[str]] | None = None
) -> tuple[list[dg.RunRequest], list[str]]:
    """Run requests for scheduled campaigns whose latest start is due at ``now`` and not yet in
    ``requested`` (``halted`` ones, by tenant, left out), and the new cursor: the keys of the
    current starts requested so far (removed campaigns and past occurrences drop out)."""
    done, halted = set(requested), halted or {}
    requests, cursor = [], []
    for tenant in sorted(campaigns):
        for campaign in campaigns[tenant].values():
            start = campaign.schedule.latest_occurrence(now) if campaign.schedule is not None else None
            if start is None:
                continue
            key = schedule_run_key(campaign, start)
            if key not in done:
                if campaign.name in halted.get(tenant, ()):
                    continue
                occurrence = occurrence_label(start) if campaign.schedule.recurring else ""
                requests.append(
                    campaign_run_request(tenant, campaign.name, key, SCHEDULED_SELECTION, tags={"algor/start_at": start.isoformat()}, occurrence=occurrence)
                )
            cursor.append(key)
    return requests, sorted(cursor)


@dg.sensor(
    name="campaign_schedule_sensor",
    job=campaign_pipeline_job,
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.STOPPED,
    description="Starts each scheduled campaign once when its start time (or latest cron occurrence) has come; never a backlog (stopped by default).",
)
def campaign_schedule_sensor(context: dg.SensorEvaluationContext, opstore: OperationalStore) -> dg.SensorResult:
    requested = json.loads(context.cursor) if context.cursor else []
    with opstore.engine().connect() as conn:
        halted = halted_by_tenant(conn)
    requests, cursor = due_campaign_requests(load_bundle().campaigns, requested, dt.datetime.now(dt.UTC), halted)
    skip = None if requests else "no scheduled campaign has come due since the last start"
    return dg.SensorResult(run_requests=requests, cursor=json.dumps(cursor), skip_reason=skip)
