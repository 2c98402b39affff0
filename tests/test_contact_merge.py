"""Duplicate contacts: candidates with a score and a reason, merges, and their exact undo, on SQLite
and PostgreSQL, through the real asset and jobs."""

from __future__ import annotations

import datetime as dt
import json

import dagster as dg
import pandas as pd
import pytest
import sqlalchemy as sa
from pypdf import PdfReader
from pg import create_database, drop_database
from consents import consent_status, record
from sealed import add_contact, personal, sealed_address, send_address

from definitions import defs
from orchestrator_assets.consent_certificate import write_certificate
from orchestrator_assets.consent_ledger import GRANT, WITHDRAW, consent_state
from orchestrator_assets.contact_pii import blind_index
from orchestrator_assets.imports.store import record_consents, upsert_contacts
from orchestrator_assets.imports.validation import CSV_COLUMNS, validate_contact_rows
from orchestrator_assets.merges.assets import contact_duplicate_candidates
from orchestrator_assets.merges.matching import Person, find_candidates
from policies.loader import load_consent_texts
from resources.opstore import OperationalStore
from resources.warehouse import Warehouse
from resources.opstore_schema import (
    audit_log,
    consent_events,
    contact_duplicate_candidates as candidates_table,
    contact_merge_moves,
    contact_merges,
    contacts,
    deliveries,
    metadata,
    phone_reachability,
    segment_members,
    sends,
    trigger_events,
)
from resources.pii import tenant_cipher

TENANT = "demo"
T0 = dt.datetime(2026, 11, 1, 9, 0, tzinfo=dt.UTC)
NOW = dt.datetime(2026, 11, 20, 12, 0, tzinfo=dt.UTC)


def _reasons(people: list[Person]) -> dict[tuple[int, int], str]:
    return {(c.contact_id, c.other_id): c.reason for c in find_candidates(people)}


def test_a_phone_one_digit_off_or_with_two_digits_swapped_is_a_candidate():
    found = _reasons([
        Person(1, "Анна", "Смирнова", phone="+7 903 111-22-33"),
        Person(2, "Анна", "Смирнова", phone="+79031112238"),  # one digit changed
        Person(3, "Anna", "Smirnova", phone="+79161234567"),
        Person(4, "Anna", "Smirnova", phone="+79161243567"),  # two neighbours swapped
    ])
    assert found[(1, 2)].startswith("phone one digit apart")
    assert found[(3, 4)].startswith("phone digits swapped")


def test_gmail_dots_and_plus_tags_are_the_same_mailbox():
    found = _reasons([
        Person(1, email="Ivan.Petrov+shop@gmail.com"),
        Person(2, email="ivanpetrov@googlemail.com"),
        Person(3, email="anna+news@mail.ru"),
        Person(4, email="anna@mail.ru"),
        Person(5, email="o.leg@mail.ru"),  # dots count outside Gmail: one edit away, not the same
        Person(6, email="oleg@mail.ru"),
    ])
    assert found[(1, 2)] == "same e-mail without dots/+tag"
    assert found[(3, 4)] == "same e-mail without dots/+tag"
    assert found[(5, 6)] == "e-mail one edit apart"


def test_ivan_petrov_and_petrov_ivan_of_one_city_are_a_candidate_scored_below_an_address_match():
    (candidate,) = find_candidates([Person(1, "Ivan", "Petrov", city="Москва"), Person(2, "Petrov", "Ivan", city="москва ")])
    assert (candidate.contact_id, candidate.other_id) == (1, 2)
    assert candidate.reason == "names match (100) in one city, nothing else" and candidate.score == 60
    assert find_candidates([Person(1, "Ivan", "Petrov", city="Москва"), Person(2, "Petrov", "Ivan", city="Казань")]) == []  # namesakes
    (with_phone,) = find_candidates([Person(1, "Ivan", "Petrov", phone="+79161234567"), Person(2, "Petrov", "Ivan", phone="+79161234568")])
    assert with_phone.score > candidate.score


def test_unrelated_people_are_no_candidates():
    assert find_candidates([
        Person(1, "Ivan", "Petrov", "ivan@mail.ru", "+79161234567"),
        Person(2, "Igor", "Popov", "igor@mail.ru", "+79161234999"),  # same initials, domain, operator
        Person(3, "Oleg", "Kuznetsov", "oleg@yandex.ru", "+79161234568"),  # the neighbour's number: a different name
        Person(4, "Ivan", "Sidorov", "sidorov@gmail.com", "+79031112233"),  # same first name
        Person(5, "Olga", "Orlova", "ivan@mail.ua", "+79261112233"),  # e-mail one edit from Ivan's, another name
    ]) == []


# --- merges on a real store ------------------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, algor_home, monkeypatch):
    """The operational store of the deployment the jobs run against, migrated."""
    url = None
    if request.param == "postgresql":
        url = create_database()
        monkeypatch.setenv("ALGOR_DATABASE_URL", url)
        monkeypatch.setenv("ALGOR_ALLOW_SANDBOX_WITH", "ALGOR_DATABASE_URL")
    opstore = OperationalStore()
    opstore.migrate()
    yield opstore.engine()
    if url:
        opstore.engine().dispose()
        drop_database(url)


def _contact(conn, external_id, **fields):
    return add_contact(conn, TENANT, external_id, T0, **fields)


def _send(conn, send_id, contact_id, campaign, channel, address):
    conn.execute(sa.insert(sends).values(
        send_id=send_id, tenant=TENANT, campaign=campaign, step="main", contact_id=contact_id, channel=channel, provider=channel,
        address=sealed_address(conn, TENANT, contact_id, address), status="sent", run_id="r0", claimed_at=T0, finished_at=T0,
    ))
    conn.execute(sa.insert(deliveries).values(send_id=send_id, tenant=TENANT, status="delivered", status_rank=3, last_event_at=T0, updated_at=T0))


def _consent(conn, contact_id, channel, action, at):
    record(conn, TENANT, contact_id, channel, action, at)


@pytest.fixture
def people(store):
    """Ivan Petrov twice (one record with the e-mail and chat, one with the city), and Anna."""
    with store.begin() as conn:
        keep = _contact(conn, "crm-1", first_name="Ivan", last_name="Petrov", phone="+79161234567", city="Москва", language="ru")
        dup = _contact(conn, "crm-2", first_name="Petrov", last_name="Ivan", phone="+79161234576", email="ivan.petrov@gmail.com", telegram_chat_id=555001)
        anna = _contact(conn, "crm-3", first_name="Anna", last_name="Smirnova", phone="+79031112233", email="anna@mail.ru")
        _consent(conn, keep, "telegram", GRANT, T0)
        _consent(conn, dup, "telegram", WITHDRAW, T0 - dt.timedelta(days=30))  # older, but a withdrawal stays one
        _consent(conn, keep, "email", WITHDRAW, T0)
        _consent(conn, dup, "email", GRANT, T0 + dt.timedelta(days=1))  # newer, but the survivor's withdrawal wins
        _consent(conn, dup, "sms", GRANT, T0)  # the survivor has none: it gets this one
        _consent(conn, anna, "email", GRANT, T0)
        _send(conn, "s-keep-tg", keep, "welcome", "telegram", "111")
        _send(conn, "s-dup-tg", dup, "welcome", "telegram", "555001")  # same ledger key as the survivor's
        _send(conn, "s-dup-mail", dup, "welcome", "email", "ivan.petrov@gmail.com")
        conn.execute(sa.insert(trigger_events).values(tenant=TENANT, event="telegram_start", contact_id=dup, inbox_id=7, occurred_at=T0, recorded_at=T0))
        conn.execute(sa.insert(segment_members), [
            {"tenant": TENANT, "segment": "moscow_spb_ru", "contact_id": keep, "materialized_at": T0},
            {"tenant": TENANT, "segment": "moscow_spb_ru", "contact_id": dup, "materialized_at": T0},
            {"tenant": TENANT, "segment": "everyone_with_email", "contact_id": dup, "materialized_at": T0},
        ])
        phone = blind_index(tenant_cipher(conn, TENANT), "phone", "+79161234576")
        conn.execute(sa.insert(phone_reachability).values(tenant=TENANT, contact_id=dup, phone_bidx=phone, reachable=True, reason="ok", checked_at=T0))
    return {"keep": keep, "dup": dup, "anna": anna}


def _snapshot(engine) -> dict[str, list]:
    """What a merge and its undo touch, row by row; consent as the send path sees it: the ledger's
    derived state, down to the event that decides each subject (the ledger itself only grows)."""
    tables = (contacts, sends, deliveries, trigger_events, segment_members, phone_reachability)
    with engine.connect() as conn:
        shot = {t.name: sorted(map(tuple, conn.execute(sa.select(t))), key=repr) for t in tables}
        shot["consent_state"] = sorted(map(tuple, conn.execute(sa.select(consent_state(NOW)))), key=repr)
    return shot


def _run(job: str, config: dict | None = None) -> dg.ExecuteInProcessResult:
    op = {"contact_merge_job": "merge_contacts", "contact_unmerge_job": "unmerge_contacts", "consent_chain_verify_job": "verify_consent_chains"}[job]
    return defs.resolve_job_def(job).execute_in_process(partition_key=TENANT, run_config={"ops": {op: {"config": config or {}}}}, raise_on_error=False)


def _state(engine, contact_id) -> dict[str, str | None]:
    return {channel: consent_status(engine, contact_id, channel, now=NOW) for channel in ("telegram", "email", "sms")}


def test_the_candidates_asset_stores_ids_and_shows_only_masked_values(store, people):
    result = dg.materialize([contact_duplicate_candidates], partition_key=TENANT, resources={"opstore": OperationalStore()})
    with store.connect() as conn:
        rows = conn.execute(sa.select(candidates_table.c.contact_id, candidates_table.c.other_id, candidates_table.c.score, candidates_table.c.reason)).all()
    assert [(r.contact_id, r.other_id, r.score) for r in rows] == [(people["keep"], people["dup"], 80)]
    assert rows[0].reason == "phone digits swapped; names match (100)"
    shown = result.asset_materializations_for_node("contacts__contact_duplicate_candidates")[0].metadata
    assert shown["candidates"].value == 1
    top = shown["top_pairs"].value
    assert "+7 916 ***-**-67" in top and "i***@gmail.com" in top and "I***" in top
    for plaintext in ("1234567", "ivan.petrov", "Petrov", "555001"):
        assert plaintext not in top


def test_merge_then_unmerge_restores_every_row(store, people):
    before = _snapshot(store)
    merged = _run("contact_merge_job", {"operator": "anna@ops.example.ru", "reason": "one customer", "pairs": [{"keep": "crm-1", "merge": "crm-2"}]})
    assert merged.success
    keep, dup = people["keep"], people["dup"]
    with store.connect() as conn:
        owners = dict(conn.execute(sa.select(sends.c.send_id, sends.c.contact_id)).all())
        addresses = {row.send_id: send_address(conn, row) for row in conn.execute(sa.select(sends))}
        survivor, tombstone = personal(conn, TENANT, keep), personal(conn, TENANT, dup)
        city, merged_into = conn.execute(sa.select(contacts.c.city).where(contacts.c.id == keep)).scalar(), conn.execute(sa.select(contacts.c.merged_into).where(contacts.c.id == dup)).scalar()
        moves = " ".join(str(tuple(row)) for row in conn.execute(sa.select(contact_merge_moves)))
        members = set(conn.execute(sa.select(segment_members.c.segment, segment_members.c.contact_id)).all())
        moved_event = conn.execute(sa.select(trigger_events.c.contact_id)).scalar_one()
        merge_id = conn.execute(sa.select(contact_merges.c.id)).scalar_one()
    # Every send row kept; the colliding one stays with the tombstone, the other follows the person.
    assert owners == {"s-keep-tg": keep, "s-dup-tg": dup, "s-dup-mail": keep}
    assert addresses == {"s-keep-tg": "111", "s-dup-tg": "555001", "s-dup-mail": "ivan.petrov@gmail.com"}  # sealed for their new contact
    assert merged_into == keep and tombstone["email"] == "ivan.petrov@gmail.com"  # not deleted, nothing taken away
    assert (survivor["email"], int(survivor["telegram_chat_id"]), city) == ("ivan.petrov@gmail.com", 555001, "Москва")
    assert survivor["phone"] == "+79161234567"  # the survivor's own value stays
    for plaintext in ("ivan.petrov", "Petrov", "7916", "555001"):
        assert plaintext not in moves  # what the undo needs is kept sealed
    assert members == {("moscow_spb_ru", keep), ("everyone_with_email", keep)}
    assert moved_event == keep

    undone = _run("contact_unmerge_job", {"operator": "anna@ops.example.ru", "reason": "two people after all", "merge_id": merge_id})
    assert undone.success
    assert undone.output_for_node("unmerge_contacts") == merge_id
    assert _snapshot(store) == before
    again = _run("contact_unmerge_job", {"operator": "anna@ops.example.ru", "reason": "twice", "merge_id": merge_id})
    assert not again.success and _snapshot(store) == before


def test_the_stricter_consent_state_wins_and_both_histories_stay(store, people):
    keep, dup = people["keep"], people["dup"]
    assert _run("contact_merge_job", {"operator": "ops", "reason": "dup", "pairs": [{"keep": "crm-1", "merge": "crm-2"}]}).success
    assert _state(store, keep) == {"telegram": "withdrawn", "email": "withdrawn", "sms": "granted"}
    with store.connect() as conn:
        facts = conn.execute(sa.select(consent_events.c.contact_id, consent_events.c.channel, consent_events.c.action, consent_events.c.source_kind, consent_events.c.source_ref)).all()
    merge_facts = {(f.channel, f.action) for f in facts if f.source_kind == "merge" and f.source_ref.startswith("merge:")}
    assert merge_facts == {("telegram", WITHDRAW), ("sms", GRANT)}  # nothing appended where the survivor was already stricter
    assert {(f.channel, f.action) for f in facts if f.contact_id == dup} == {("telegram", WITHDRAW), ("email", GRANT), ("sms", GRANT)}


def test_the_ledger_verifies_after_merge_and_undo_and_the_undo_restores_the_derived_state(store, people, tmp_path):
    keep, dup = people["keep"], people["dup"]
    before = _snapshot(store)
    with store.connect() as conn:
        dup_sms = conn.execute(sa.select(consent_events.c.id).where(consent_events.c.contact_id == dup, consent_events.c.channel == "sms")).scalar_one()
    assert _run("contact_merge_job", {"operator": "ops", "reason": "dup", "pairs": [{"keep": "crm-1", "merge": "crm-2"}]}).success
    assert _run("consent_chain_verify_job").success
    with store.connect() as conn:
        merge_id = conn.execute(sa.select(contact_merges.c.id)).scalar_one()
        carried = conn.execute(sa.select(consent_events).where(consent_events.c.contact_id == keep, consent_events.c.channel == "sms")).one()
    assert (carried.source_kind, carried.source_ref, carried.occurred_at.replace(tzinfo=dt.UTC)) == ("merge", f"merge:{merge_id}", T0)
    assert carried.detail == f"consent event {dup_sms} of merged contact {dup}"  # its evidence, on the tombstone's chain

    assert _run("contact_unmerge_job", {"operator": "ops", "reason": "two people", "merge_id": merge_id}).success
    verified = _run("consent_chain_verify_job")
    assert verified.success and verified.output_for_node("verify_consent_chains") == 8  # 6 seeded + 2 merge facts: nothing deleted
    assert _snapshot(store) == before
    assert _state(store, keep) == {"telegram": "granted", "email": "withdrawn", "sms": None}
    with store.connect() as conn:  # the survivor's certificate still lists the merge's facts, each marked voided
        certificate = write_certificate(conn, TENANT, "ops", "crm-1", load_consent_texts(), tmp_path, NOW)
    text = "".join("".join(page.extract_text() for page in PdfReader(certificate.path).pages).split())
    assert certificate.events == 4 and text.count("voided:themergewasundone") == 2


def test_a_decision_recorded_after_the_merge_stands_after_its_undo(store, people):
    keep = people["keep"]
    assert _run("contact_merge_job", {"operator": "ops", "reason": "dup", "pairs": [{"keep": "crm-1", "merge": "crm-2"}]}).success
    with store.begin() as conn:
        merge_id = conn.execute(sa.select(contact_merges.c.id)).scalar_one()
        _consent(conn, keep, "sms", WITHDRAW, T0 + dt.timedelta(days=2))  # the person unsubscribes from the SMS the merge granted
        _consent(conn, keep, "telegram", GRANT, T0 + dt.timedelta(days=3))  # and opts in again where the merge withdrew
    assert _run("contact_unmerge_job", {"operator": "ops", "reason": "two people", "merge_id": merge_id}).success
    assert _state(store, keep) == {"telegram": "granted", "email": "withdrawn", "sms": "withdrawn"}
    assert _run("consent_chain_verify_job").success


def test_a_reimport_of_a_merged_contact_leaves_the_tombstone_and_records_its_decisions_on_the_survivor(store, people):
    keep, dup = people["keep"], people["dup"]
    assert _run("contact_merge_job", {"operator": "ops", "reason": "dup", "pairs": [{"keep": "crm-1", "merge": "crm-2"}]}).success
    row = {"external_id": "crm-2", "first_name": "Пётр", "email": "new@example.ru", "consent_sms": "no", "consent_source": "crm:unsubscribe",
           "consent_at": (T0 + dt.timedelta(days=5)).isoformat()}
    good = validate_contact_rows(pd.DataFrame([{**dict.fromkeys(CSV_COLUMNS, ""), **row}], columns=list(CSV_COLUMNS))).good
    with store.begin() as conn:
        tombstone = personal(conn, TENANT, dup)
        counts = upsert_contacts(conn, TENANT, good, NOW), record_consents(conn, TENANT, good, NOW, file="crm.csv")
    assert counts == ({"inserted": 0, "updated": 0, "unchanged": 0, "merged": 1}, {"granted": 0, "withdrawn": 1, "unchanged": 0})
    with store.connect() as conn:
        assert personal(conn, TENANT, dup) == tombstone  # as the merge left it, for its undo
    assert _state(store, keep)["sms"] == "withdrawn"  # the person's unsubscribe reaches the contact we send to
    assert _state(store, dup)["sms"] == "granted"


def test_merges_and_unmerges_are_audited_without_personal_data(store, people):
    _run("contact_merge_job", {"operator": "anna@ops.example.ru", "reason": "one customer", "pairs": [{"keep": "crm-1", "merge": "crm-2"}]})
    with store.connect() as conn:
        merge_id = conn.execute(sa.select(contact_merges.c.id)).scalar_one()
    _run("contact_unmerge_job", {"operator": "boris@ops.example.ru", "reason": "two people", "merge_id": merge_id})
    with store.connect() as conn:
        rows = conn.execute(sa.select(audit_log.c.action, audit_log.c.actor, audit_log.c.params, audit_log.c.run_id).order_by(audit_log.c.id)).all()
    assert [(r.action, r.actor) for r in rows] == [("contact.merge", "anna@ops.example.ru"), ("contact.unmerge", "boris@ops.example.ru")]
    merge_params = json.loads(rows[0].params)
    assert (merge_params["survivor_id"], merge_params["merged_id"], merge_params["merge_id"]) == (people["keep"], people["dup"], merge_id)
    assert merge_params["changes"]["sends moved"] == 1 and merge_params["changes"]["sends kept"] == 1
    assert all(r.run_id for r in rows)
    for plaintext in ("Petrov", "7916", "gmail", "555001"):
        assert all(plaintext not in r.params for r in rows)


def test_min_score_merges_every_candidate_at_or_above_it_and_nothing_below(store, people):
    dg.materialize([contact_duplicate_candidates], partition_key=TENANT, resources={"opstore": OperationalStore()})
    assert _run("contact_merge_job", {"operator": "ops", "reason": "score", "min_score": 81}).output_for_node("merge_contacts") == 0
    result = _run("contact_merge_job", {"operator": "ops", "reason": "score", "min_score": 80})
    assert result.output_for_node("merge_contacts") == 1
    with store.connect() as conn:
        assert dict(conn.execute(sa.select(contacts.c.id, contacts.c.merged_into)).all()) == {people["keep"]: None, people["dup"]: people["keep"], people["anna"]: None}
    # The candidates were found before the merge; a second run finds the pair already one contact.
    again = _run("contact_merge_job", {"operator": "ops", "reason": "score", "min_score": 80})
    assert again.output_for_node("merge_contacts") == 0


def test_a_bad_pair_merges_nothing(store, people):
    before = _snapshot(store)
    result = _run("contact_merge_job", {"operator": "ops", "reason": "x", "pairs": [{"keep": "crm-1", "merge": "crm-2"}, {"keep": "crm-3", "merge": "crm-404"}]})
    assert not result.success and _snapshot(store) == before
    assert _run("contact_merge_job", {"operator": "ops", "reason": "x", "pairs": [{"keep": "crm-1", "merge": "crm-2"}]}).success
    merged = _snapshot(store)
    again = _run("contact_merge_job", {"operator": "ops", "reason": "x", "pairs": [{"keep": "crm-3", "merge": "crm-1"}, {"keep": "crm-3", "merge": "crm-2"}]})
    assert not again.success and _snapshot(store) == merged  # crm-2 is a tombstone now: not even crm-1 is merged


def test_a_tombstone_joins_no_segment_when_segments_are_rebuilt(store, people):
    from orchestrator_assets.segments import segment_members as segment_asset

    _run("contact_merge_job", {"operator": "ops", "reason": "dup", "pairs": [{"keep": "crm-1", "merge": "crm-2"}]})
    dg.materialize([segment_asset], partition_key=TENANT, resources={"opstore": OperationalStore(), "warehouse": Warehouse()})
    with store.connect() as conn:
        members = set(conn.execute(sa.select(segment_members.c.segment, segment_members.c.contact_id)).all())
    # The tombstone still has its e-mail, but the person is the survivor, which has it now too.
    assert members == {("everyone_with_email", people["keep"]), ("everyone_with_email", people["anna"]), ("moscow_spb_ru", people["keep"])}


def test_an_address_the_survivor_took_over_finds_the_survivor_not_the_older_tombstone(store, people):
    from sealed import contact_id_with

    with store.begin() as conn:
        newer = _contact(conn, "crm-4", first_name="Ivan", last_name="Petrov", city="Москва")
    assert _run("contact_merge_job", {"operator": "ops", "reason": "dup", "pairs": [{"keep": "crm-4", "merge": "crm-2"}]}).success
    with store.connect() as conn:
        assert contact_id_with(conn, TENANT, "email", "ivan.petrov@gmail.com") == newer  # e.g. an unsubscribe callback
        assert contact_id_with(conn, TENANT, "telegram", 555001) == newer
