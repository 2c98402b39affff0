"""The bulk path for contacts an import creates (``imports.new_contacts``) writes what the per-row
path (``store.upsert_contacts`` + ``store.record_consents``) writes: the same contacts, the same
consent events down to their chain hashes, the same webhook announcements. Both paths run on two
stores that share the tenant's keys, on SQLite and on PostgreSQL."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest
import sqlalchemy as sa

from orchestrator_assets.consent_verify import verify_chains
from orchestrator_assets.imports.commit import ImportSource, commit_import
from orchestrator_assets.imports.reading import read_contacts_file
from orchestrator_assets.imports.sample_contacts import SAMPLE_PATH
from orchestrator_assets.imports.store import record_consents, upsert_contacts
from orchestrator_assets.imports.validation import validate_contact_rows
from orchestrator_assets.webhooks.events import WebhookEvent
from pg import create_database, drop_database
from policies.consent_chain import EventTemplate, canonical_json, json_text
from policies.tenants import ImportMode
from resources.opstore import migrate
from resources.opstore_schema import consent_events, contacts, tenant_keys
from resources.pii import tenant_cipher

TENANT = "acme"
NOW = dt.datetime(2026, 12, 1, 9, 30, tzinfo=dt.UTC)
FILE = 'CRM "export" {2026}\\contacts.csv'  # quotes, braces and a backslash: escaped in the hashed JSON


@pytest.fixture(params=["sqlite", "postgresql"])
def two_stores(request: pytest.FixtureRequest, algor_home: Path, tmp_path: Path):
    if request.param == "sqlite":
        urls = [f"sqlite:///{tmp_path / name}.db" for name in ("bulk", "per_row")]
    else:
        urls = [create_database("algor_new_contacts") for _ in range(2)]
    engines = []
    for url in urls:
        migrate(url)
        engines.append(sa.create_engine(url))
    yield engines
    for engine, url in zip(engines, urls, strict=True):
        engine.dispose()
        if request.param == "postgresql":
            drop_database(url)


def _sample_rows():
    read = read_contacts_file(SAMPLE_PATH)
    good = validate_contact_rows(read.frame, now=NOW, rows=read.rows).good
    good.attrs["source_file"] = FILE
    return good


def _share_keys(source: sa.Engine, target: sa.Engine) -> None:
    with source.begin() as conn:
        tenant_cipher(conn, TENANT)
        keys = [dict(row._mapping) for row in conn.execute(sa.select(tenant_keys))]
    with target.begin() as conn:
        conn.execute(sa.insert(tenant_keys), keys)


def _stored(engine: sa.Engine) -> tuple[list[dict], list[dict]]:
    with engine.connect() as conn:
        cipher = tenant_cipher(conn, TENANT)
        people = [
            {**{k: v for k, v in row._mapping.items() if k not in ("data_key", "pii")}, "pii": cipher.open(row.data_key, row.pii)}
            for row in conn.execute(sa.select(contacts).order_by(contacts.c.id))
        ]
        events = [{k: v for k, v in row._mapping.items() if k != "id"} for row in conn.execute(sa.select(consent_events).order_by(consent_events.c.id))]
    return people, events


def test_new_contacts_are_stored_in_bulk_as_the_per_row_path_stores_them(two_stores):
    bulk, per_row = two_stores
    good = _sample_rows()
    assert len(good) >= 1000 and good[["consent_email", "consent_telegram", "consent_sms"]].notna().any().all()
    _share_keys(bulk, per_row)

    announced_bulk: list[WebhookEvent] = []
    with bulk.begin() as conn:
        result = commit_import(conn, TENANT, good, ImportSource.of(good), ImportMode.VALID_ROWS_ONLY, NOW, actor="test", webhook_events=announced_bulk)
    announced_per_row: list[WebhookEvent] = []
    with per_row.begin() as conn:
        contact_counts = upsert_contacts(conn, TENANT, good, NOW)
        consent_counts = record_consents(conn, TENANT, good, NOW, file=FILE, import_id=result.import_id, webhook_events=announced_per_row)

    assert result.contacts == contact_counts and result.consents == consent_counts
    people, events = _stored(bulk)
    assert len(people) == len(good) and len(events) == consent_counts["granted"] + consent_counts["withdrawn"]
    assert (people, events) == _stored(per_row)  # ids, sealed values opened, blind indexes, chain hashes
    assert [(e.type, e.event_id, e.data) for e in announced_bulk] == [(e.type, e.event_id, e.data) for e in announced_per_row]
    with bulk.connect() as conn:
        report = verify_chains(conn, TENANT)
    assert report.events == len(events) and report.broken == []


def test_a_future_dated_grant_in_bulk_names_its_row_and_writes_nothing(two_stores):
    bulk, _ = two_stores
    good = _sample_rows()
    granted = good.index[good["consent_email"].eq(True)][3]
    good.loc[granted, "consent_at"] = NOW + dt.timedelta(days=2)

    with pytest.raises(ValueError, match=rf"^row {good.loc[granted, 'row']}: consent_at: grant dated"), bulk.begin() as conn:
        commit_import(conn, TENANT, good, ImportSource.of(good), ImportMode.VALID_ROWS_ONLY, NOW, actor="test")

    with bulk.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(contacts)).scalar_one() == 0


@pytest.mark.parametrize("origin", ['форма {0} "цитата"', None, "https://shop.example/?a={b}&c=%d"])
def test_an_event_template_writes_the_canonical_json_byte_for_byte(origin):
    event = {
        "tenant": "acme", "contact_id": 12, "channel": "email", "purpose": "advertising", "action": "grant", "source_kind": "import",
        "source_ref": 'import 3:"my" {file}.csv:row 7', "origin": origin, "occurred_at": dt.datetime(2026, 1, 2, 3, 4, 5, 678, tzinfo=dt.UTC),
        "recorded_at": NOW, "text_version": "ab" * 32,
    }  # fmt: skip
    varying = ("source_ref", "contact_id", "occurred_at")
    template = EventTemplate({k: v for k, v in event.items() if k not in varying}, varying)

    written = template.json(*(json_text(event[name]) for name in template.varying))

    assert written == canonical_json(event) and json.loads(written)["origin"] == origin
