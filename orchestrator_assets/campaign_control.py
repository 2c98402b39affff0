"""Pause, resume and cancel: a campaign's operator-set state and its one writer.

A campaign is ``active`` until an operator pauses or cancels it (``campaign_control_job``). The
state lives in the operational store (``campaign_states``), so every process agrees on it: the send
path reads it between claim batches and stops claiming a halted campaign's messages; the schedule
and trigger sensors start nothing for it; ``campaign_resume_sensor`` re-launches the runs a pause
halted once it is resumed. Those runs skip every ledger row already final, so a resumed campaign
continues where it stopped with no message sent twice. Cancel is final: a cancelled campaign is
never resumed (a new campaign name starts afresh).

Each change is written with its audit row (``resources/audit.py``) in one transaction.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from enum import StrEnum

import sqlalchemy as sa

from resources.audit import record_audit
from resources.opstore_schema import campaign_states
from resources.sql import upsert_insert


class CampaignState(StrEnum):
    ACTIVE = "active"
    PAUSED = "paused"
    CANCELLED = "cancelled"


class Action(StrEnum):
    PAUSE = "pause"
    RESUME = "resume"
    CANCEL = "cancel"


# action -> (states it applies to, state it leads to)
TRANSITIONS = {
    Action.PAUSE: ({CampaignState.ACTIVE}, CampaignState.PAUSED),
    Action.RESUME: ({CampaignState.PAUSED}, CampaignState.ACTIVE),
    Action.CANCEL: ({CampaignState.ACTIVE, CampaignState.PAUSED}, CampaignState.CANCELLED),
}


class RefusedChange(ValueError):
    """The action does not apply to the campaign's current state; nothing was changed."""


def campaign_states_of(conn: sa.Connection, tenant: str, campaigns: Iterable[str] | None = None) -> dict[str, CampaignState]:
    """The state of each of ``tenant``'s campaigns that is not active (all of them when None)."""
    query = sa.select(campaign_states.c.campaign, campaign_states.c.state).where(
        campaign_states.c.tenant == tenant, campaign_states.c.state != CampaignState.ACTIVE
    )
    if campaigns is not None:
        query = query.where(campaign_states.c.campaign.in_(sorted(set(campaigns))))
    return {row.campaign: CampaignState(row.state) for row in conn.execute(query)}


def halted_campaigns(conn: sa.Connection, tenant: str, campaigns: Iterable[str]) -> frozenset[str]:
    """Which of ``campaigns`` must send nothing now (paused or cancelled): one indexed query."""
    return frozenset(campaign_states_of(conn, tenant, campaigns))


def change_state(
    conn: sa.Connection, tenant: str, campaign: str, action: Action, *, actor: str, reason: str, now: dt.datetime, run_id: str | None = None
) -> tuple[CampaignState, CampaignState]:
    """Apply ``action`` to the campaign and audit it; returns (before, after). Raises
    ``RefusedChange`` naming the current state when the action does not apply to it."""
    row = conn.execute(
        sa.select(campaign_states.c.state).where(campaign_states.c.tenant == tenant, campaign_states.c.campaign == campaign).with_for_update()
    ).first()
    before = CampaignState(row.state) if row else CampaignState.ACTIVE
    applies_to, after = TRANSITIONS[action]
    if before not in applies_to:
        allowed = " or ".join(sorted(applies_to))
        raise RefusedChange(f"cannot {action} campaign {campaign!r} of tenant {tenant!r}: it is {before} (only a campaign that is {allowed} can be)")
    values = {"state": str(after), "reason": reason, "actor": actor, "changed_at": now, "run_id": run_id}
    statement = upsert_insert(conn, campaign_states).values(tenant=tenant, campaign=campaign, **values)
    conn.execute(statement.on_conflict_do_update(index_elements=[campaign_states.c.tenant, campaign_states.c.campaign], set_=values))
    record_audit(
        conn, tenant=tenant, actor=actor, action=f"campaign.{action}", run_id=run_id, now=now,
        params={"campaign": campaign, "reason": reason, "from": str(before), "to": str(after)},
    )  # fmt: skip
    return before, after


def halted_by_tenant(conn: sa.Connection) -> dict[str, frozenset[str]]:
    """Every tenant's paused or cancelled campaigns (what the sensors must not start)."""
    rows = conn.execute(sa.select(campaign_states.c.tenant, campaign_states.c.campaign).where(campaign_states.c.state != CampaignState.ACTIVE))
    found: dict[str, set[str]] = {}
    for row in rows:
        found.setdefault(row.tenant, set()).add(row.campaign)
    return {tenant: frozenset(names) for tenant, names in found.items()}
