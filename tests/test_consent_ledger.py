"""The consent ledger on migrated SQLite and PostgreSQL: the hash chain and its verification, the
state derived from events (ties, expiry, stale withdrawals), purposes on the send path, the
verify and certificate jobs, and the migration that chained the events already on record."""

from __future__ import annotations

import datetime as dt
import threading
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest
import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from pypdf import PdfReader

from definitions import defs
from orchestrator_assets.campaigns import audience_query
from orchestrator_assets.consent_ledger import ConsentFact, append, open_identity
from orchestrator_assets.consent_verify import verify_chains
from orchestrator_assets.imports.store import record_consents, upsert_contacts
from orchestrator_assets.imports.validation import CSV_COLUMNS, validate_contact_rows
from policies.campaigns import Campaign
from policies.consent_chain import GENESIS, event_hash
from policies.consent_purposes import ANY_CHANNEL, CampaignPurpose, Purpose, SourceKind
from policies.consent_texts import text_version
from policies.loader import load_consent_texts
from resources.opstore import MIGRATIONS_DIR, OperationalStore, engine_for, migrate
from resources.opstore_schema import audit_log, consent_events, contacts, metadata, segment_members
from resources.pii import tenant_cipher
import sealed
from consents import consent_status

NOW = dt.datetime(2026, 11, 24, 12, 0, tzinfo=dt.UTC)
HOUR = dt.timedelta(hours=1)


@pytest.fixture
def engine(migrated_store_url):
    engine = engine_for(migrated_store_url)  # as the product connects: WAL and a busy timeout on SQLite
    yield engine
    engine.dispose()


def _drop(engine: sa.Engine, backend: str) -> None:
    if backend == "postgresql":  # the session's database: leave it empty for the next test
        metadata.drop_all(engine)
        with engine.begin() as conn:
            conn.execute(sa.text("DROP TABLE IF EXISTS alembic_version"))
    engine.dispose()


def add_contact(engine, external_id: str, tenant: str = "demo", **fields) -> int:
    with engine.begin() as conn:
        return sealed.add_contact(conn, tenant, external_id, NOW, **fields)


def fact(contact_id: int, action: str = "grant", at: dt.datetime = NOW, channel: str = "email", purpose: Purpose = Purpose.ADVERTISING, **extra) -> ConsentFact:
    ref = extra.pop("source_ref", f"form-{action}-{at.isoformat()}")
    return ConsentFact(contact_id, channel, purpose, action, SourceKind.WEB_FORM, ref, at, **extra)


def write(engine, *facts: ConsentFact, now: dt.datetime = NOW, tenant: str = "demo") -> list[bool]:
    with engine.begin() as conn:
        return append(conn, tenant, list(facts), now)


def events(engine) -> list[sa.Row]:
    with engine.connect() as conn:
        return conn.execute(sa.select(consent_events).order_by(consent_events.c.id)).all()


# --- the chain --------------------------------------------------------------------------------


def test_each_event_hashes_its_predecessor_and_a_repeated_fact_is_not_appended(engine):
    anna, boris = add_contact(engine, "anna"), add_contact(engine, "boris")
    identity = {"ip": "203.0.113.7", "user_agent": "Mozilla/5.0"}
    assert write(engine, fact(anna, identity=identity, text_version="a" * 64, valid_until=NOW + 365 * 24 * HOUR), fact(boris)) == [True, True]
    assert write(engine, fact(anna, "withdraw", NOW + HOUR, withdrawal_channel="email"), fact(anna, identity=identity, text_version="a" * 64, valid_until=NOW + 365 * 24 * HOUR), now=NOW + HOUR) == [True, False]

    first, other, second = events(engine)
    assert (first.prev_hash, other.prev_hash, second.prev_hash) == (GENESIS, GENESIS, first.hash)  # one chain per contact
    assert first.hash == event_hash(GENESIS, first._mapping) and second.hash == event_hash(first.hash, second._mapping)
    assert (first.text_version, second.withdrawal_channel) == ("a" * 64, "email")
    # Identifying evidence is sealed with the contact's key: readable with it, and gone with it
    # (erasure shreds the key) while the chain, which hashes the sealed bytes, still verifies.
    assert b"203.0.113.7" not in first.evidence_identity and "203.0.113.7" not in (first.detail or "")
    with engine.begin() as conn:
        cipher = tenant_cipher(conn, "demo")
        key = conn.execute(sa.select(contacts.c.data_key).where(contacts.c.id == anna)).scalar_one()
        assert open_identity(cipher, key, first.evidence_identity) == identity
        conn.execute(sa.update(contacts).where(contacts.c.id == anna).values(data_key=None))
        assert open_identity(cipher, None, first.evidence_identity) == {}
        assert verify_chains(conn, "demo").broken == []


def test_a_second_successor_of_one_event_is_refused_so_the_chain_cannot_fork(engine):
    anna = add_contact(engine, "anna")
    write(engine, fact(anna))
    (head,) = events(engine)
    fork = {**head._mapping, "action": "withdraw", "source_ref": "forged"}
    fork.pop("id")
    with pytest.raises(sa.exc.IntegrityError), engine.begin() as conn:
        conn.execute(sa.insert(consent_events).values(fork))


def test_concurrent_writers_for_one_contact_extend_one_chain(engine):
    anna = add_contact(engine, "anna")
    errors: list[BaseException] = []

    def writer(n: int) -> None:
        try:
            for i in range(10):
                write(engine, fact(anna, "grant" if i % 2 else "withdraw", NOW + dt.timedelta(seconds=i), source_ref=f"writer-{n}-{i}"))
        except BaseException as exc:  # noqa: BLE001 - surfaced by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    with engine.connect() as conn:
        report = verify_chains(conn, "demo")
    assert (report.events, report.broken) == (20, [])


@pytest.mark.parametrize("column, value", [("occurred_at", dt.datetime(2020, 1, 1, tzinfo=dt.UTC)), ("action", "grant")])
def test_a_tampered_event_is_named_exactly(engine, column, value):
    anna, boris = add_contact(engine, "anna"), add_contact(engine, "boris")
    write(engine, fact(anna), fact(boris), fact(anna, "withdraw", NOW + HOUR), fact(anna, "grant", NOW + 2 * HOUR))
    target = events(engine)[2]  # anna's withdrawal
    with engine.begin() as conn:
        conn.execute(sa.update(consent_events).where(consent_events.c.id == target.id).values({column: value}))
    with engine.connect() as conn:
        report = verify_chains(conn, "demo")
    (link,) = report.broken
    assert (link.contact_id, link.event_id, link.field, link.stored) == (anna, target.id, "hash", target.hash)
    assert link.expected != target.hash and report.first == link


def test_a_deleted_middle_event_breaks_the_next_link(engine):
    anna = add_contact(engine, "anna")
    write(engine, fact(anna), fact(anna, "withdraw", NOW + HOUR), fact(anna, "grant", NOW + 2 * HOUR))
    first, middle, last = events(engine)
    with engine.begin() as conn:
        conn.execute(sa.delete(consent_events).where(consent_events.c.id == middle.id))
        (link,) = verify_chains(conn, "demo").broken
    assert (link.event_id, link.field, link.expected, link.stored) == (last.id, "prev_hash", first.hash, middle.hash)


# --- the derived state ----------------------------------------------------------------------------


def test_a_grant_and_a_withdrawal_at_the_same_moment_leave_the_subject_withdrawn(engine):
    anna, boris = add_contact(engine, "anna"), add_contact(engine, "boris")
    write(engine, fact(anna), fact(anna, "withdraw"))
    write(engine, fact(boris, "withdraw"), fact(boris))
    assert consent_status(engine, anna, "email", now=NOW) == consent_status(engine, boris, "email", now=NOW) == "withdrawn"


def test_a_grant_past_its_validity_is_not_granted(engine):
    anna = add_contact(engine, "anna")
    write(engine, fact(anna, valid_until=NOW + 24 * HOUR))
    assert consent_status(engine, anna, "email", now=NOW + HOUR) == "granted"
    assert consent_status(engine, anna, "email", now=NOW + 25 * HOUR) == "expired"


def test_the_latest_decision_wins_but_a_withdrawal_ends_what_was_known_when_it_arrived(engine):
    anna = add_contact(engine, "anna")
    write(engine, fact(anna, at=NOW + 2 * HOUR), now=NOW + 3 * HOUR)
    write(engine, fact(anna, "withdraw", NOW + HOUR), now=NOW + 4 * HOUR)  # dated before the grant, learned after it
    assert consent_status(engine, anna, "email", now=NOW + 5 * HOUR) == "withdrawn"
    write(engine, fact(anna, at=NOW + 90 * dt.timedelta(minutes=1)), now=NOW + 5 * HOUR)  # an older grant, processed late
    assert consent_status(engine, anna, "email", now=NOW + 5 * HOUR) == "withdrawn"
    write(engine, fact(anna, at=NOW + 5 * HOUR), now=NOW + 5 * HOUR)  # a new grant
    assert consent_status(engine, anna, "email", now=NOW + 5 * HOUR) == "granted"


def test_purposes_and_channels_are_separate_subjects(engine):
    anna = add_contact(engine, "anna")
    write(engine, fact(anna, purpose=Purpose.TRANSACTIONAL), fact(anna, channel=ANY_CHANNEL, purpose=Purpose.PROCESSING), fact(anna, "withdraw", channel="sms"))
    assert consent_status(engine, anna, "email", "transactional", NOW) == "granted"
    assert consent_status(engine, anna, ANY_CHANNEL, "processing", NOW) == "granted"
    assert consent_status(engine, anna, "email", "advertising", NOW) is None
    assert consent_status(engine, anna, "sms", "advertising", NOW) == "withdrawn"


# --- purposes from the import ---------------------------------------------------------------------


def _imported(engine, **cells: str) -> None:
    row = {**dict.fromkeys(CSV_COLUMNS, ""), "external_id": "c-1", "email": "anna@example.ru", "language": "ru", "consent_source": "form:x", **cells}
    good = validate_contact_rows(pd.DataFrame([row])).good
    with engine.begin() as conn:
        upsert_contacts(conn, "demo", good, NOW)
        record_consents(conn, "demo", good, NOW, file="crm.csv")


def test_the_import_records_each_purpose_with_the_text_it_names_or_the_current_one(engine):
    texts = load_consent_texts()
    processing_text = texts.current("demo", Purpose.PROCESSING, "ru")
    _imported(engine, consent_email="yes", consent_processing="да", consent_email_transactional="yes", consent_text_version=processing_text)
    got = {(e.purpose, e.channel): (e.action, e.text_version, e.source_ref) for e in events(engine)}
    assert got == {
        ("advertising", "email"): ("grant", processing_text, "crm.csv:row 2"),  # the row names one text for all its decisions
        ("processing", ANY_CHANNEL): ("grant", processing_text, "crm.csv:row 2"),
        ("transactional", "email"): ("grant", processing_text, "crm.csv:row 2"),
    }
    with engine.begin() as conn:
        conn.execute(sa.delete(consent_events))
    _imported(engine, consent_email="no", consent_email_transactional="yes")
    got = {e.purpose: e.text_version for e in events(engine)}
    assert got == {"advertising": texts.current("demo", Purpose.ADVERTISING, "ru"), "transactional": texts.current("demo", Purpose.TRANSACTIONAL, "ru")}


def test_an_unknown_consent_text_version_is_refused_naming_the_row(engine):
    with pytest.raises(ValueError, match=r"row 2: consent_text_version '0{64}' is not one of tenant 'demo'"):
        _imported(engine, consent_email="yes", consent_text_version="0" * 64)
    assert events(engine) == []


# --- purposes on the send path --------------------------------------------------------------------


def _campaign(purpose: CampaignPurpose) -> Campaign:
    return Campaign.model_validate(
        {"name": "c", "tenant": "demo", "segment": "everyone", "purpose": purpose, "channels": [{"channel": "email", "subject": "s", "text": "t {{ unsubscribe_url }}"}],
         "schedule": {"start_at": "2026-01-01T00:00:00Z"}}
    )  # fmt: skip


@pytest.mark.parametrize(
    "granted, purpose, require_processing, reached",
    [
        ([Purpose.ADVERTISING], CampaignPurpose.ADVERTISING, False, True),
        ([Purpose.TRANSACTIONAL], CampaignPurpose.ADVERTISING, False, False),
        ([Purpose.ADVERTISING], CampaignPurpose.TRANSACTIONAL, False, False),
        ([Purpose.TRANSACTIONAL], CampaignPurpose.TRANSACTIONAL, False, True),
        ([Purpose.ADVERTISING], CampaignPurpose.ADVERTISING, True, False),
        ([Purpose.ADVERTISING, Purpose.PROCESSING], CampaignPurpose.ADVERTISING, True, True),
    ],
)
def test_the_audience_holds_only_contacts_with_every_consent_the_campaign_needs(engine, granted, purpose, require_processing, reached):
    anna = add_contact(engine, "anna", email="anna@example.ru")
    write(engine, *(fact(anna, purpose=p, channel=ANY_CHANNEL if p == Purpose.PROCESSING else "email") for p in granted))
    with engine.begin() as conn:
        conn.execute(sa.insert(segment_members).values(tenant="demo", segment="everyone", contact_id=anna, materialized_at=NOW))
        audience = conn.execute(audience_query(tenant_cipher(conn, "demo"), _campaign(purpose), "email", NOW, require_processing)).all()
    assert [row.id for row in audience] == ([anna] if reached else [])


# --- the migration ------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_the_migration_carries_earlier_events_over_chained(backend, request, algor_home):
    url = request.getfixturevalue("postgres_url") if backend == "postgresql" else f"sqlite:///{algor_home / 'old.db'}"
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["engine"] = engine_for(url)
    command.upgrade(config, "0010")  # the revision before the ledger
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            contact = sealed.add_contact(conn, "demo", "old", NOW)
            for action, evidence in (("grant", '{"file":"crm.csv","row":7}'), ("withdraw", '{"inbox_id":41,"provider":"mailgun"}')):
                conn.execute(
                    sa.text(
                        "INSERT INTO consent_events (tenant, contact_id, channel, purpose, action, source, evidence, occurred_at, recorded_at) "
                        "VALUES ('demo', :c, 'email', 'marketing', :a, 'form:x', :e, :t, :t)"
                    ),
                    {"c": contact, "a": action, "e": evidence, "t": NOW},
                )
        migrate(url)
        grant, withdrawal = events(engine)
        assert (grant.purpose, grant.source_kind, grant.source_ref, grant.origin) == ("advertising", "import", "crm.csv:row 7", "form:x")
        assert (withdrawal.source_kind, withdrawal.source_ref) == ("provider_webhook", "inbox:41")
        with engine.connect() as conn:
            assert verify_chains(conn, "demo").broken == [] and withdrawal.prev_hash == grant.hash
        assert consent_status(engine, contact, "email", now=NOW) == "withdrawn"
    finally:
        _drop(engine, backend)


# --- the jobs (embedded default) ------------------------------------------------------------------


def _run(instance, job: str, config: dict | None = None) -> dg.ExecuteInProcessResult:
    return defs.resolve_job_def(job).execute_in_process(instance=instance, partition_key="demo", run_config=config or {}, raise_on_error=False)


def test_the_verify_job_names_the_tampered_event_fails_and_is_audited(algor_home, instance):
    engine = OperationalStore().engine()
    OperationalStore().migrate()
    anna = add_contact(engine, "anna")
    write(engine, fact(anna), fact(anna, "withdraw", NOW + HOUR))
    assert _run(instance, "consent_chain_verify_job").success

    tampered = events(engine)[0]
    with engine.begin() as conn:
        conn.execute(sa.update(consent_events).where(consent_events.c.id == tampered.id).values(occurred_at=NOW - 24 * HOUR))
    result = _run(instance, "consent_chain_verify_job")
    assert not result.success
    (failure,) = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert f"contact {anna} breaks at event {tampered.id}: hash should be" in failure.step_failure_data.error.message
    (check,) = [e.event_specific_data for e in result.all_events if e.event_type_value == "ASSET_CHECK_EVALUATION"]
    assert not check.passed and check.metadata["first_broken_event"].value == tampered.id
    with engine.connect() as conn:
        audits = conn.execute(sa.select(audit_log.c.action, audit_log.c.params).order_by(audit_log.c.id)).all()
    assert [a.action for a in audits] == ["consent_verify", "consent_verify"] and f'"first_broken_event": {tampered.id}' in audits[1].params


def test_the_certificate_pdf_opens_and_carries_the_evidence_the_text_and_the_head_hash(algor_home, instance):
    engine = OperationalStore().engine()
    OperationalStore().migrate()
    anna = add_contact(engine, "crm-000123", first_name="Анна", email="anna.petrova@example.ru")
    current = load_consent_texts().current("demo", Purpose.ADVERTISING, "ru")
    write(engine, fact(anna, text_version=current, origin="form:https://shop.example/subscribe", identity={"ip": "203.0.113.7"}))
    write(engine, fact(anna, "withdraw", NOW + HOUR, withdrawal_channel="email"), now=NOW + HOUR)

    result = _run(instance, "consent_certificate_job", {"ops": {"write_consent_certificates": {"config": {"operator": "anna@ops.example.ru", "external_ids": ["crm-000123"]}}}})
    assert result.success
    (output,) = [e.event_specific_data for e in result.all_events if e.event_type_value == "STEP_OUTPUT"]
    path = Path(output.metadata[f"certificate_{anna}"].path)  # viewable from the run's metadata
    assert path == algor_home / "consent_certificates" / "demo" / f"contact-{anna}.pdf" and path.is_file()
    text = "\n".join(page.extract_text() for page in PdfReader(path).pages)
    flat = "".join(text.split())  # long hashes wrap across lines
    head = events(engine)[-1].hash
    assert "ООО «Ромашка»" in text and "crm-000123" in text and "anna.petrova" not in text  # identity masked
    assert "form:https://shop.example/subscribe" in flat and "web_form" in text and current in flat and head in flat
    assert text_version(load_consent_texts().text("demo", current)) == current
    assert "".join("Я согласен получать рекламные сообщения".split()) in flat  # the text itself, in Cyrillic
    assert "203.0.113.7" not in text
