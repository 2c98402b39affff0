"""The recipient policies applied in one ``campaign_messages`` run: who of each campaign's
audience gets a message now, who waits (and until when), who is excluded (and why).

The rules are pure (``policies/send_policy.py``); this is their store side. It reads the send
ledger for the caps (every campaign of the tenant), counts the audience's exclusions by reason
for the run metadata, turns a contact whose template cannot be rendered into an exclusion instead
of a failed run, and records in ``campaign_wakeups`` when a campaign with deferred messages must
run again, for ``sensors/deferred.py`` to launch it then (docs/policies.md).
"""

from __future__ import annotations

import datetime as dt
import re
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import dagster as dg
import sqlalchemy as sa

from orchestrator_assets.consent_ledger import utc  # SQLite hands times back without the offset
from orchestrator_assets.contact_pii import CHANNEL_INDEX, INDEX_COLUMNS
from orchestrator_assets.segment_sql import segment_where
from orchestrator_assets.sends.ledger import FAILED
from orchestrator_assets.tables import markdown_table
from policies.campaigns import Campaign, ChannelContent
from policies.consent_purposes import CampaignPurpose
from policies.loader import PolicyBundle
from policies.rendering import RenderedMessage, TemplateRenderError
from policies.segments import Rule
from policies.send_policy import Hold, Reason, SendPressure, contact_zone, day_start, hold_for, wall_clock
from resources.opstore_schema import campaign_wakeups, contacts, segment_members, sends
from resources.pii import TenantCipher
from resources.sql import upsert_insert

# Renders one channel's message for one contact (the campaign's sender: language, marking, erid).
Renderer = Callable[[ChannelContent, Mapping[str, Any], Mapping[str, Any]], RenderedMessage]

NO_CHANNEL = "—"  # a fallback contact waits on the campaign, not on one channel
_WHERE_PREFIX = re.compile(r"^campaign '[^']*', channel \w+, ")



class CampaignPolicies:
    """One run's verdicts, counts and wake-ups, over the campaigns it renders."""

    def __init__(self, tenant: str, bundle: PolicyBundle, pressure: SendPressure, now: dt.datetime, run_id: str):
        self.tenant, self.now, self.run_id, self.pressure = tenant, now, run_id, pressure
        self.policy = pressure.policy
        self.tenant_timezone = bundle.tenants[tenant].timezone
        self.counts: Counter[tuple[str, str, str, str]] = Counter()  # (campaign, channel, reason, detail) -> contacts
        self.earliest: dict[tuple[str, str, str], dt.datetime] = {}  # (campaign, channel, reason) -> first wake-up
        self._counted: set[tuple[str, int, str]] = set()  # (campaign, contact, channel) planned in this run

    @classmethod
    def load(cls, conn: sa.Connection, bundle: PolicyBundle, tenant: str, now: dt.datetime, run_id: str) -> CampaignPolicies:
        """Read what the caps count: the tenant's ledger rows that may have reached someone (every
        campaign, refusals left out) within the longest cap period, and since the tenant's midnight."""
        policy = bundle.policy.recipients.for_tenant(tenant)
        reached = sa.and_(sends.c.tenant == tenant, sends.c.status != FAILED)
        history: Sequence[tuple[int, str, dt.datetime]] = []
        if (longest := SendPressure.longest_period(policy)) is not None:
            rows = conn.execute(sa.select(sends.c.contact_id, sends.c.channel, sends.c.claimed_at).where(reached, sends.c.claimed_at > now - longest))
            history = [(row.contact_id, row.channel, utc(row.claimed_at)) for row in rows]
        today = 0
        if policy.tenant_daily_cap is not None:
            midnight = day_start(now, contact_zone(None, bundle.tenants[tenant].timezone))
            today = conn.execute(sa.select(sa.func.count()).where(reached, sends.c.claimed_at >= midnight)).scalar_one()
        return cls(tenant, bundle, SendPressure(now, policy, history, today), now, run_id)

    def screen(
        self, conn: sa.Connection, cipher: TenantCipher, campaign: Campaign, eligible: Mapping[str, list[dict]], plan: Mapping[str, list[dict]],
        contact_ids: Sequence[int], rule: Rule | None,
    ) -> dict[str, list[dict]]:
        """The part of ``plan`` (per channel, after the fallback) that goes now; the rest counted.

        A message with a ledger row already is passed through untouched: the send step decides
        (skips it when final), and it is in the caps' history already.
        """
        self._count_audience(conn, cipher, campaign, eligible, contact_ids, rule)
        if campaign.fallback is not None:
            planned = {contact["id"] for planned_ in plan.values() for contact in planned_}
            waiting = {contact["id"] for eligible_ in eligible.values() for contact in eligible_} - planned
            self._add(campaign.name, NO_CHANNEL, Reason.FALLBACK_WAITING, "", len(waiting))
        in_ledger = set(
            conn.execute(
                sa.select(sends.c.contact_id, sends.c.channel).where(sends.c.tenant == self.tenant, sends.c.campaign == campaign.name, sends.c.step == campaign.step)
            ).tuples()
        )
        schedule = campaign.schedule
        local = schedule if schedule is not None and schedule.local_time is not None else None
        tenant_zone = contact_zone(None, self.tenant_timezone)
        screened: dict[str, list[dict]] = {}
        for content in campaign.channels:
            channel = str(content.channel)
            screened[content.channel] = []
            for contact in plan[content.channel]:
                if (contact["id"], channel) in in_ledger:
                    screened[content.channel].append(contact)
                    continue
                zone = contact_zone(contact.get("timezone"), self.tenant_timezone)
                hold = hold_for(
                    self.now, self.policy, self.pressure, contact["id"], channel, zone, tenant_zone,
                    advertising=campaign.purpose is CampaignPurpose.ADVERTISING,
                    scheduled=schedule is not None,
                    local_due=wall_clock(local.date, local.local_time, zone) if local is not None else None,
                )
                if hold is None:
                    self.pressure.count(contact["id"], channel)
                    self._counted.add((campaign.name, contact["id"], channel))
                    screened[content.channel].append(contact)
                else:
                    self._hold(campaign.name, channel, hold)
        return screened

    def render(
        self, campaign: Campaign, content: ChannelContent, contact: Mapping[str, Any], variables: Mapping[str, Any], render: Renderer
    ) -> RenderedMessage | None:
        """The message ``render`` makes, or None when the template cannot be rendered for this
        contact (a missing field, a text over the channel's limit): that contact is excluded with
        the error, grouped by its words (personal data masked), and the rest of the campaign goes on."""
        try:
            return render(content, contact, variables)
        except TemplateRenderError as exc:
            channel = str(content.channel)
            if (campaign.name, contact["id"], channel) in self._counted:
                self._counted.discard((campaign.name, contact["id"], channel))
                self.pressure.uncount(contact["id"], channel)
            self._add(campaign.name, channel, Reason.RENDER_FAILED, _masked_error(str(exc), contact), 1)
            return None

    def finish(self, conn: sa.Connection, campaign: Campaign, contact_ids: Sequence[int]) -> None:
        """Record when ``campaign`` must run again for its deferred messages, or that nothing waits.

        Only a run over the campaign's whole audience knows that; a run for named contacts (a
        trigger, an operator's pick) leaves the row alone. Trigger campaigns are never deferred.
        """
        if campaign.schedule is None or contact_ids:
            return
        key = sa.and_(campaign_wakeups.c.tenant == self.tenant, campaign_wakeups.c.campaign == campaign.name)
        deferred = {(channel, reason): until for (name, channel, reason), until in self.earliest.items() if name == campaign.name}
        if not deferred:
            conn.execute(sa.delete(campaign_wakeups).where(key))
            return
        count = sum(n for (name, channel, reason, _detail), n in self.counts.items() if name == campaign.name and (name, channel, reason) in self.earliest)
        row = {
            "wake_at": min(deferred.values()),
            "deferred": count,
            "reasons": ",".join(sorted({reason for _, reason in deferred})),
            "run_id": self.run_id,
            "updated_at": self.now,
        }
        insert = upsert_insert(conn, campaign_wakeups).values(tenant=self.tenant, campaign=campaign.name, **row)
        conn.execute(insert.on_conflict_do_update(index_elements=["tenant", "campaign"], set_=row))

    def metadata(self) -> dict[str, Any]:
        """Run metadata: every contact left out, by campaign × channel × reason (render errors
        grouped by their words), and how many messages wait for a later run."""
        rows = []
        for (campaign, channel, reason, detail), count in sorted(self.counts.items()):
            if (until := self.earliest.get((campaign, channel, reason))) is not None:
                detail = f"deferred; first due {until:%Y-%m-%d %H:%M} UTC"
            rows.append((campaign, channel, reason, detail, count))
        deferred = sum(count for (campaign, channel, reason, _), count in self.counts.items() if (campaign, channel, reason) in self.earliest)
        table = markdown_table(["campaign", "channel", "reason", "detail", "contacts"], rows, empty="No contact was left out.")
        return {"excluded": sum(self.counts.values()) - deferred, "deferred": deferred, "exclusions": dg.MetadataValue.md(table)}

    def _count_audience(
        self, conn: sa.Connection, cipher: TenantCipher, campaign: Campaign, eligible: Mapping[str, list[dict]], contact_ids: Sequence[int], rule: Rule | None
    ) -> None:
        """Split the candidates the audience query left out by reason: not (or no longer) matching
        the rule (a merged contact too), no address on the channel, no consent for the purpose."""
        live = contacts.c.merged_into.is_(None)
        if contact_ids:
            matching = sa.and_(live, segment_where(rule, contacts, cipher)) if rule is not None else live
            source, where = contacts, contacts.c.id.in_(contact_ids)
            candidates = len(set(contact_ids))
        else:
            matching, candidates = live, None
            source = contacts.join(segment_members, sa.and_(segment_members.c.contact_id == contacts.c.id, segment_members.c.tenant == self.tenant))
            where = segment_members.c.segment == campaign.segment
        for content in campaign.channels:
            address = INDEX_COLUMNS[CHANNEL_INDEX[content.channel]]
            counted = sa.select(
                sa.func.count(),
                sa.func.count(sa.case((matching, 1))),
                sa.func.count(sa.case((sa.and_(matching, address.is_not(None)), 1))),
            ).select_from(source).where(contacts.c.tenant == self.tenant, where)
            members, in_rule, with_address = conn.execute(counted).one()
            channel = str(content.channel)
            self._add(campaign.name, channel, Reason.NOT_IN_RULE, "", (candidates if candidates is not None else members) - in_rule)
            self._add(campaign.name, channel, Reason.NO_ADDRESS, "", in_rule - with_address)
            self._add(campaign.name, channel, Reason.NO_CONSENT, "", with_address - len(eligible[content.channel]))

    def _add(self, campaign: str, channel: str, reason: Reason, detail: str, count: int) -> None:
        if count > 0:
            self.counts[campaign, channel, str(reason), detail] += count

    def _hold(self, campaign: str, channel: str, hold: Hold) -> None:
        self._add(campaign, channel, hold.reason, "", 1)
        if hold.until is not None:
            key = (campaign, channel, str(hold.reason))
            self.earliest[key] = min(hold.until, self.earliest.get(key, hold.until))


def _masked_error(message: str, contact: Mapping[str, Any]) -> str:
    """The render error without the campaign and channel (the table's columns) and without any of
    the contact's values: a filter's error may quote the value it choked on (``int('Иван')``)."""
    message = _WHERE_PREFIX.sub("", message)
    for value in sorted((str(v) for k, v in contact.items() if k != "id" and v is not None), key=len, reverse=True):
        if len(value) >= 3:
            message = message.replace(value, "***")
    return message
