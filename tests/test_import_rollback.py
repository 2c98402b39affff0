"""Rolling back an import by its id restores the store exactly (snapshot comparison), refuses when
something changed the same contacts since (naming them), and is audited; SQLite and PostgreSQL."""

from __future__ import annotations

import json
from datetime import timedelta

import dagster as dg
import pytest
import sqlalchemy as sa
from import_commit_support import NOW, commit, rows, snapshot
from sealed import personal, sealed_address

from jobs.consents import consent_chain_verify_job
from jobs.imports import contact_import_rollback_job
from orchestrator_assets.consent_decisions import record_decision
from orchestrator_assets.consent_ledger import ConsentFact, append
from orchestrator_assets.consent_verify import verify_chains
from orchestrator_assets.imports.rollback import RollbackRefused, rollback_import
from orchestrator_assets.merges.merge import Actor, merge_contacts
from policies.consent_purposes import Purpose, SourceKind
from resources.opstore import OperationalStore
from resources.opstore_schema import audit_log, consent_events, contact_imports, contacts, sends

ANNA = {"external_id": "c-1", "first_name": "Анна", "email": "anna@example.ru", "consent_email": "yes", "consent_source": "form:x",
        "consent_at": "2026-10-01T10:00:00+03:00"}
BORIS = {"external_id": "c-2", "first_name": "Борис", "phone": "+7 916 123-45-67", "consent_sms": "no", "consent_source": "form:x"}
VERA = {"external_id": "c-3", "first_name": "Вера", "email": "vera@example.ru", "consent_email": "да", "consent_telegram": "yes",
        "telegram_chat_id": "5007686286", "consent_source": "bot:/start", "consent_at": "2026-10-20T10:00:00Z"}
LATER = NOW + timedelta(hours=1)


def _rollback(engine, import_id, force=False, now=LATER + timedelta(hours=1)):
    with engine.begin() as conn:
        return rollback_import(conn, import_id, operator="anna@ops.example.ru", reason="wrong file", force=force, now=now, run_id="run-9")


def test_rolling_back_an_import_restores_contacts_and_consents_exactly(engine):
    commit(engine, rows(ANNA, BORIS))
    before = snapshot(engine)
    changed_anna = {**ANNA, "first_name": "Аня", "city": "Москва", "consent_email": "нет", "consent_at": "2026-10-30T10:00:00Z"}
    changed_boris = {**BORIS, "email": "boris@example.ru", "consent_sms": "yes", "consent_at": "2026-10-31T10:00:00Z"}
    imported = commit(engine, rows(changed_anna, changed_boris, VERA), now=LATER)
    assert imported.contacts == {"inserted": 1, "updated": 2, "unchanged": 0, "merged": 0} and snapshot(engine) != before

    counts = _rollback(engine, imported.import_id)

    assert snapshot(engine) == before
    assert counts == {"contacts_removed": 1, "contacts_restored": 2, "consent_events_removed": 4, "consent_events_kept": 0, "conflicts_overridden": 0}
    with engine.connect() as conn:
        status = conn.execute(sa.select(contact_imports.c.status, contact_imports.c.rolled_back_at).where(contact_imports.c.id == imported.import_id)).one()
        audit = conn.execute(sa.select(audit_log.c.actor, audit_log.c.params, audit_log.c.run_id).where(audit_log.c.action == "import.rollback")).one()
    assert status.status == "rolled_back" and status.rolled_back_at is not None
    assert audit.actor == "anna@ops.example.ru" and audit.run_id == "run-9"
    assert json.loads(audit.params) == {"import_id": imported.import_id, "reason": "wrong file", "force": False, "overridden": [], **counts}
    with pytest.raises(RollbackRefused, match="already rolled back"):
        _rollback(engine, imported.import_id)


def test_a_rollback_refuses_when_a_later_import_changed_the_same_contacts_unless_forced(engine):
    first = commit(engine, rows(ANNA))
    commit(engine, rows({**ANNA, "city": "Казань"}), now=LATER)
    before = snapshot(engine)

    with pytest.raises(RollbackRefused) as refused:
        _rollback(engine, first.import_id)

    assert refused.value.forceable and refused.value.problems == [("c-1", "changed since by import 2")]
    assert snapshot(engine) == before
    assert _rollback(engine, first.import_id, force=True)["contacts_removed"] == 1
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(contacts)).scalar_one() == 0


def test_a_consent_recorded_since_the_import_blocks_its_rollback_and_a_forced_one_keeps_the_later_proof(engine):
    commit(engine, rows(BORIS))
    imported = commit(engine, rows({**BORIS, "first_name": "Боря", "consent_sms": "yes", "consent_at": "2026-10-31T10:00:00Z"}), now=LATER)
    with engine.begin() as conn:  # the person opts out by SMS reply afterwards
        contact_id = conn.execute(sa.select(contacts.c.id)).scalar_one()
        stop = ConsentFact(contact_id, "sms", Purpose.ADVERTISING, "withdraw", SourceKind.BOT_COMMAND, "inbox:7", LATER, origin="sms:STOP")
        record_decision(conn, "acme", stop, LATER + timedelta(minutes=5))

    with pytest.raises(RollbackRefused, match="changed since the import") as refused:
        _rollback(engine, imported.import_id)
    assert refused.value.problems == [("c-2", "consent events recorded since")]

    counts = _rollback(engine, imported.import_id, force=True)

    assert (counts["contacts_restored"], counts["consent_events_kept"]) == (1, 1)
    with engine.connect() as conn:
        assert personal(conn, "acme", conn.execute(sa.select(contacts.c.id)).scalar_one())["first_name"] == "Борис"
        assert verify_chains(conn, "acme").broken == []  # the import's event stayed: the opt-out's chain builds on it


def _ids(engine) -> dict[str, int]:
    with engine.connect() as conn:
        return dict(conn.execute(sa.select(contacts.c.external_id, contacts.c.id)).all())


def test_after_a_rollback_every_consent_chain_verifies_and_new_decisions_chain_onto_the_former_head(engine):
    commit(engine, rows(ANNA, BORIS))
    with engine.connect() as conn:
        (head_before,) = conn.execute(sa.select(consent_events.c.hash).where(consent_events.c.contact_id == _ids(engine)["c-1"])).one()
    withdrawn = {**ANNA, "consent_email": "нет", "consent_at": "2026-10-30T10:00:00Z", "consent_telegram": "yes", "telegram_chat_id": "5007686286"}
    imported = commit(engine, rows(withdrawn, VERA), now=LATER)

    assert _rollback(engine, imported.import_id)["consent_events_removed"] == 4  # Anna's newest two, Vera's whole chain

    anna = _ids(engine)["c-1"]
    with engine.begin() as conn:
        assert (verify_chains(conn, "acme").events, verify_chains(conn, "acme").broken) == (2, [])
        start = ConsentFact(anna, "email", Purpose.ADVERTISING, "withdraw", SourceKind.BOT_COMMAND, "inbox:8", LATER, origin="bot:/stop")
        assert append(conn, "acme", [start], LATER + timedelta(hours=2)) == [True]
        newest = conn.execute(sa.select(consent_events.c.prev_hash).where(consent_events.c.contact_id == anna).order_by(consent_events.c.id.desc())).first()
        assert newest.prev_hash == head_before and verify_chains(conn, "acme").broken == []


def test_re_importing_a_file_appends_no_consent_event_and_its_rollback_keeps_the_first_imports_proof(engine):
    first = commit(engine, rows(ANNA))
    again = commit(engine, rows(ANNA), now=LATER)

    assert (again.contacts["unchanged"], again.consents) == (1, {"granted": 0, "withdrawn": 0, "unchanged": 1})
    before = snapshot(engine)
    assert _rollback(engine, again.import_id)["consent_events_removed"] == 0
    assert snapshot(engine) == before
    with engine.connect() as conn:
        assert conn.execute(sa.select(consent_events.c.source_ref)).scalar_one() == f"import {first.import_id}:crm.csv:row 2"


def _merge(engine, survivor: str, merged: str) -> None:
    ids = _ids(engine)
    with engine.begin() as conn:
        merge_contacts(conn, "acme", ids[survivor], ids[merged], Actor("anna@ops.example.ru", "one person", "run-m"), LATER + timedelta(minutes=30))


def test_a_contact_merged_since_the_import_blocks_its_rollback_unless_forced(engine):
    commit(engine, rows(BORIS))
    imported = commit(engine, rows({**ANNA, "first_name": "Аня"}, {**BORIS, "city": "Казань"}), now=LATER)
    commit(engine, rows({**ANNA, "external_id": "c-9", "email": "anna.k@example.ru"}), now=LATER)
    _merge(engine, "c-9", "c-2")  # Boris (updated by the import) is now a tombstone of c-9
    before = snapshot(engine)

    with pytest.raises(RollbackRefused, match="changed since the import") as refused:
        _rollback(engine, imported.import_id)
    assert refused.value.problems == [("c-2", "merged into another contact since")]
    assert snapshot(engine) == before

    assert _rollback(engine, imported.import_id, force=True)["conflicts_overridden"] == 1


def test_a_created_contact_that_took_part_in_a_merge_is_never_removed(engine):
    commit(engine, rows(BORIS))
    imported = commit(engine, rows(ANNA), now=LATER)
    _merge(engine, "c-2", "c-1")
    before = snapshot(engine)

    with pytest.raises(RollbackRefused, match="it created have a history") as refused:
        _rollback(engine, imported.import_id, force=True)

    assert refused.value.problems == [("c-1", "created by this import and in contact_merges since: erase it instead")]
    assert snapshot(engine) == before


def test_a_created_contact_that_was_messaged_since_is_never_removed(engine):
    imported = commit(engine, rows(ANNA))
    with engine.begin() as conn:
        contact_id = conn.execute(sa.select(contacts.c.id)).scalar_one()
        conn.execute(sa.insert(sends).values(
            send_id="s-1", tenant="acme", campaign="promo", step="main", contact_id=contact_id, channel="email", provider="mailgun",
            address=sealed_address(conn, "acme", contact_id, "anna@example.ru"), status="sent", run_id="r", claimed_at=LATER,
        ))
    before = snapshot(engine)

    with pytest.raises(RollbackRefused, match="1 contact\\(s\\) it created have a history") as refused:
        _rollback(engine, imported.import_id, force=True)

    assert refused.value.problems == [("c-1", "created by this import and in sends since: erase it instead")]
    assert snapshot(engine) == before


def test_the_rollback_job_refuses_an_unknown_import_and_rolls_back_a_known_one(algor_home, instance):
    store = OperationalStore()
    store.migrate()
    imported = commit(store.engine(), rows(ANNA))

    def run(import_id: int) -> dg.ExecuteInProcessResult:
        config = {"import_id": import_id, "operator": "anna@ops.example.ru", "reason": "test"}
        return contact_import_rollback_job.execute_in_process(
            run_config={"ops": {"rollback_contact_import": {"config": config}}}, instance=instance, resources={"opstore": store}, raise_on_error=False,
        )

    refused = run(99)
    assert not refused.success
    (failure,) = [e for e in refused.all_events if e.event_type == dg.DagsterEventType.STEP_FAILURE]
    assert failure.step_failure_data.user_failure_data.description == "there is no contact import 99; nothing was changed"

    assert run(imported.import_id).success
    with store.engine().connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(contacts)).scalar_one() == 0
    verified = consent_chain_verify_job.execute_in_process(instance=instance, resources={"opstore": store}, partition_key="acme")
    assert verified.success


def test_a_large_import_rolls_back_whole(engine):
    many = rows(*({**ANNA, "external_id": f"c-{n:04d}", "email": f"p{n}@example.ru"} for n in range(1200)))
    imported = commit(engine, many)

    assert _rollback(engine, imported.import_id)["consent_events_removed"] == 1200

    assert snapshot(engine) == {"contacts": [], "consents": [], "consent_events": []}


def test_a_row_naming_a_merged_contact_is_counted_merged_and_its_rollback_leaves_the_tombstone_as_the_merge_did(engine):
    commit(engine, rows(ANNA, BORIS))
    _merge(engine, "c-1", "c-2")
    before = snapshot(engine)
    imported = commit(engine, rows({**BORIS, "first_name": "Боря"}), now=LATER)

    assert imported.contacts == {"inserted": 0, "updated": 0, "unchanged": 0, "merged": 1}
    with engine.connect() as conn:
        assert conn.execute(sa.select(contact_imports.c.rows_merged).where(contact_imports.c.id == imported.import_id)).scalar_one() == 1
    _rollback(engine, imported.import_id)
    assert snapshot(engine) == before
