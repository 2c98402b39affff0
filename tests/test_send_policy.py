"""The recipient policies' rules (policies/send_policy.py), pure: quiet hours on each contact's own
clock (across zones, midnight and DST), caps over the ledger's history, the local-time schedule,
and the YAML's validation errors."""

from __future__ import annotations

import datetime as dt
import shutil
from zoneinfo import ZoneInfo

import pytest
import yaml

from policies import loader
from policies.campaigns import Schedule
from policies.loader import PolicyError, load_bundle
from policies.send_policy import (
    FrequencyCap,
    Hold,
    QuietHours,
    Reason,
    RecipientPolicy,
    SendPressure,
    contact_zone,
    hold_for,
    quiet_until,
    wall_clock,
)

UTC = dt.UTC
MOSCOW, VLADIVOSTOK, BERLIN = ZoneInfo("Europe/Moscow"), ZoneInfo("Asia/Vladivostok"), ZoneInfo("Europe/Berlin")
NIGHT = QuietHours(start="21:00", end="09:00")


def at(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text).astimezone(UTC)


@pytest.mark.parametrize(
    ("zone", "now", "until"),
    [
        # 12:30 UTC: 15:30 in Moscow (awake), 22:30 in Vladivostok (quiet until 09:00 there tomorrow).
        pytest.param(MOSCOW, "2026-12-01T12:30Z", None, id="moscow afternoon"),
        pytest.param(VLADIVOSTOK, "2026-12-01T12:30Z", "2026-12-02T09:00+10:00", id="vladivostok evening: to tomorrow"),
        # 23:30 UTC: 02:30 in Moscow, after midnight inside the window: it ends the same local day.
        pytest.param(MOSCOW, "2026-12-01T23:30Z", "2026-12-02T09:00+03:00", id="after midnight: same local day"),
        pytest.param(MOSCOW, "2026-12-01T18:00Z", "2026-12-02T09:00+03:00", id="start is inside"),
        pytest.param(MOSCOW, "2026-12-02T06:00Z", None, id="end is outside"),
        # Berlin springs forward on 2026-03-29: 08:00 that morning is 06:00 UTC, not 07:00.
        pytest.param(BERLIN, "2026-03-28T21:30Z", "2026-03-29T08:00+02:00", id="DST spring: the window ends on summer time"),
        pytest.param(BERLIN, "2026-03-29T06:30Z", None, id="DST spring: 08:30 summer time is awake"),
        # …and falls back on 2026-10-25: 08:00 that morning is 07:00 UTC.
        pytest.param(BERLIN, "2026-10-24T20:30Z", "2026-10-25T08:00+01:00", id="DST autumn: the window ends on winter time"),
    ],
)
def test_quiet_hours_on_the_contacts_own_clock(zone, now, until):
    quiet = NIGHT if zone is not BERLIN else QuietHours(start="22:00", end="08:00")
    assert quiet_until(at(now), zone, quiet) == (at(until) if until else None)


def test_a_window_within_one_day_and_one_ending_in_a_dst_gap():
    lunch = QuietHours(start="13:00", end="14:00")
    assert quiet_until(at("2026-12-01T10:30Z"), MOSCOW, lunch) == at("2026-12-01T14:00+03:00")
    assert quiet_until(at("2026-12-01T11:00Z"), MOSCOW, lunch) is None
    # 02:30 does not exist in Berlin on 2026-03-29: the window opens just after the gap, never early.
    gap = QuietHours(start="01:00", end="02:30")
    opens = quiet_until(at("2026-03-29T00:15Z"), BERLIN, gap)  # 01:15 winter time
    assert opens == at("2026-03-29T03:30+02:00") and opens.astimezone(BERLIN).hour >= 3


def test_a_contact_without_a_timezone_keeps_the_tenants_hours():
    assert contact_zone(None, "Europe/Moscow") == MOSCOW
    assert contact_zone("", "Europe/Moscow") == MOSCOW
    assert contact_zone("Mars/Olympus_Mons", "Europe/Moscow") == MOSCOW  # unknown to this tz database
    assert contact_zone("Asia/Vladivostok", "Europe/Moscow") == VLADIVOSTOK


def pressure(policy: RecipientPolicy, history=(), today: int = 0, now: dt.datetime = at("2026-12-01T12:00Z")) -> SendPressure:
    return SendPressure(now, policy, history, today)


def verdict(policy: RecipientPolicy, counts: SendPressure, contact: int = 1, channel: str = "telegram", zone=MOSCOW, **kinds) -> Hold | None:
    kinds = {"advertising": True, "scheduled": True, "local_due": None} | kinds
    return hold_for(counts.now, policy, counts, contact, channel, zone, MOSCOW, **kinds)


def test_frequency_caps_count_every_campaign_per_channel_within_the_period():
    now = at("2026-12-01T12:00Z")
    policy = RecipientPolicy(frequency_caps=[FrequencyCap(max=2, period="7d"), FrequencyCap(channels=["sms"], max=1, period="24h")])
    history = [(1, "telegram", now - dt.timedelta(days=1)), (1, "telegram", now - dt.timedelta(days=6)), (1, "telegram", now - dt.timedelta(days=8)),
               (1, "sms", now - dt.timedelta(hours=25)), (2, "telegram", now - dt.timedelta(days=1))]
    counts = pressure(policy, history)
    assert verdict(policy, counts, 1, "telegram") == Hold(Reason.FREQUENCY_CAP)  # two within 7 days (the third is older)
    assert verdict(policy, counts, 1, "email") is None  # caps are per channel
    assert verdict(policy, counts, 1, "sms") is None  # yesterday's SMS is 25 hours old
    assert verdict(policy, counts, 2, "telegram") is None
    counts.count(2, "telegram")  # planned earlier in this run (another campaign)
    assert verdict(policy, counts, 2, "telegram") == Hold(Reason.FREQUENCY_CAP)
    counts.uncount(2, "telegram")  # …but its template failed: it never goes
    assert verdict(policy, counts, 2, "telegram") is None
    # Transactional messages are never held by a cap.
    assert verdict(policy, counts, 1, "telegram", advertising=False) is None


def test_tenant_daily_cap_defers_to_the_tenants_next_day_and_spares_trigger_campaigns():
    policy = RecipientPolicy(tenant_daily_cap=2)
    counts = pressure(policy, today=1)
    assert verdict(policy, counts) is None
    counts.count(1, "telegram")
    assert verdict(policy, counts, 2) == Hold(Reason.TENANT_CAP, at("2026-12-02T00:00+03:00"))
    assert verdict(policy, counts, 2, scheduled=False) is None  # a welcome answers the person's own /start


def test_deferrals_come_first_and_hold_only_advertising_of_scheduled_campaigns():
    policy = RecipientPolicy(quiet_hours=NIGHT, frequency_caps=[FrequencyCap(max=1, period="24h")])
    night = at("2026-12-01T20:00Z")  # 23:00 in Moscow
    counts = pressure(policy, [(1, "telegram", night - dt.timedelta(hours=1))], now=night)
    assert verdict(policy, counts) == Hold(Reason.QUIET_HOURS, at("2026-12-02T09:00+03:00"))  # capped now, maybe not by morning
    assert verdict(policy, counts, scheduled=False) == Hold(Reason.FREQUENCY_CAP)  # trigger: never deferred, still capped
    assert verdict(policy, counts, advertising=False) is None
    due = at("2026-12-02T10:00+03:00")
    assert verdict(policy, counts, advertising=False, local_due=due) == Hold(Reason.LOCAL_TIME, due)


def test_local_time_schedule_starts_when_the_first_clock_shows_it_and_each_contact_on_their_own():
    schedule = Schedule(local_time="10:00", date="2026-12-01")
    assert schedule.start_at == at("2026-11-30T20:00Z")  # 10:00 at UTC+14
    assert wall_clock(schedule.date, schedule.local_time, VLADIVOSTOK) == at("2026-12-01T00:00Z")
    assert wall_clock(schedule.date, schedule.local_time, MOSCOW) == at("2026-12-01T07:00Z")
    assert Schedule(start_at="2026-11-20T09:00:00+03:00").local_time is None  # start_at keeps working
    for bad, why in [({"local_time": "10:00"}, "a local-time schedule needs local_time together with date"),
                     ({"start_at": "2026-11-20T09:00:00+03:00", "local_time": "10:00", "date": "2026-12-01"}, "not several"),
                     ({"local_time": "25:00", "date": "2026-12-01"}, "HH:MM")]:
        with pytest.raises(ValueError, match=why):
            Schedule.model_validate(bad)


def test_tenant_overrides_replace_only_the_keys_they_name():
    recipients = load_bundle().policy.recipients
    assert recipients.for_tenant("demo").quiet_hours is None  # the demo sends at any hour
    assert recipients.for_tenant("demo").frequency_caps == recipients.defaults.frequency_caps
    assert recipients.for_tenant("a_new_tenant").quiet_hours == NIGHT


@pytest.mark.parametrize(
    ("recipients", "where", "why"),
    [
        ({"defaults": {"quiet_hours": {"start": 1260, "end": "09:00"}}}, "recipients.defaults.quiet_hours.start", 'write the time in quotes, e.g. "21:00"'),
        ({"defaults": {"quiet_hours": {"start": "21:00", "end": "21:00"}}}, "recipients.defaults.quiet_hours", "the window would be empty"),
        ({"defaults": {"frequency_caps": [{"max": 2, "period": "1w"}]}}, "recipients.defaults.frequency_caps[0].period", "30m, 24h, 7d"),
        ({"defaults": {"frequency_caps": [{"max": 0, "period": "7d"}]}}, "recipients.defaults.frequency_caps[0].max", "greater than or equal to 1"),
        ({"defaults": {"frequency_caps": [{"channels": ["fax"], "max": 1, "period": "7d"}]}}, "recipients.defaults.frequency_caps[0].channels[0]", "telegram"),
        ({"tenants": {"demo": {"quiet_hour": None}}}, "recipients.tenants.demo.quiet_hour", "Extra inputs are not permitted"),
        ({"tenants": {"nobody": {"quiet_hours": None}}}, "recipients.tenants.nobody", "tenant 'nobody' is not defined in tenants.yaml"),
    ],
)
def test_bad_recipient_policies_name_the_file_the_key_and_the_reason(tmp_path, recipients, where, why):
    config = shutil.copytree(loader.DEFAULT_CONFIG_DIR, tmp_path / "config")
    policy = yaml.safe_load((config / "policy.yaml").read_text(encoding="utf-8"))
    (config / "policy.yaml").write_text(yaml.safe_dump({**policy, "recipients": recipients}), encoding="utf-8")
    with pytest.raises(PolicyError) as error:
        load_bundle(config)
    assert f"policy.yaml: {where}: " in str(error.value) and why in str(error.value)
