"""Applying inbox rows: statuses only move forward, opt-outs withdraw consent with evidence, and a
provider's "stop this sender" is remembered — on a real, migrated SQLite store."""

from __future__ import annotations

import datetime as dt
import json

import pytest
import sqlalchemy as sa

import sealed
from orchestrator_assets.deliveries.processing import process_rows
from resources.opstore import OperationalStore
from resources.opstore_schema import blocked_senders, consent_events, deliveries, sends, webhook_inbox
from consents import granted_rows, record

NOW = dt.datetime(2026, 11, 24, 12, 0, tzinfo=dt.UTC)


@pytest.fixture
def engine(algor_home):
    store = OperationalStore()
    store.migrate()
    engine = store.engine()
    with engine.begin() as conn:
        for tenant in ("demo", "acme"):  # ids 1 and 2
            sealed.add_contact(conn, tenant, "c1", NOW, phone="+79160000001", vk_user_id=555)
        for t, cid in (("demo", 1), ("acme", 2)):
            for ch in ("vk", "whatsapp"):
                record(conn, t, cid, ch, "grant", NOW)
        conn.execute(
            sa.insert(sends).values(
                send_id="s1", tenant="demo", campaign="c", step="main", contact_id=1, channel="whatsapp", provider="d360",
                address=sealed.sealed_address(conn, "demo", 1, "+79160000001"), status="sent", run_id="r", provider_message_id="wamid.1", claimed_at=NOW, finished_at=NOW,
            )
        )
    return engine


def apply(engine, provider: str, *payloads: dict):
    with engine.begin() as conn:
        for n, payload in enumerate(payloads):
            conn.execute(
                sa.insert(webhook_inbox).values(
                    tenant="demo", provider=provider, account=provider, event_key=f"{provider}-{hash(json.dumps(payload, sort_keys=True))}",
                    payload=json.dumps(payload), received_at=NOW,
                )
            )
        rows = conn.execute(sa.select(webhook_inbox).where(webhook_inbox.c.processed_at.is_(None)).order_by(webhook_inbox.c.id)).all()
        batch = process_rows(conn, "demo", rows, complaint_suppresses_all=True, now=NOW)
        conn.execute(sa.update(webhook_inbox).values(processed_at=NOW))
    return batch


def d360_status(status: str, ts: int) -> dict:
    value = {"messaging_product": "whatsapp", "metadata": {"phone_number_id": "1"}, "statuses": [{"id": "wamid.1", "status": status, "timestamp": str(ts), "recipient_id": "79160000001"}]}
    return {"object": "whatsapp_business_account", "entry": [{"id": "w", "changes": [{"field": "messages", "value": value}]}]}


def test_read_before_delivered_keeps_the_furthest_status(engine):
    apply(engine, "d360", d360_status("read", 1717000100))
    batch = apply(engine, "d360", d360_status("delivered", 1717000003))  # late, out of order
    with engine.connect() as conn:
        assert conn.execute(sa.select(deliveries.c.status)).scalar_one() == "opened"
    assert "status:delivered" not in batch.tally
    assert [event[2] for event in batch.events] == ["delivered"]  # still an event in the warehouse


def test_vk_message_deny_withdraws_only_that_tenants_vk_consent_with_evidence(engine):
    deny = {"type": "message_deny", "event_id": "a1b2c5", "v": "5.199", "group_id": 123, "secret": "s", "object": {"user_id": 555}}
    apply(engine, "vk", deny)
    with engine.connect() as conn:
        granted = {(r.tenant, r.channel) for r in conn.execute(sa.select(granted_rows(NOW)))}
        (fact,) = conn.execute(sa.select(consent_events).where(consent_events.c.action == "withdraw")).all()
    assert granted == {("demo", "whatsapp"), ("acme", "vk"), ("acme", "whatsapp")}
    assert (fact.tenant, fact.channel, fact.origin, fact.source_kind) == ("demo", "vk", "vk:opt_out", "provider_webhook") and "a1b2c5" in fact.detail


def test_green_api_yellow_card_blocks_the_sender(engine):
    yellow = {
        "typeWebhook": "outgoingMessageStatus", "chatId": "79160000001@c.us", "instanceData": {"idInstance": 7103000000},
        "timestamp": 1717000005, "idMessage": "3EB0", "status": "yellowCard", "sendByApi": True,
    }
    batch = apply(engine, "greenapi", yellow)
    with engine.connect() as conn:
        (row,) = conn.execute(sa.select(blocked_senders)).all()
    assert (row.tenant, row.provider) == ("demo", "greenapi") and "yellowCard" in row.reason
    assert batch.tally["sender_blocked"] == 1


def test_a_chat_id_too_large_for_any_contact_names_none_instead_of_failing_the_run(engine):
    """A 30-digit Telegram chat id used to reach the BIGINT query and crash it (found by schemathesis)."""
    kicked = {"update_id": 5, "my_chat_member": {"chat": {"id": 10**30}, "date": 1717000000, "new_chat_member": {"status": "kicked"}}}
    batch = apply(engine, "telegram", kicked)
    assert batch.retry == {} and len(batch.processed_ids) == 1
    with engine.connect() as conn:
        assert conn.execute(sa.select(consent_events).where(consent_events.c.action == "withdraw")).all() == []


@pytest.mark.parametrize("timestamp", [1e300, 10**20, "1e400"], ids=["float", "int", "infinite"])
def test_a_timestamp_no_calendar_holds_is_a_readable_retry_reason_not_a_crash(engine, timestamp):
    event = {"signature": {}, "event-data": {"id": "ev-t", "event": "delivered", "timestamp": timestamp}}
    batch = apply(engine, "mailgun", event)
    (reason,) = batch.retry.values()
    assert reason.startswith("cannot parse mailgun payload: ValueError") and "out of range" in reason
