"""Applying inbox rows: statuses only move forward, opt-outs withdraw consent with evidence, and a
provider's "stop this sender" is remembered — on a real, migrated SQLite store."""

from __future__ import annotations

import datetime as dt
import json

import pytest
import sqlalchemy as sa

import sealed
from orchestrator_assets.deliveries.processing import process_rows
from orchestrator_assets.sends.decisions import DecisionRequest, decide
from orchestrator_assets.sends.ledger import finalise
from resources.channels.base import SendResult
from resources.event_keys import stored_event_key
from resources.opstore import OperationalStore
from resources.opstore_schema import blocked_senders, consent_events, deliveries, send_decisions, sends, webhook_inbox
from resources.pii import tenant_cipher
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
        sent(conn, "s1", "whatsapp", "d360", "+79160000001", "wamid.1")
    return engine


def sent(conn, send_id: str, channel: str, provider: str, address: str, provider_id: str, tenant: str = "demo", contact_id: int = 1) -> None:
    """A ledger row claimed and then finalised with the provider's id, as a send run records it."""
    conn.execute(
        sa.insert(sends).values(
            send_id=send_id, tenant=tenant, campaign=f"c-{send_id}", step="main", contact_id=contact_id, channel=channel, provider=provider,
            address=sealed.sealed_address(conn, tenant, contact_id, address), status="claimed", run_id="r", claimed_at=NOW,
        )
    )
    finalise(conn, tenant_cipher(conn, tenant), "r", [(send_id, provider, "sent", SendResult(ok=True, provider_message_id=provider_id))], NOW)


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
    assert (fact.tenant, fact.channel, fact.origin, fact.source_kind) == ("demo", "vk", "vk:opt_out", "provider_webhook")
    assert stored_event_key("demo", "vk", "a1b2c5") in fact.detail  # the evidence names the event as the inbox keeps it


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


def telegram_press(update_id: int, chat_id: int, message_id: int) -> dict:
    message = {"message_id": message_id, "chat": {"id": chat_id, "type": "private"}, "date": 1717000000, "text": "Подписаться?"}
    return {"update_id": update_id, "callback_query": {"id": f"q{update_id}", "from": {"id": chat_id, "is_bot": False}, "message": message, "data": "sub:yes"}}


def test_a_telegram_button_press_finds_its_send_though_the_ledger_keeps_no_chat_id(engine):
    """Telegram's id is "<chat id>:<message id>": the ledger keeps the chat id's blind index instead,
    so the press (which carries the raw pair) still lands on its send, and nothing made from the
    row (warehouse event, tenant's webhook event) names the chat."""
    chat = 987654321012
    with engine.begin() as conn:
        sent(conn, "t1", "telegram", "telegram", str(chat), f"{chat}:4711")
        sent(conn, "t2", "telegram", "telegram", str(chat + 1), f"{chat + 1}:4711")  # same message id, another chat
        sealed.add_contact(conn, "acme", "c2", NOW, telegram_chat_id=chat)
        sent(conn, "a1", "telegram", "telegram", str(chat), f"{chat}:4711", tenant="acme", contact_id=3)
        stored = {row.send_id: row.provider_message_id for row in conn.execute(sa.select(sends).where(sends.c.channel == "telegram"))}
    assert all(str(chat)[:8] not in value for value in stored.values())
    assert stored["t1"].startswith("tg:4711:") and len(set(stored.values())) == 3  # per chat and per tenant
    batch = apply(engine, "telegram", telegram_press(7, chat, 4711))
    assert batch.retry == {} and batch.tally["status:clicked"] == 1
    ((_, _, kind, send_id, *_rest),) = batch.events
    assert (kind, send_id) == ("clicked", "t1")
    assert str(chat) not in repr(batch.events) + repr(batch.webhook_events)


def test_a_press_on_an_unknown_telegram_message_is_retried_without_naming_the_chat(engine):
    batch = apply(engine, "telegram", telegram_press(8, 555000111222, 9))
    (reason,) = batch.retry.values()
    assert reason.startswith("clicked for unknown message tg:") and "555000111222" not in reason


def test_an_operators_mark_sent_keeps_the_provider_id_the_way_callbacks_find_it(engine):
    """The operator copies the id from the provider's console (the raw pair); the ledger keeps it
    like every other Telegram id, so the later button press still finds the send."""
    chat = 444555666777
    with engine.begin() as conn:
        sent(conn, "t3", "telegram", "telegram", str(chat), f"{chat}:12")
        conn.execute(sa.update(sends).where(sends.c.send_id == "t3").values(status="ambiguous", provider_message_id=None))
        decide(conn, "demo", "ops@example.ru", [DecisionRequest("mark_sent", "seen in the chat", send_id="t3", provider_message_id=f"{chat}:12")], "run-1", NOW)
        row = conn.execute(sa.select(sends).where(sends.c.send_id == "t3")).one()
        decision = conn.execute(sa.select(send_decisions.c.provider_message_id)).scalar_one()
    assert row.status == "sent" and str(chat) not in row.provider_message_id and decision == row.provider_message_id
    batch = apply(engine, "telegram", telegram_press(9, chat, 12))
    assert [event[3] for event in batch.events] == ["t3"]
