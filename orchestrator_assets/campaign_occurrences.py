"""One run of a recurring (cron) campaign sends one occurrence, under that occurrence's own step.

The ledger key (tenant, campaign, step, contact, channel) makes a message single per step; giving
each occurrence the step ``<step>@<occurrence>`` (``policies/campaign_schedule.py``) makes every
occurrence sendable once per contact, and a re-run (or resume) of the same occurrence a no-op for
the messages already final. Everything downstream (the ledger, click links, fallback history,
reports) then sees the occurrence step like any other step.
"""

from __future__ import annotations

import datetime as dt

import dagster as dg

from policies.campaign_schedule import occurrence_step, parse_occurrence
from policies.campaigns import Campaign


def at_occurrence(campaign: Campaign, occurrence: str, now: dt.datetime) -> Campaign:
    """``campaign`` as this run sends it: a cron campaign under the step of ``occurrence`` (run
    config, filled in by ``campaign_schedule_sensor``), or of its latest occurrence when none is
    named (a launch by hand); any other campaign unchanged."""
    schedule = campaign.schedule
    if schedule is None or not schedule.recurring:
        if occurrence:
            raise dg.Failure(f"occurrence {occurrence!r} is given, but campaign {campaign.name!r} has no cron schedule")
        return campaign
    if occurrence:
        try:
            moment = parse_occurrence(schedule, occurrence)
        except ValueError as exc:
            raise dg.Failure(f"campaign {campaign.name!r}: {exc}") from None
    else:
        moment = schedule.latest_occurrence(now)
        if moment is None:
            raise dg.Failure(f"campaign {campaign.name!r} has had no occurrence of cron {schedule.cron!r} yet")
    return campaign.model_copy(update={"step": occurrence_step(campaign.step, moment)})
