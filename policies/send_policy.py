"""Policies that protect recipients (``policy.yaml`` → ``recipients``), and their rules.

What the operator writes: quiet hours in each contact's own time zone, frequency caps per contact ×
channel × period (counted over every campaign), and a per-tenant daily cap, as ``defaults`` for
every tenant with per-tenant overrides. What the campaign step asks (``hold_for``): may this
message go now, or is it deferred (until when) or excluded (why)? Pure: the store side
(``orchestrator_assets/audience_policies.py``) reads the send ledger into ``SendPressure`` and
applies the verdicts; docs/policies.md is the operator's reference.

Message class: the policies hold *advertising* only. A transactional message (an order
confirmation, a one-time code) answers something the person is waiting for: a night-time delay or
a cap would break the service they asked for, and 38-FZ regulates advertising, not service
messages. Transactional sends still count towards the caps, since the person received them.
"""

from __future__ import annotations

import datetime as dt
import re
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from functools import lru_cache
from typing import Annotated, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BeforeValidator, Field, model_validator

from policies.channels import Channel
from policies.fields import StrictModel, TenantId

# The first clocks to show a given local time: Kiribati's Line Islands, UTC+14.
EARLIEST_ZONE = dt.timezone(dt.timedelta(hours=14))
_PERIOD = re.compile(r"^\s*(\d+)\s*([mhd])\s*$")
_PERIOD_UNITS = {"m": "minutes", "h": "hours", "d": "days"}


def _local_time(value: Any) -> dt.time:
    """``"21:00"`` or ``"21:00:30"``; YAML 1.1 reads an unquoted 21:00 as the number 1260."""
    if isinstance(value, dt.time):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        raise ValueError(f'write the time in quotes, e.g. "21:00" (YAML reads 21:00 unquoted as the number {value})')
    if isinstance(value, str) and re.fullmatch(r"\d{2}:\d{2}(:\d{2})?", value.strip()):
        try:
            return dt.time.fromisoformat(value.strip())
        except ValueError:
            pass
    raise ValueError(f'a local time is "HH:MM" on a 24-hour clock, e.g. "21:00" (got {value!r})')


def _period(value: Any) -> dt.timedelta:
    """``"30m"``, ``"24h"``, ``"7d"``: a rolling window ending now."""
    if isinstance(value, dt.timedelta):
        return value
    match = _PERIOD.match(value) if isinstance(value, str) else None
    if match is None or int(match[1]) == 0:
        raise ValueError(f"a period is a positive number of minutes, hours or days: 30m, 24h, 7d (got {value!r})")
    return dt.timedelta(**{_PERIOD_UNITS[match[2]]: int(match[1])})


LocalTime = Annotated[dt.time, BeforeValidator(_local_time)]
Period = Annotated[dt.timedelta, BeforeValidator(_period)]


class QuietHours(StrictModel):
    """No advertising from ``start`` until ``end`` on the contact's own clock; ``start`` after ``end``
    is a window across midnight (21:00–09:00). A message due inside it is deferred to ``end``."""

    start: LocalTime
    end: LocalTime

    @model_validator(mode="after")
    def _not_empty(self) -> QuietHours:
        if self.start == self.end:
            raise ValueError("start and end are the same time: the window would be empty (or the whole day)")
        return self


class FrequencyCap(StrictModel):
    """At most ``max`` messages per contact on a channel within the last ``period``, whatever the
    campaign; without ``channels`` the cap holds on every channel, each counted on its own."""

    channels: list[Channel] = []
    max: int = Field(ge=1)
    period: Period

    def applies_to(self, channel: str) -> bool:
        return not self.channels or channel in self.channels


class RecipientPolicy(StrictModel):
    """One tenant's protections; every key is optional and off when absent."""

    quiet_hours: QuietHours | None = None
    frequency_caps: list[FrequencyCap] = []
    # Messages per calendar day in the tenant's time zone (tenants.yaml); the rest waits for the next day.
    tenant_daily_cap: int | None = Field(default=None, ge=1)


class RecipientPolicies(StrictModel):
    """``defaults`` for every tenant; a tenant listed under ``tenants`` replaces the keys it names
    (``quiet_hours: null`` turns them off for that tenant)."""

    defaults: RecipientPolicy = RecipientPolicy()
    tenants: dict[TenantId, RecipientPolicy] = {}

    def for_tenant(self, tenant: str) -> RecipientPolicy:
        override = self.tenants.get(tenant)
        if override is None:
            return self.defaults
        return self.defaults.model_copy(update={name: getattr(override, name) for name in override.model_fields_set})


class Reason(StrEnum):
    """Why a contact of a campaign's audience gets no message in this run (the run metadata's codes)."""

    NOT_IN_RULE = "not_in_rule"  # triggered, but does not match the campaign's segment rule (or merged away)
    NO_ADDRESS = "no_address"  # nothing to send to on the channel
    NO_CONSENT = "no_consent"  # lacks a consent the campaign's purpose needs on the channel
    FALLBACK_WAITING = "fallback_waiting"  # fallback: not this channel now (earlier channel pending or reached)
    LOCAL_TIME = "local_time"  # deferred: the schedule's local time has not come on the contact's clock
    QUIET_HOURS = "quiet_hours"  # deferred to the end of the contact's quiet hours
    FREQUENCY_CAP = "frequency_cap"  # excluded: the contact had enough messages on the channel
    TENANT_CAP = "tenant_cap"  # deferred to the tenant's next day
    RENDER_FAILED = "render_failed"  # excluded: the template cannot be rendered for this contact


@dataclass(frozen=True)
class Hold:
    """A message that does not go now: deferred ``until`` a moment, or excluded (``until`` None)."""

    reason: Reason
    until: dt.datetime | None = None


@lru_cache(maxsize=1024)
def _zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


def contact_zone(contact_timezone: str | None, tenant_timezone: str) -> ZoneInfo:
    """The contact's own zone; the tenant's when the contact has none (or one this system's tz
    database no longer knows: imports validated it, but tzdata may have renamed it since)."""
    if contact_timezone:
        try:
            return _zone(contact_timezone)
        except (ZoneInfoNotFoundError, ValueError):
            pass
    return _zone(tenant_timezone)


def wall_clock(day: dt.date, at: dt.time, zone: ZoneInfo) -> dt.datetime:
    """The UTC instant ``zone``'s clocks show ``at`` on ``day``. A time skipped by a DST jump
    (02:30 on a spring-forward night) is read with the offset before the jump, so it lands just
    after the gap: a window never opens early."""
    return dt.datetime.combine(day, at, tzinfo=zone).astimezone(dt.UTC)


def quiet_until(now: dt.datetime, zone: ZoneInfo, quiet: QuietHours) -> dt.datetime | None:
    """When ``quiet`` ends for a contact in ``zone``, if their clock is inside it at ``now``; else None."""
    local = now.astimezone(zone)
    clock = local.time().replace(tzinfo=None)
    if quiet.start < quiet.end:
        inside = quiet.start <= clock < quiet.end
    else:  # across midnight
        inside = clock >= quiet.start or clock < quiet.end
    if not inside:
        return None
    day = local.date() if clock < quiet.end else local.date() + dt.timedelta(days=1)
    return wall_clock(day, quiet.end, zone)


def next_day_start(now: dt.datetime, zone: ZoneInfo) -> dt.datetime:
    return wall_clock(now.astimezone(zone).date() + dt.timedelta(days=1), dt.time(0), zone)


def day_start(now: dt.datetime, zone: ZoneInfo) -> dt.datetime:
    return wall_clock(now.astimezone(zone).date(), dt.time(0), zone)


class SendPressure:
    """How many messages each contact got per channel, and the tenant today: the send ledger's
    rows (every campaign) plus what this run has planned so far.

    ``history`` is ``(contact_id, channel, claimed_at)`` of every ledger row that may have reached
    the contact within the longest cap period (refusals excluded); ``tenant_today`` the tenant's
    count since its local midnight.
    """

    def __init__(self, now: dt.datetime, policy: RecipientPolicy, history: Iterable[tuple[int, str, dt.datetime]], tenant_today: int):
        self.now, self.policy, self.tenant_today = now, policy, tenant_today
        self._times: defaultdict[tuple[int, str], list[dt.datetime]] = defaultdict(list)
        for contact_id, channel, claimed_at in history:
            self._times[contact_id, channel].append(claimed_at)

    @staticmethod
    def longest_period(policy: RecipientPolicy) -> dt.timedelta | None:
        return max((cap.period for cap in policy.frequency_caps), default=None)

    def capped(self, contact_id: int, channel: str) -> FrequencyCap | None:
        times = self._times.get((contact_id, channel), ())
        for cap in self.policy.frequency_caps:
            if cap.applies_to(channel) and sum(1 for at in times if at > self.now - cap.period) >= cap.max:
                return cap
        return None

    def tenant_full(self) -> bool:
        cap = self.policy.tenant_daily_cap
        return cap is not None and self.tenant_today >= cap

    def count(self, contact_id: int, channel: str) -> None:
        self._times[contact_id, channel].append(self.now)
        self.tenant_today += 1

    def uncount(self, contact_id: int, channel: str) -> None:
        """A planned message that will not go after all (its template failed for the contact)."""
        self._times[contact_id, channel].remove(self.now)
        self.tenant_today -= 1


def hold_for(
    now: dt.datetime,
    policy: RecipientPolicy,
    pressure: SendPressure,
    contact_id: int,
    channel: str,
    zone: ZoneInfo,
    tenant_zone: ZoneInfo,
    *,
    advertising: bool,
    scheduled: bool,
    local_due: dt.datetime | None,
) -> Hold | None:
    """Whether one message may go now (None) or why not. Deferrals come first, so a deferred
    message meets the caps as they stand when it finally goes.

    ``scheduled`` is False for a trigger campaign: it answers something the person just did (a
    /start), so it is never deferred (quiet hours, tenant cap) — only capped. ``local_due`` is when
    a local-time schedule makes this contact due.
    """
    if local_due is not None and now < local_due:
        return Hold(Reason.LOCAL_TIME, local_due)
    if not advertising:
        return None
    if scheduled and policy.quiet_hours is not None and (until := quiet_until(now, zone, policy.quiet_hours)) is not None:
        return Hold(Reason.QUIET_HOURS, until)
    if pressure.capped(contact_id, channel) is not None:
        return Hold(Reason.FREQUENCY_CAP)
    if scheduled and pressure.tenant_full():
        return Hold(Reason.TENANT_CAP, next_day_start(now, tenant_zone))
    return None
