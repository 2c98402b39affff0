"""Status-based fallback: one channel per contact, the next only when the earlier provably failed."""

from __future__ import annotations

import datetime as dt

import pytest

from orchestrator_assets.fallback import Attempt, next_channel

NOW = dt.datetime(2026, 11, 24, 12, 0, tzinfo=dt.UTC)
ORDER = ["email", "whatsapp", "sms"]  # providers that report delivery
ALL = set(ORDER)
THIRTY_MINUTES = dt.timedelta(minutes=30)


def sent(minutes_ago: int, delivery: str | None = None, receipts: bool = True) -> Attempt:
    return Attempt("sent", delivery, NOW - dt.timedelta(minutes=minutes_ago), receipts)


def failed() -> Attempt:
    return Attempt("failed", None, NOW, True)


@pytest.mark.parametrize(
    ("eligible", "attempts", "after", "expected"),
    [
        pytest.param(ALL, {}, None, "email", id="first channel first"),
        pytest.param({"whatsapp", "sms"}, {}, None, "whatsapp", id="skips channels without consent/address"),
        pytest.param(ALL, {"email": failed()}, None, "whatsapp", id="unreachable moves on"),
        pytest.param(ALL, {"email": sent(1, "delivery_failed")}, None, "whatsapp", id="bounce moves on"),
        pytest.param(ALL, {"email": sent(1, "delivered")}, None, None, id="delivered stops"),
        pytest.param(ALL, {"email": sent(1, "clicked")}, None, None, id="clicked stops"),
        pytest.param(ALL, {"email": sent(5)}, THIRTY_MINUTES, None, id="no receipt yet waits"),
        pytest.param(ALL, {"email": sent(31)}, THIRTY_MINUTES, "whatsapp", id="no receipt in time moves on"),
        pytest.param(ALL, {"email": sent(999)}, None, None, id="without a timeout never doubles up"),
        pytest.param(ALL, {"email": Attempt("claimed", None, None, True)}, None, None, id="unknown outcome waits"),
        pytest.param(ALL, {"email": Attempt("ambiguous", None, None, True)}, dt.timedelta(minutes=1), None, id="ambiguous waits"),
        pytest.param(ALL, {"email": Attempt("resend", None, None, True)}, None, "email", id="operator's resend: same channel again"),
        pytest.param(ALL, {"email": failed(), "whatsapp": failed()}, None, "sms", id="chain"),
        pytest.param(ALL, {c: failed() for c in ORDER}, None, None, id="nothing left"),
    ],
)
def test_next_channel(eligible, attempts, after, expected):
    assert next_channel(ORDER, eligible, attempts, NOW, after) == expected


@pytest.mark.parametrize("first", ["telegram", "vk"])
def test_acceptance_ends_the_chain_where_no_receipt_can_come(first):
    """Telegram and VK never report delivery: a timeout waiting for a receipt would move every
    contact they reached on to SMS, messaging each person twice. Acceptance is the last word."""
    order, everyone = [first, "sms"], {first, "sms"}
    accepted_long_ago = {first: sent(999, receipts=False)}
    assert next_channel(order, everyone, accepted_long_ago, NOW, THIRTY_MINUTES) is None
    # A refusal is still a refusal: the next channel gets its turn.
    refused = {first: Attempt("failed", None, NOW, False)}
    assert next_channel(order, everyone, refused, NOW, THIRTY_MINUTES) == "sms"


# --- the same rule over a real store, after the send path published its outcomes --------------


def test_fallback_plan_over_published_sends_moves_on_only_where_delivery_could_be_confirmed(algor_home):
    """Telegram and VK sends accepted two hours ago stay where they are; an e-mail accepted as long
    ago without a receipt (Mailgun reports delivery) moves on to SMS after the 30-minute timeout."""
    import sqlalchemy as sa

    from orchestrator_assets.campaigns import fallback_plan
    from orchestrator_assets.sends.outcomes import publish_send_outcomes
    from policies.campaigns import Campaign
    from resources.opstore import OperationalStore
    from resources.opstore_schema import contacts, deliveries, sends
    from resources.warehouse import Warehouse

    store = OperationalStore()
    store.migrate()
    engine = store.engine()
    accepted_at = NOW - dt.timedelta(hours=2)
    first_channel = {1: ("telegram", "telegram"), 2: ("vk", "vk"), 3: ("email", "mailgun")}
    with engine.begin() as conn:
        conn.execute(
            sa.insert(contacts),
            [{"id": cid, "tenant": "demo", "external_id": f"c{cid}", "created_at": NOW, "updated_at": NOW} for cid in first_channel],
        )
        conn.execute(
            sa.insert(sends),
            [
                {"send_id": f"s{cid}", "tenant": "demo", "campaign": "reach_once", "step": "main", "contact_id": cid,
                 "channel": channel, "provider": provider, "address": b"sealed, not read here", "status": "sent", "run_id": "r",
                 "provider_message_id": f"m{cid}", "claimed_at": accepted_at, "finished_at": accepted_at}
                for cid, (channel, provider) in first_channel.items()
            ],
        )
    publish_send_outcomes(engine, Warehouse(), "demo", accepted_at, [])
    campaign = Campaign.model_validate(
        {
            "name": "reach_once",
            "tenant": "demo",
            "segment": "everyone_with_email",
            "schedule": {"start_at": "2026-11-20T09:00:00+03:00"},
            "fallback": {"undelivered_after_minutes": 30},
            "channels": [
                {"channel": "telegram", "text": "hi"},
                {"channel": "vk", "text": "hi"},
                {"channel": "email", "subject": "hi", "text": "hi {{ unsubscribe_url }}"},
                {"channel": "sms", "text": "hi"},
            ],
        }
    )
    eligible = {
        "telegram": [{"id": 1}],
        "vk": [{"id": 2}],
        "email": [{"id": 3}],
        "sms": [{"id": cid} for cid in first_channel],
    }
    with engine.connect() as conn:
        statuses = dict(conn.execute(sa.select(deliveries.c.send_id, deliveries.c.status)).all())
        plan = fallback_plan(conn, "demo", campaign, eligible, NOW)
    assert statuses == {"s1": "sent", "s2": "sent", "s3": "sent"}  # accepted is not delivered
    assert {channel: [c["id"] for c in planned] for channel, planned in plan.items()} == {
        "telegram": [], "vk": [], "email": [], "sms": [3]
    }
