"""Per-arm counts of an A/B test: how many of each arm were sent the campaign, and how many of
them reached the goal within the window.

The unit is the contact. A variant's contact counts once it has a ``sent`` event of the campaign
(on any channel, or on the experiment's ``goal_channel``), from its first one; it reaches the goal
with a goal event in [first send, first send + window]: a ``delivered`` or ``clicked`` event of
the campaign (on that channel), or a ``conversion`` event (any campaign and channel, since the
tenant posts it) named by the goal. A conversion must come after the send; a delivery or click of
the campaign belongs to a send of it whatever its timestamp says (providers stamp events with
their own clock, often a few hundred milliseconds before our ``sent`` is recorded), so for those
only the window's end applies. The holdout is
sent nothing, so it counts from its assignment, and only a conversion goal can be reached
without a message: for delivered/clicked its row shows the size alone.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pandas as pd
import sqlalchemy as sa

from orchestrator_assets.experiments.statistics import ArmCounts
from policies.experiments import CONVERSION_EVENT, HOLDOUT, Experiment
from resources import warehouse as wh
from resources.opstore_schema import experiment_assignments

_FIRST_SENDS = f"""
SELECT contact_id, min(occurred_at) AS first_sent
FROM {wh.EVENTS_TABLE}
WHERE tenant = {{tenant:String}} AND campaign = {{campaign:String}} AND event_type = '{wh.SENT}'
  AND ({{channel:String}} = '' OR channel = {{channel:String}})
GROUP BY contact_id
"""
_CAMPAIGN_GOALS = f"""
SELECT DISTINCT contact_id, occurred_at FROM {wh.EVENTS_TABLE}
WHERE tenant = {{tenant:String}} AND campaign = {{campaign:String}} AND event_type = {{event:String}}
  AND ({{channel:String}} = '' OR channel = {{channel:String}})
"""
_CONVERSIONS = f"""
SELECT DISTINCT contact_id, occurred_at FROM {wh.EVENTS_TABLE}
WHERE tenant = {{tenant:String}} AND event_type = '{CONVERSION_EVENT}' AND reason = {{event:String}}
"""


def assignments(conn: sa.Connection, tenant: str, campaign: str) -> pd.DataFrame:
    """contact_id, arm, assigned_at of every contact the campaign's test has placed."""
    query = sa.select(experiment_assignments.c.contact_id, experiment_assignments.c.arm, experiment_assignments.c.assigned_at).where(
        experiment_assignments.c.tenant == tenant, experiment_assignments.c.campaign == campaign
    )
    frame = pd.DataFrame(conn.execute(query).all(), columns=["contact_id", "arm", "assigned_at"])
    frame["assigned_at"] = pd.to_datetime(frame["assigned_at"], utc=True)  # SQLite hands them back naive (stored as UTC)
    return frame


def _frame(client: Any, sql: str, parameters: dict[str, str], columns: list[str]) -> pd.DataFrame:
    rows = client.query(sql, parameters=parameters).result_rows
    frame = pd.DataFrame(rows, columns=columns)
    for column in columns[1:]:
        frame[column] = pd.to_datetime(frame[column], utc=True)
    frame["contact_id"] = frame["contact_id"].astype("int64")
    return frame


def arm_counts(client: Any, tenant: str, campaign: str, experiment: Experiment, placed: pd.DataFrame) -> tuple[list[ArmCounts], ArmCounts | None]:
    """The variants' counts (the control first) and the holdout's (None without a holdout)."""
    parameters = {"tenant": tenant, "campaign": campaign, "channel": str(experiment.goal_channel or "")}
    first_sends = _frame(client, _FIRST_SENDS, parameters, ["contact_id", "first_sent"])
    if experiment.conversion_event is None:
        goals = _frame(client, _CAMPAIGN_GOALS, parameters | {"event": experiment.goal}, ["contact_id", "occurred_at"])
    else:
        goals = _frame(client, _CONVERSIONS, {"tenant": tenant, "event": experiment.conversion_event}, ["contact_id", "occurred_at"])
    exposed = placed.merge(first_sends, on="contact_id", how="left")
    holdout = exposed["arm"] == HOLDOUT
    exposed["since"] = exposed["first_sent"].where(~holdout, exposed["assigned_at"])
    exposed = exposed[exposed["since"].notna()]
    window = dt.timedelta(hours=experiment.window_hours)
    hits = exposed.merge(goals, on="contact_id")
    in_window = hits["occurred_at"] <= hits["since"] + window
    if experiment.conversion_event is not None:
        in_window &= hits["occurred_at"] >= hits["since"]
    hits = hits[in_window]
    reached = set(hits["contact_id"])
    exposed["reached"] = exposed["contact_id"].isin(reached)
    by_arm = exposed.groupby("arm")["reached"].agg(["size", "sum"])

    def counts(arm: str) -> ArmCounts:
        n, successes = (int(by_arm.loc[arm, "size"]), int(by_arm.loc[arm, "sum"])) if arm in by_arm.index else (0, 0)
        return ArmCounts(arm, n, successes)

    variants = [counts(v.name) for v in experiment.variants]
    return variants, (counts(HOLDOUT) if experiment.holdout > 0 else None)
