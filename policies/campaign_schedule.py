"""When a scheduled campaign starts: once at ``start_at``; once at ``local_time`` on ``date`` on each
contact's own clock; or at every occurrence of a ``cron`` expression read in a ``timezone``.

A local-time campaign starts at the first moment any clock on Earth (UTC+14) shows its time, and
``policies/send_policy.py`` defers each contact until their own clock does, which spreads the send
across time zones; ``start_at`` is set to that first moment, so the schedule sensor treats it as a
one-off.

Each cron occurrence is a campaign of its own for the send ledger, whose key is (tenant, campaign,
step, contact, channel): the occurrence's messages go under the step ``<step>@<occurrence>``
(``main@2026-12-07T10:00+03:00``), so every contact can get each occurrence once, and a re-run of
one occurrence sends nothing twice. The occurrence is written in the schedule's own timezone, as
an operator reads it, to the minute (cron's resolution).

Cron expressions are read by ``cronsim`` (the five standard fields, ``L``, ``#``, day names; what
Healthchecks uses), which steps through daylight-saving changes the way cron does: a time that does
not exist that day runs at the first minute after the gap, one that exists twice runs once.
"""

from __future__ import annotations

import datetime as dt
import zoneinfo

from cronsim import CronSim, CronSimError
from pydantic import AwareDatetime, model_validator

from policies.fields import NonBlank, StrictModel
from policies.send_policy import EARLIEST_ZONE, LocalTime

STEP_SEPARATOR = "@"
OCCURRENCE_FORMAT_EXAMPLE = "2026-12-07T10:00+03:00"
STEP_COLUMN_CHARS = 64  # sends.step
# A step name must leave room in the ledger's step column for "@" and the occurrence.
MAX_CRON_STEP_CHARS = STEP_COLUMN_CHARS - len(STEP_SEPARATOR) - len(OCCURRENCE_FORMAT_EXAMPLE)


class Schedule(StrictModel):
    """``start_at`` (one-off), ``local_time`` + ``date`` (one-off on each contact's clock) or
    ``cron`` + ``timezone`` (recurring): exactly one kind."""

    start_at: AwareDatetime | None = None  # naive times are ambiguous across tenant timezones
    local_time: LocalTime | None = None
    date: dt.date | None = None
    cron: NonBlank | None = None
    timezone: NonBlank | None = None  # IANA name, e.g. Europe/Moscow; required with cron

    @model_validator(mode="after")
    def _one_kind(self) -> Schedule:
        if (self.local_time, self.date) != (None, None):
            if self.start_at is not None or self.cron is not None:
                raise ValueError("give one of start_at, local_time with date, or cron; not several")
            if self.local_time is None or self.date is None:
                raise ValueError("a local-time schedule needs local_time together with date")
            object.__setattr__(self, "start_at", dt.datetime.combine(self.date, self.local_time, tzinfo=EARLIEST_ZONE))
            return self
        if (self.start_at is None) == (self.cron is None):
            given = "both" if self.start_at is not None else "neither"
            raise ValueError(f"a schedule needs exactly one of `start_at` (once) or `cron` (recurring), got {given}")
        if self.cron is None:
            if self.timezone is not None:
                raise ValueError("`timezone` goes with `cron`; a `start_at` carries its own offset")
            return self
        if self.timezone is None:
            raise ValueError(f"cron {self.cron!r} needs a `timezone` (e.g. Europe/Moscow): 10:00 is a different moment in every zone")
        try:
            zone = zoneinfo.ZoneInfo(self.timezone)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown timezone {self.timezone!r} (an IANA name such as Europe/Moscow)") from None
        try:
            CronSim(self.cron, dt.datetime.now(zone))
        except CronSimError as exc:
            raise ValueError(f"invalid cron expression {self.cron!r}: {exc}") from None
        return self

    @property
    def recurring(self) -> bool:
        return self.cron is not None

    def latest_occurrence(self, now: dt.datetime) -> dt.datetime | None:
        """The newest start at or before ``now`` (None when there is none yet). Older cron
        occurrences are never returned: see ``sensors/campaigns.py`` for why none is replayed."""
        if self.start_at is not None:
            return self.start_at if self.start_at <= now else None
        zone = zoneinfo.ZoneInfo(self.timezone)
        # cronsim's reverse walk starts strictly before its anchor: anchor on the next minute so a
        # start at this very minute counts.
        anchor = now.astimezone(zone).replace(second=0, microsecond=0) + dt.timedelta(minutes=1)
        return next(CronSim(self.cron, anchor, reverse=True), None)

    def is_occurrence(self, moment: dt.datetime) -> bool:
        """Whether ``moment`` is one of this schedule's starts."""
        return self.latest_occurrence(moment) == moment


def occurrence_label(moment: dt.datetime) -> str:
    """``2026-12-07T10:00+03:00``: the occurrence as run keys, tags and steps name it."""
    return moment.isoformat(timespec="minutes")


def occurrence_step(step: str, occurrence: dt.datetime) -> str:
    """The ledger step of one occurrence: ``main@2026-12-07T10:00+03:00``."""
    return f"{step}{STEP_SEPARATOR}{occurrence_label(occurrence)}"


def parse_occurrence(schedule: Schedule, text: str) -> dt.datetime:
    """An occurrence given as text (run config): must be a start of ``schedule``."""
    try:
        moment = dt.datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"occurrence {text!r} is not an ISO date-time such as {OCCURRENCE_FORMAT_EXAMPLE}") from None
    if moment.tzinfo is None:
        raise ValueError(f"occurrence {text!r} has no UTC offset (write it as {OCCURRENCE_FORMAT_EXAMPLE})")
    moment = moment.astimezone(zoneinfo.ZoneInfo(schedule.timezone))
    if not schedule.is_occurrence(moment):
        raise ValueError(f"{text} is not an occurrence of cron {schedule.cron!r} in {schedule.timezone}")
    return moment
