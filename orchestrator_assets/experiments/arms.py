"""Which arm of a campaign's A/B test each planned contact is in, and what it is sent now.

Called by ``campaign_messages`` for each campaign it renders: contacts seen for the first time
get their arm from the hash (``policies.experiments.arm_for``) and it is recorded in
``experiment_assignments``; contacts seen before keep the recorded one. The holdout is sent
nothing; the rollout remainder is sent the variant the latest look chose (the winner, or the
control after a final "no winner" with ``if_no_winner: send_control``) and nothing before; once
the test has ended, so is anyone new to the audience, whatever arm the hash gives them.
The send ledger's key (campaign, step, contact, channel) keeps every contact to one message a
channel however often the campaign is rendered, so a rollout reaches each contact once.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

import sqlalchemy as sa

from policies.campaigns import Campaign, ChannelContent
from policies.experiments import HOLDOUT, ROLLOUT, arm_for
from resources.opstore_schema import experiment_assignments, experiment_looks
from resources.sql import bulk_insert

WAITING = "nothing yet (waiting for the winner)"
STOPPED = "nothing (the test ended without a winner)"


@dataclass
class CampaignArms:
    """A campaign's contacts' arms; without an experiment everyone is sent the campaign as written."""

    campaign: Campaign
    arms: dict[int, str] = field(default_factory=dict)  # contact id -> holdout | variant | rollout
    rollout_variant: str | None = None  # what the rollout remainder gets now; None: nothing
    concluded: bool = False  # the test has ended (a winner, or no winner at the final look)
    _contents: dict[tuple[str, str], ChannelContent] = field(default_factory=dict)

    def variant(self, contact_id: int) -> str | None:
        """The variant the contact is sent now: "" without an experiment, None when withheld."""
        if self.campaign.experiment is None:
            return ""
        return self._gets(self.arms[contact_id])

    def _gets(self, arm: str) -> str | None:
        if arm == HOLDOUT:
            return None
        # Once the test has ended, a contact new to the audience gets the decision whatever its
        # arm (those already sent their variant are skipped by the ledger).
        if arm == ROLLOUT or (self.concluded and self.rollout_variant):
            return self.rollout_variant
        return arm

    def content(self, content: ChannelContent, contact_id: int) -> ChannelContent:
        """The channel's message as the contact's variant words it."""
        variant = self.variant(contact_id)
        if not variant:
            return content
        key = (variant, content.channel)
        if key not in self._contents:
            self._contents[key] = self.campaign.experiment.content_for(variant, content)
        return self._contents[key]

    def sent_now(self, plan: dict[str, list[dict]]) -> dict[str, list[dict]]:
        """``plan`` (channel -> contacts) without the contacts withheld now."""
        return {channel: [c for c in contacts if self.variant(c["id"]) is not None] for channel, contacts in plan.items()}

    def summary(self) -> list[tuple]:
        """(campaign, arm, contacts, sent now) rows for the run's metadata."""
        if self.campaign.experiment is None:
            return []
        withheld = {HOLDOUT: "nothing (holdout)", ROLLOUT: STOPPED if self.concluded else WAITING}
        counts = Counter(self.arms.values())
        return [(self.campaign.name, arm, count, self._gets(arm) or withheld[arm]) for arm, count in sorted(counts.items())]


def campaign_arms(conn: sa.Connection, tenant: str, campaign: Campaign, plan: dict[str, list[dict]], now: dt.datetime) -> CampaignArms:
    """The arms of every contact in ``plan``, recording those not yet recorded (in ``conn``'s transaction)."""
    experiment = campaign.experiment
    if experiment is None:
        return CampaignArms(campaign)
    planned = {contact["id"] for contacts in plan.values() for contact in contacts}
    where = (experiment_assignments.c.tenant == tenant, experiment_assignments.c.campaign == campaign.name)
    recorded = {row.contact_id: row.arm for row in conn.execute(sa.select(experiment_assignments.c.contact_id, experiment_assignments.c.arm).where(*where))}
    new = {contact_id: arm_for(experiment, tenant, campaign.name, contact_id) for contact_id in sorted(planned - recorded.keys())}
    bulk_insert(conn, experiment_assignments, ("tenant", "campaign", "contact_id", "arm", "assigned_at"), ((tenant, campaign.name, c, arm, now) for c, arm in new.items()))
    arms = {contact_id: arm for contact_id, arm in (recorded | new).items() if contact_id in planned}
    known = {HOLDOUT, ROLLOUT, *(v.name for v in experiment.variants)}
    if unknown := sorted({arm for arm in arms.values() if arm not in known}):
        raise ValueError(f"campaign {campaign.name!r}: contacts were assigned to variant(s) {unknown} no longer in its experiment; restore them (arms never move)")
    return CampaignArms(campaign, arms, *latest_rollout(conn, tenant, campaign.name))


def latest_rollout(conn: sa.Connection, tenant: str, campaign: str) -> tuple[str | None, bool]:
    """What the latest look said the rollout remainder gets, and whether the test has ended."""
    query = (
        sa.select(experiment_looks.c.rollout_variant, experiment_looks.c.final)
        .where(experiment_looks.c.tenant == tenant, experiment_looks.c.campaign == campaign)
        .order_by(experiment_looks.c.look.desc())
        .limit(1)
    )
    row = conn.execute(query).first()
    return (row.rollout_variant, row.final) if row else (None, False)


def arms_table_rows(all_arms: Iterable[CampaignArms]) -> list[tuple]:
    return [row for arms in all_arms for row in arms.summary()]
