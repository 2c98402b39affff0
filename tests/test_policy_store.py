"""The recipient policies' store side on SQLite and PostgreSQL, without Dagster: a local-time
campaign's wake-up row follows the time zones in turn (inserted, moved on, deleted), and the
fallback sensor's query finds exactly the sends that stopped counting in its window."""

from __future__ import annotations

import datetime as dt

import sqlalchemy as sa

from orchestrator_assets.audience_policies import CampaignPolicies
from policies.campaigns import Campaign
from policies.loader import load_bundle
from resources.opstore_schema import campaign_wakeups, contacts, deliveries, sends
from resources.pii import tenant_cipher
from sensors.fallback import fallback_moments

UTC = dt.UTC
PEOPLE = [{"id": 1, "timezone": "Asia/Vladivostok"}, {"id": 2, "timezone": "Europe/Moscow"}, {"id": 3, "timezone": None}, {"id": 4, "timezone": "America/New_York"}]


def local_news() -> Campaign:
    return Campaign.model_validate(
        {"name": "local_news", "tenant": "demo", "segment": "everyone_with_email", "schedule": {"local_time": "10:00", "date": "2026-12-01"},
         "channels": [{"channel": "telegram", "text": "Новости"}]}
    )


def screen_at(engine: sa.Engine, now: dt.datetime) -> tuple[list[int], sa.Row | None, dict]:
    """One run's screening of PEOPLE at ``now``: who goes, the wake-up row it leaves, its metadata."""
    campaign, bundle = local_news(), load_bundle()
    with engine.begin() as conn:
        policies = CampaignPolicies.load(conn, bundle, "demo", now, f"run-{now:%H%M}")
        plan = policies.screen(conn, tenant_cipher(conn, "demo"), campaign, {"telegram": PEOPLE}, {"telegram": PEOPLE}, (), None)
        policies.finish(conn, campaign, ())
        row = conn.execute(sa.select(campaign_wakeups)).one_or_none()
    return [contact["id"] for contact in plan["telegram"]], row, policies.metadata()


def utc(row: sa.Row) -> dt.datetime:
    return row.wake_at if row.wake_at.tzinfo else row.wake_at.replace(tzinfo=UTC)


def test_a_local_time_campaign_wakes_up_zone_by_zone(engine):
    moscow_ten = dt.datetime(2026, 12, 1, 7, 0, tzinfo=UTC)
    new_york_ten = dt.datetime(2026, 12, 1, 15, 0, tzinfo=UTC)
    going, row, meta = screen_at(engine, dt.datetime(2026, 12, 1, 5, 0, tzinfo=UTC))
    assert going == [1]  # 15:00 in Vladivostok already
    assert (utc(row), row.deferred, row.reasons) == (moscow_ten, 3, "local_time")  # no zone: the tenant's Moscow
    assert meta["deferred"] == 3 and "| local_news | telegram | local_time | deferred; first due 2026-12-01 07:00 UTC | 3 |" in meta["exclusions"].value

    going, row, _ = screen_at(engine, moscow_ten)
    assert going == [1, 2, 3]  # 1 again: the send ledger (empty here) is what skips a message already sent
    assert (utc(row), row.deferred, row.run_id) == (new_york_ten, 1, "run-0700")  # the same row, moved on

    going, row, _ = screen_at(engine, new_york_ten)
    assert going == [1, 2, 3, 4] and row is None  # nothing waits: the row is gone


def fallback_campaign(after: int | None = 30) -> Campaign:
    return Campaign.model_validate(
        {"name": "reach", "tenant": "demo", "segment": "everyone_with_email", "schedule": {"start_at": "2026-11-20T09:00:00+03:00"},
         "fallback": {"undelivered_after_minutes": after},
         "channels": [{"channel": "email", "subject": "s", "text": "{{ unsubscribe_url }}"}, {"channel": "telegram", "text": "t"}, {"channel": "sms", "text": "s"}]}
    )


def test_the_fallback_query_finds_refusals_bounces_and_timeouts_in_its_window_only(engine):
    now = dt.datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
    minutes = lambda n: now - dt.timedelta(minutes=n)  # noqa: E731
    # contact: (channel, provider, ledger status, finished, delivery status, delivery recorded)
    history = {
        1: ("email", "mailgun", "failed", minutes(5), None, None),  # refused 5 minutes ago
        2: ("email", "mailgun", "sent", minutes(50), "delivery_failed", minutes(2)),  # bounced 2 minutes ago
        3: ("email", "mailgun", "sent", minutes(40), "sent", minutes(40)),  # no receipt for 40 minutes (> 30)
        4: ("email", "mailgun", "sent", minutes(10), "sent", minutes(10)),  # no receipt yet, 10 minutes
        5: ("email", "mailgun", "sent", minutes(90), "delivered", minutes(85)),  # reached
        6: ("telegram", "telegram", "sent", minutes(90), "sent", minutes(90)),  # Telegram never confirms: acceptance ends it
        7: ("sms", "smsc", "failed", minutes(5), None, None),  # the last channel: nothing after it
        8: ("email", "mailgun", "claimed", None, None, None),  # outcome unknown
    }
    with engine.begin() as conn:
        conn.execute(sa.insert(contacts), [{"id": cid, "tenant": "demo", "external_id": f"c{cid}", "created_at": now, "updated_at": now} for cid in history])
        for cid, (channel, provider, status, finished, delivery, recorded) in history.items():
            conn.execute(sa.insert(sends).values(send_id=f"s{cid}", tenant="demo", campaign="reach", step="main", contact_id=cid, channel=channel, provider=provider,
                                                 address=b"sealed", status=status, run_id="r", claimed_at=finished or now, finished_at=finished))
            if delivery:
                conn.execute(sa.insert(deliveries).values(send_id=f"s{cid}", tenant="demo", status=delivery, status_rank=1, last_event_at=recorded, updated_at=recorded))
    with engine.connect() as conn:
        found = fallback_moments(conn, "demo", fallback_campaign(), None, now)
        assert found == {1: minutes(5), 2: minutes(2), 3: minutes(10)}  # 3: 40 minutes ago + 30
        assert fallback_moments(conn, "demo", fallback_campaign(), minutes(5), now) == {2: minutes(2)}  # after the cursor only
        assert fallback_moments(conn, "demo", fallback_campaign(), minutes(2), now) == {}
        assert fallback_moments(conn, "demo", fallback_campaign(after=None), None, now) == {1: minutes(5), 2: minutes(2)}  # no timeout: never for silence
