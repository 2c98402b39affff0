"""Opt-in signals in delivery processing: who gets a contact, which signal grants, the evidence, the
trigger occurrence, and the order of grants and withdrawals — on migrated SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
import itertools
import json

import pytest
import sqlalchemy as sa

import sealed
from orchestrator_assets.deliveries.processing import process_rows
from resources.event_keys import stored_event_key
from resources.links import sign_deep_link
from orchestrator_assets.consent_ledger import ConsentFact, append
from policies.consent_purposes import Purpose, SourceKind
from resources.opstore_schema import consent_events, contacts, trigger_events, webhook_inbox
from consents import consent_status

NOW = dt.datetime(2026, 11, 24, 12, 0, tzinfo=dt.UTC)
T0 = int(dt.datetime(2026, 11, 24, 10, 0, tzinfo=dt.UTC).timestamp())
_ids = itertools.count(1)


def start(chat: int, at: int = T0, payload: str = "") -> dict:
    text = f"/start {payload}".strip()
    return {"update_id": next(_ids), "message": {"message_id": 1, "chat": {"id": chat, "type": "private"}, "date": at, "text": text}}


def stop(chat: int, at: int) -> dict:
    return {"update_id": next(_ids), "message": {"message_id": 2, "chat": {"id": chat, "type": "private"}, "date": at, "text": "/stop"}}


def member(chat: int, status: str, at: int = T0) -> dict:
    return {"update_id": next(_ids), "my_chat_member": {"chat": {"id": chat, "type": "private"}, "date": at, "new_chat_member": {"status": status}}}


def vk_event(kind: str, user: int) -> dict:
    return {"type": kind, "event_id": f"ev{next(_ids)}", "v": "5.199", "group_id": 1, "object": {"user_id": user, "key": ""}}


def apply(engine, provider: str, *payloads: dict, tenant: str = "demo", now: dt.datetime = NOW):
    """Store payloads in the inbox as the gateway would and process them in one transaction at ``now``."""
    with engine.begin() as conn:
        ids = [
            conn.execute(
                sa.insert(webhook_inbox)
                .values(tenant=tenant, provider=provider, account=provider, event_key=f"k{next(_ids)}", payload=json.dumps(p), received_at=now)
                .returning(webhook_inbox.c.id)
            ).scalar_one()
            for p in payloads
        ]
        rows = conn.execute(sa.select(webhook_inbox).where(webhook_inbox.c.id.in_(ids)).order_by(webhook_inbox.c.id)).all()
        batch = process_rows(conn, tenant, rows, complaint_suppresses_all=True, now=now)
    assert not batch.retry, batch.retry
    return batch


def add_contact(engine, external_id: str, tenant: str = "demo", **fields) -> int:
    with engine.begin() as conn:
        return sealed.add_contact(conn, tenant, external_id, NOW, **fields)


def state(engine, contact_id: int, channel: str = "telegram") -> str | None:
    return consent_status(engine, contact_id, channel, now=NOW)


def contact_by_chat(engine, chat: int):
    with engine.connect() as conn:
        return sealed.contacts_with(conn, "demo", "telegram_chat_id", chat)


def newcomer(engine, channel: str, address: int) -> str:
    with engine.connect() as conn:
        return sealed.newcomer_external_id(conn, "demo", channel, address)


def test_start_from_an_unknown_chat_creates_a_contact_grants_with_evidence_and_records_the_trigger(engine):
    update = start(700001)
    batch = apply(engine, "telegram", update)
    (contact,) = contact_by_chat(engine, 700001)
    assert (contact.tenant, contact.external_id) == ("demo", newcomer(engine, "telegram", 700001))
    with engine.connect() as conn:
        assert sealed.personal(conn, "demo", contact.id) == {"telegram_chat_id": 700001}  # the chat id, sealed, and nothing else
    assert state(engine, contact.id) == "granted"
    with engine.connect() as conn:
        (fact,) = conn.execute(sa.select(consent_events)).all()
        (trigger,) = conn.execute(sa.select(trigger_events)).all()
        inbox_id = conn.execute(sa.select(webhook_inbox.c.id)).scalar_one()
    detail = json.loads(fact.detail)
    assert (fact.action, fact.channel, fact.purpose, fact.origin) == ("grant", "telegram", "advertising", "telegram:opt_in")
    assert (fact.source_kind, fact.source_ref, fact.withdrawal_channel) == ("bot_command", f"inbox:{inbox_id}", "telegram")
    event = stored_event_key("demo", "telegram", f"update:{update['update_id']}")  # the update, as the inbox keeps its id
    assert detail["event"] == event and detail["reason"] == "command:/start"
    assert b"700001" not in fact.detail.encode() and fact.evidence_identity  # the chat id is identifying evidence, kept apart
    assert fact.occurred_at.replace(tzinfo=dt.UTC) == dt.datetime.fromtimestamp(T0, dt.UTC)  # Telegram's date, not ours
    assert (trigger.event, trigger.contact_id, trigger.inbox_id) == ("telegram_start", contact.id, inbox_id)
    assert batch.tally["opt_in_contact_created"] == 1 and batch.tally["consents_granted"] == 1
    assert [str(e.type) for e in batch.webhook_events] == ["consent.granted"]


def test_a_second_start_keeps_one_contact_and_records_a_second_trigger(engine):
    apply(engine, "telegram", start(700002))
    batch = apply(engine, "telegram", start(700002, at=T0 + 60))
    assert len(contact_by_chat(engine, 700002)) == 1
    assert batch.tally["opt_in_contact_known"] == 1 and batch.tally["consents_granted"] == 0
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(trigger_events)).scalar_one() == 2


def test_signed_deep_link_binds_the_chat_to_the_named_contact(engine):
    ivan = add_contact(engine, "crm-1", email="ivan@example.ru")
    batch = apply(engine, "telegram", start(700003, payload=sign_deep_link("demo", ivan)))
    assert [c.id for c in contact_by_chat(engine, 700003)] == [ivan]
    assert state(engine, ivan) == "granted" and batch.tally["opt_in_contact_bound"] == 1


def _tampered(token: str) -> str:
    """The token with its last character changed (always changed: a token may end in any letter)."""
    return token[:-1] + ("y" if token.endswith("x") else "x")


@pytest.mark.parametrize(
    "token",
    [
        pytest.param(lambda ivan: sign_deep_link("acme", ivan), id="another tenant's token"),
        pytest.param(lambda ivan: _tampered(sign_deep_link("demo", ivan)), id="tampered"),
        pytest.param(lambda ivan: "promo42", id="plain campaign payload"),
        pytest.param(lambda ivan: "проверка-1-ё", id="non-ASCII"),
    ],
)
def test_unverifiable_payload_binds_nothing_and_the_chat_gets_its_own_contact(engine, token):
    ivan = add_contact(engine, "crm-2", email="ivan@example.ru")
    apply(engine, "telegram", start(700004, payload=token(ivan)))
    (contact,) = contact_by_chat(engine, 700004)
    assert contact.external_id == newcomer(engine, "telegram", 700004) and state(engine, ivan) is None


def test_deep_link_never_moves_a_contact_that_already_has_another_chat(engine):
    ivan = add_contact(engine, "crm-3", telegram_chat_id=111)
    apply(engine, "telegram", start(700005, payload=sign_deep_link("demo", ivan)))
    assert [c.external_id for c in contact_by_chat(engine, 700005)] == [newcomer(engine, "telegram", 700005)]
    assert [c.id for c in contact_by_chat(engine, 111)] == [ivan] and state(engine, ivan) is None


def test_group_start_unblock_and_group_join_grant_nothing_and_create_no_contact(engine):
    batch = apply(engine, "telegram", start(-100500), member(700006, "member"))
    batch_vk = apply(engine, "vk", vk_event("group_join", 555))
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(contacts)).scalar_one() == 0
        assert conn.execute(sa.select(sa.func.count()).select_from(consent_events)).scalar_one() == 0
    assert batch.tally["opt_in_unknown_contact"] == 1 and batch.tally["unblocked (no consent change)"] == 1
    assert batch_vk.tally["joined (no consent change)"] == 1


def test_unblocking_after_a_block_does_not_restore_the_channel(engine):
    apply(engine, "telegram", start(700007, at=T0))
    (contact,) = contact_by_chat(engine, 700007)
    apply(engine, "telegram", member(700007, "kicked", at=T0 + 10), member(700007, "member", at=T0 + 20))
    assert state(engine, contact.id) == "withdrawn"
    apply(engine, "telegram", start(700007, at=T0 + 30))  # the client's "Restart" button: explicit again
    assert state(engine, contact.id) == "granted"


def test_vk_message_allow_from_an_unknown_user_grants_vk_and_records_its_trigger(engine):
    apply(engine, "vk", vk_event("message_allow", 777))
    with engine.connect() as conn:
        (contact,) = conn.execute(sa.select(contacts)).all()
        (trigger,) = conn.execute(sa.select(trigger_events)).all()
        fact = conn.execute(sa.select(consent_events)).one()
        assert sealed.personal(conn, "demo", contact.id) == {"vk_user_id": 777}
    assert contact.external_id == newcomer(engine, "vk", 777)
    assert state(engine, contact.id, "vk") == "granted" and trigger.event == "vk_message_allow"
    # VK events carry no time of their own: they are dated by the gateway's receipt, not by processing.
    assert fact.occurred_at.replace(tzinfo=dt.UTC) == NOW


# --- grant / withdraw ordering ------------------------------------------------------------------


def _facts(engine, contact_id: int) -> list[str]:
    with engine.connect() as conn:
        query = sa.select(consent_events.c.action).where(consent_events.c.contact_id == contact_id).order_by(consent_events.c.occurred_at)
        return list(conn.execute(query).scalars())


def test_a_grant_older_than_the_withdrawal_on_record_does_not_regrant(engine):
    apply(engine, "telegram", start(700010, at=T0))
    (contact,) = contact_by_chat(engine, 700010)
    apply(engine, "telegram", stop(700010, at=T0 + 100))
    batch = apply(engine, "telegram", start(700010, at=T0 + 50))  # sent before the /stop, processed after it
    assert state(engine, contact.id) == "withdrawn"
    assert batch.tally["opt_in_no_state_change"] == 1 and not batch.webhook_events
    assert _facts(engine, contact.id) == ["grant", "grant", "withdraw"]  # still on record as a fact
    apply(engine, "telegram", start(700010, at=T0 + 200))
    assert state(engine, contact.id) == "granted"


def test_a_withdrawal_processed_after_a_grant_ends_it_even_when_dated_before_it(engine):
    apply(engine, "telegram", start(700011, at=T0 + 100))
    (contact,) = contact_by_chat(engine, 700011)
    batch = apply(engine, "telegram", stop(700011, at=T0 + 50))  # we cannot tell a stale opt-out from a real one
    assert state(engine, contact.id) == "withdrawn" and batch.tally["consents_withdrawn"] == 1
    assert _facts(engine, contact.id) == ["withdraw", "grant"]


@pytest.mark.parametrize("grant_first", [True, False], ids=["grant processed first", "withdrawal processed first"])
def test_a_grant_and_a_withdrawal_in_the_same_second_leave_the_channel_withdrawn(engine, grant_first):
    chat = 700012 if grant_first else 700013
    add_contact(engine, f"crm-{chat}", telegram_chat_id=chat)
    (contact,) = contact_by_chat(engine, chat)
    updates = (start(chat, at=T0), stop(chat, at=T0))
    for update in updates if grant_first else reversed(updates):
        apply(engine, "telegram", update)
    assert state(engine, contact.id) == "withdrawn"


# --- decisions dated in the future ----------------------------------------------------------------


def _at(moment: dt.datetime) -> int:
    return int(moment.timestamp())


def _record_as_before_this_rule(engine, contact_id: int, action: str, occurred_at: dt.datetime, recorded_at: dt.datetime) -> None:
    """A fact as the code before the clock-skew rule recorded it: dated as its source said."""
    fact = ConsentFact(contact_id, "telegram", Purpose.ADVERTISING, action, SourceKind.IMPORT, "crm.csv:row 2", occurred_at, origin="import:crm-2026-10")
    with engine.begin() as conn:
        append(conn, "demo", [fact], recorded_at)


def test_an_opt_out_after_a_grant_dated_ahead_of_our_clock_withdraws(engine):
    apply(engine, "telegram", start(700020, at=_at(NOW + dt.timedelta(minutes=4))))  # within the clock skew: granted
    (contact,) = contact_by_chat(engine, 700020)
    assert state(engine, contact.id) == "granted"
    batch = apply(engine, "telegram", stop(700020, at=_at(NOW)))
    assert state(engine, contact.id) == "withdrawn"
    assert batch.tally["consents_withdrawn"] == 1 and [str(e.type) for e in batch.webhook_events] == ["consent.withdrawn"]
    assert _facts(engine, contact.id) == ["withdraw", "grant"]


def test_an_opt_out_ends_a_grant_dated_2099_that_was_recorded_before_the_rule(engine):
    contact_id = add_contact(engine, "crm-2099", telegram_chat_id=700021)
    _record_as_before_this_rule(engine, contact_id, "grant", dt.datetime(2099, 1, 1, tzinfo=dt.UTC), NOW - dt.timedelta(days=1))
    apply(engine, "telegram", stop(700021, at=_at(NOW)))
    assert state(engine, contact_id) == "withdrawn"
    assert _facts(engine, contact_id) == ["withdraw", "grant"]


def test_a_grant_dated_beyond_the_clock_skew_is_not_applied_and_retried_with_the_reason(engine):
    with engine.begin() as conn:
        inbox_id = conn.execute(
            sa.insert(webhook_inbox)
            .values(tenant="demo", provider="telegram", account="telegram", event_key="k-2099", payload=json.dumps(start(700022, at=4_070_908_800)), received_at=NOW)
            .returning(webhook_inbox.c.id)
        ).scalar_one()
        rows = conn.execute(sa.select(webhook_inbox).where(webhook_inbox.c.id == inbox_id)).all()
        batch = process_rows(conn, "demo", rows, complaint_suppresses_all=True, now=NOW)
    assert set(batch.retry) == {inbox_id} and not batch.processed_ids
    assert "grant dated 2099-01-01T00:00:00Z, more than 5 minutes after now (2026-11-24T12:00:00Z)" in batch.retry[inbox_id]
    assert batch.tally["grant_dated_in_the_future"] == 1 and not batch.webhook_events
    with engine.connect() as conn:  # nothing half-done: no contact made for it, no fact, no trigger
        for table in (contacts, consent_events, trigger_events):
            assert conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one() == 0, table.name


def test_an_opt_out_dated_beyond_the_clock_skew_is_honoured_at_once_and_dated_by_our_clock(engine):
    apply(engine, "telegram", start(700023, at=T0))
    (contact,) = contact_by_chat(engine, 700023)
    apply(engine, "telegram", stop(700023, at=_at(dt.datetime(2099, 1, 1, tzinfo=dt.UTC))))
    assert state(engine, contact.id) == "withdrawn"
    with engine.connect() as conn:
        withdrawal = conn.execute(sa.select(consent_events.c.occurred_at).where(consent_events.c.action == "withdraw")).scalar_one()
    assert withdrawal.replace(tzinfo=dt.UTC) == NOW
    later = NOW + dt.timedelta(minutes=1)
    apply(engine, "telegram", start(700023, at=_at(later)), now=later)  # the person can opt in again
    assert state(engine, contact.id) == "granted"


def test_a_withdrawal_dated_2099_before_the_rule_counts_from_when_it_was_recorded(engine):
    contact_id = add_contact(engine, "crm-w2099", telegram_chat_id=700024)
    _record_as_before_this_rule(engine, contact_id, "withdraw", dt.datetime(2099, 1, 1, tzinfo=dt.UTC), NOW - dt.timedelta(days=1))
    apply(engine, "telegram", start(700024, at=_at(NOW)))
    assert state(engine, contact_id) == "granted"
