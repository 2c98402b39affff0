"""Contact import into the operational store, on SQLite and on real PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest
import sqlalchemy as sa

from orchestrator_assets.contact_pii import read_contacts
from orchestrator_assets.imports.sample_contacts import SAMPLE_PATH
from orchestrator_assets.imports.store import record_consents, upsert_contacts
from orchestrator_assets.imports.reading import read_contacts_file
from orchestrator_assets.imports.validation import CSV_COLUMNS, validate_contact_rows
from orchestrator_assets.consent_ledger import ConsentFact, append, consent_state
from policies.consent_purposes import Purpose, SourceKind
from policies.loader import load_consent_texts
from resources.opstore_schema import consent_events, contacts
from resources.pii import tenant_cipher

NOW = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def sample_good():
    return validate_contact_rows(read_contacts_file(SAMPLE_PATH).frame).good


def _good(*rows: dict[str, str]) -> pd.DataFrame:
    frame = pd.DataFrame([{**dict.fromkeys(CSV_COLUMNS, ""), **row} for row in rows], columns=list(CSV_COLUMNS))
    result = validate_contact_rows(frame)
    assert result.errors.empty, result.errors
    return result.good


def _import(engine, tenant, good, now=NOW):
    with engine.begin() as conn:
        return upsert_contacts(conn, tenant, good, now), record_consents(conn, tenant, good, now, file="demo.csv")


def _snapshot(engine):
    with engine.connect() as conn:
        return {table.name: conn.execute(sa.select(table).order_by(table.c.id)).all() for table in (contacts, consent_events)}


def _personal(conn, tenant):
    """The personal data of the tenant's one contact, opened (it is sealed in the store)."""
    cipher = tenant_cipher(conn, tenant)
    (personal,) = read_contacts(conn, cipher, conn.execute(sa.select(contacts.c.id).where(contacts.c.tenant == tenant)).scalars()).values()
    return personal


def _utc(moment: datetime) -> datetime:
    """SQLite hands back naive datetimes; the store writes UTC."""
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _state(engine, tenant, external_id, channel):
    """(granted | withdrawn, when the deciding event says it happened, where the person gave it)."""
    state = consent_state(NOW + timedelta(days=30))
    with engine.connect() as conn:
        row = conn.execute(
            sa.select(state.c.action, consent_events.c.occurred_at, consent_events.c.origin)
            .join(consent_events, consent_events.c.id == state.c.event_id)
            .join(contacts, contacts.c.id == state.c.contact_id)
            .where(contacts.c.tenant == tenant, contacts.c.external_id == external_id, state.c.channel == channel, state.c.purpose == "advertising")
        ).one()
    return {"grant": "granted", "withdraw": "withdrawn"}[row.action], _utc(row.occurred_at), row.origin


def _decisions(good: pd.DataFrame) -> dict[bool, int]:
    values = [value for channel in ("email", "telegram", "sms") for value in good[f"consent_{channel}"]]
    return {True: sum(value is True for value in values), False: sum(value is False for value in values)}


def test_second_import_of_the_sample_changes_nothing(engine, sample_good):
    decisions = _decisions(sample_good)
    first = _import(engine, "acme", sample_good)
    assert first == (
        {"inserted": len(sample_good), "updated": 0, "unchanged": 0, "merged": 0},
        {"granted": decisions[True], "withdrawn": decisions[False], "unchanged": 0},
    )
    before = _snapshot(engine)

    second = _import(engine, "acme", sample_good, NOW + timedelta(days=1))

    assert second == (
        {"inserted": 0, "updated": 0, "unchanged": len(sample_good), "merged": 0},
        {"granted": 0, "withdrawn": 0, "unchanged": decisions[True] + decisions[False]},
    )
    assert _snapshot(engine) == before
    # One event per contact × channel decision.
    assert len(before["consent_events"]) == decisions[True] + decisions[False]


def test_consent_state_and_evidence_come_from_the_row(engine, sample_good):
    dated = sample_good[sample_good["consent_email"].notna() & sample_good["consent_at"].notna()].head(1)
    _import(engine, "acme", dated)
    row = dated.iloc[0]
    assert _state(engine, "acme", row["external_id"], "email") == ("granted" if row["consent_email"] else "withdrawn", row["consent_at"], row["consent_source"])
    with engine.connect() as conn:
        event = conn.execute(sa.select(consent_events).where(consent_events.c.channel == "email")).one()
    assert (event.source_kind, event.source_ref, event.purpose) == ("import", f"demo.csv:row {row['row']}", "advertising")
    assert event.text_version == load_consent_texts().current("acme", Purpose.ADVERTISING, row["language"])  # the tenant's current text
    assert (_utc(event.occurred_at), _utc(event.recorded_at)) == (row["consent_at"], NOW)


def test_tenants_with_the_same_external_id_stay_separate(engine):
    row = {"external_id": "c-1", "first_name": "Анна", "email": "anna@example.ru"}
    assert _import(engine, "acme", _good(row))[0]["inserted"] == 1
    assert _import(engine, "globex", _good(row))[0]["inserted"] == 1

    changed = _import(engine, "globex", _good({**row, "email": "anna@example.org"}))
    assert changed[0] == {"inserted": 0, "updated": 1, "unchanged": 0, "merged": 0}
    with engine.connect() as conn:
        emails = {tenant: _personal(conn, tenant)["email"] for tenant in ("acme", "globex")}
    assert emails == {"acme": "anna@example.ru", "globex": "anna@example.org"}


def test_changed_fields_update_and_blank_cells_keep_stored_values(engine):
    first = {"external_id": "c-1", "first_name": "Анна", "email": "anna@example.ru", "telegram_chat_id": "5007686286"}
    _import(engine, "acme", _good(first))
    later = NOW + timedelta(hours=1)

    counts = _import(engine, "acme", _good({"external_id": "c-1", "first_name": "Аня", "phone": "89161234567"}), later)

    assert counts[0] == {"inserted": 0, "updated": 1, "unchanged": 0, "merged": 0}
    with engine.connect() as conn:
        row = conn.execute(sa.select(contacts)).one()
        personal = _personal(conn, "acme")
    assert (personal["first_name"], personal["email"], personal["phone"], personal["telegram_chat_id"]) == ("Аня", "anna@example.ru", "+79161234567", 5007686286)
    assert (_utc(row.created_at), _utc(row.updated_at)) == (NOW, later)


def test_current_state_follows_the_newest_event_only(engine):
    def decide(value: str, at: str, source: str):
        row = {"external_id": "c-1", "email": "anna@example.ru", "consent_email": value, "consent_source": source, "consent_at": at}
        return _import(engine, "acme", _good(row))[1]

    assert decide("нет", "2026-05-01T12:00:00+03:00", "form:unsubscribe") == {"granted": 0, "withdrawn": 1, "unchanged": 0}
    # An older grant arriving late is logged as a fact but must not resurrect the consent.
    assert decide("да", "2026-01-10T12:00:00+03:00", "import:crm-2026-01") == {"granted": 1, "withdrawn": 0, "unchanged": 0}
    withdrawn_at = datetime(2026, 5, 1, 9, tzinfo=UTC)
    assert _state(engine, "acme", "c-1", "email") == ("withdrawn", withdrawn_at, "form:unsubscribe")

    assert decide("yes", "2026-06-01T09:00:00Z", "bot:/start promo") == {"granted": 1, "withdrawn": 0, "unchanged": 0}
    assert _state(engine, "acme", "c-1", "email") == ("granted", datetime(2026, 6, 1, 9, tzinfo=UTC), "bot:/start promo")
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(consent_events)).scalar() == 3


def test_undated_decision_is_dated_now_and_recorded_only_when_it_changes_the_state(engine):
    row = {"external_id": "c-1", "email": "anna@example.ru", "consent_email": "yes", "consent_source": "import:crm-2026-10"}
    assert _import(engine, "acme", _good(row))[1] == {"granted": 1, "withdrawn": 0, "unchanged": 0}
    assert _state(engine, "acme", "c-1", "email")[:2] == ("granted", NOW)

    assert _import(engine, "acme", _good(row), NOW + timedelta(days=1))[1] == {"granted": 0, "withdrawn": 0, "unchanged": 1}

    withdraw_at = NOW + timedelta(days=2)
    assert _import(engine, "acme", _good({**row, "consent_email": "no"}), withdraw_at)[1] == {
        "granted": 0,
        "withdrawn": 1,
        "unchanged": 0,
    }
    assert _state(engine, "acme", "c-1", "email") == ("withdrawn", withdraw_at, "import:crm-2026-10")


def test_consents_need_the_contacts_first(engine):
    good = _good({"external_id": "c-1", "email": "anna@example.ru", "consent_email": "yes", "consent_source": "form:x"})
    with engine.begin() as conn, pytest.raises(ValueError, match="run upsert_contacts first"):
        record_consents(conn, "acme", good, NOW)


def test_a_withdrawal_ends_a_grant_dated_2099_and_both_stay_on_record(engine):
    row = {"external_id": "c-1", "email": "anna@example.ru", "consent_source": "import:crm-2026-10"}
    _import(engine, "acme", _good(row))
    with engine.begin() as conn:  # a grant dated 2099, as imports recorded it before the clock-skew rule
        contact_id = conn.execute(sa.select(contacts.c.id)).scalar_one()
        fact = ConsentFact(contact_id, "email", Purpose.ADVERTISING, "grant", SourceKind.IMPORT, "crm-2099.csv:row 2", datetime(2099, 1, 1, tzinfo=UTC))
        append(conn, "acme", [fact], NOW)

    later = NOW + timedelta(days=1)
    counts = _import(engine, "acme", _good({**row, "consent_email": "нет", "consent_at": "2026-11-03T10:00:00+03:00"}), later)[1]

    assert counts == {"granted": 0, "withdrawn": 1, "unchanged": 0}
    assert _state(engine, "acme", "c-1", "email")[0] == "withdrawn"
    with engine.connect() as conn:
        facts = conn.execute(sa.select(consent_events.c.action).order_by(consent_events.c.occurred_at)).scalars().all()
    assert facts == ["withdraw", "grant"]


def test_the_store_refuses_a_grant_dated_beyond_the_clock_skew_naming_the_row(engine):
    row = {"external_id": "c-1", "email": "anna@example.ru", "consent_email": "yes", "consent_source": "form:x", "consent_at": "2099-01-01T00:00:00Z"}
    frame = pd.DataFrame([{**dict.fromkeys(CSV_COLUMNS, ""), **row}], columns=list(CSV_COLUMNS))
    good = validate_contact_rows(frame, now=datetime(2099, 1, 1, tzinfo=UTC)).good  # validated by a clock of 2099
    with engine.begin() as conn:
        upsert_contacts(conn, "acme", good, NOW)
        with pytest.raises(ValueError, match=r"row 2: consent_at: grant dated 2099-01-01T00:00:00Z, more than 5 minutes after now"):
            record_consents(conn, "acme", good, NOW)
