"""Personal data at rest: sealed per contact under tenant keys, found again by blind index only,
never in the database file as plaintext."""

from __future__ import annotations

import base64
import datetime as dt
import os

import pytest
import sqlalchemy as sa

from orchestrator_assets.contact_pii import ContactKeys, contact_columns, find_contact_id, read_contacts
from orchestrator_assets.imports.reading import read_contacts_file
from orchestrator_assets.imports.sample_contacts import SAMPLE_PATH
from orchestrator_assets.imports.store import record_consents, upsert_contacts
from orchestrator_assets.imports.validation import validate_contact_rows
from resources.opstore import migrate
from resources.opstore_schema import contacts, tenant_keys
from resources.pii import PiiKeyError, tenant_cipher, wrap_tenant_key
from resources.settings import get_settings

NOW = dt.datetime(2026, 11, 2, 9, 0, tzinfo=dt.UTC)
ANNA = {"first_name": "Анна", "last_name": "Смирнова", "email": "Anna.Smirnova@Example.ru", "phone": "+79161234567", "telegram_chat_id": 5007686286}


def _insert(conn, tenant: str, external_id: str, fields: dict) -> int:
    cipher = tenant_cipher(conn, tenant)
    key = cipher.new_contact_key()
    row = {"tenant": tenant, "external_id": external_id, "data_key": key, **contact_columns(cipher, key, fields), "created_at": NOW, "updated_at": NOW}
    return conn.execute(sa.insert(contacts).values(row).returning(contacts.c.id)).scalar_one()


def test_sealed_contact_opens_with_its_tenant_and_nowhere_else(engine):
    with engine.begin() as conn:
        anna = _insert(conn, "acme", "c-1", ANNA)
        _insert(conn, "globex", "c-1", {"first_name": "Boris"})
        stored = conn.execute(sa.select(contacts.c.data_key, contacts.c.pii).where(contacts.c.id == anna)).one()
        acme, globex = tenant_cipher(conn, "acme"), tenant_cipher(conn, "globex")

        assert read_contacts(conn, acme, [anna]) == {anna: ANNA}
        assert ANNA["email"].encode() not in stored.pii and "Анна".encode() not in stored.pii
        with pytest.raises(PiiKeyError):  # the same blob and key copied into another tenant's row
            globex.open(stored.data_key, stored.pii)
        with pytest.raises(PiiKeyError):  # one flipped bit
            acme.open(stored.data_key, stored.pii[:-1] + bytes([stored.pii[-1] ^ 1]))
        # Another tenant's reader never sees the contact at all.
        assert read_contacts(conn, globex, [anna]) == {}


def test_shredded_contact_key_leaves_nothing_readable(engine):
    with engine.begin() as conn:
        anna = _insert(conn, "acme", "c-1", ANNA)
        cipher = tenant_cipher(conn, "acme")
        address = ContactKeys.load(conn, cipher, [anna]).seal_address(anna, ANNA["email"])
        assert ContactKeys.load(conn, cipher, [anna]).open_address(anna, address) == ANNA["email"]

        conn.execute(sa.update(contacts).where(contacts.c.id == anna).values(data_key=None))

        assert read_contacts(conn, cipher, [anna]) == {anna: {}}
        assert ContactKeys.load(conn, cipher, [anna]).open_address(anna, address) is None
        with pytest.raises(PiiKeyError, match="no key"):
            ContactKeys.load(conn, cipher, [anna]).seal_address(anna, ANNA["email"])


def test_blind_indexes_find_a_contact_by_any_spelling_of_its_address(engine):
    with engine.begin() as conn:
        anna = _insert(conn, "acme", "c-1", ANNA)
        other = _insert(conn, "globex", "c-1", ANNA)
        acme = tenant_cipher(conn, "acme")
        assert find_contact_id(conn, acme, "email", " anna.smirnova@example.RU ") == anna
        assert find_contact_id(conn, acme, "phone", "79161234567") == anna  # SMSC reports phones without '+'
        assert find_contact_id(conn, acme, "telegram", "5007686286") == anna
        assert find_contact_id(conn, acme, "email", "someone@example.ru") is None
        assert find_contact_id(conn, acme, "vk", "1") is None
        assert find_contact_id(conn, tenant_cipher(conn, "globex"), "phone", "+79161234567") == other
        row = conn.execute(sa.select(contacts).where(contacts.c.id == anna)).one()
        # The same address gets a different index in each tenant: indexes do not join across tenants.
        assert row.phone_bidx != conn.execute(sa.select(contacts.c.phone_bidx).where(contacts.c.id == other)).scalar_one()
        assert (row.email_domain, row.phone_country) == ("example.ru", "RU")


def test_a_newer_key_version_wraps_new_contacts_and_older_ones_open_until_retired(engine):
    with engine.begin() as conn:
        anna = _insert(conn, "acme", "c-1", ANNA)
        old = tenant_cipher(conn, "acme")
        version = conn.execute(sa.select(tenant_keys.c.version)).scalar_one()
        master, new = get_settings().master_key(), version + 1
        conn.execute(
            sa.insert(tenant_keys).values(
                tenant="acme", version=new, created_at=NOW,
                wrapped_data_key=wrap_tenant_key(master, "data-key", "acme", new, os.urandom(32)),
                wrapped_index_key=wrap_tenant_key(master, "index-key", "acme", new, old.index_key),  # indexes stay valid
            )
        )
        newer = tenant_cipher(conn, "acme")
        assert newer.newest_version == version + 1
        assert read_contacts(conn, newer, [anna]) == {anna: ANNA}  # wrapped by the old version, still open
        assert newer.contact_key(newer.new_contact_key())  # new contact keys are wrapped by the newest
        assert find_contact_id(conn, newer, "email", ANNA["email"]) == anna
        rewrapped = newer.wrap_contact_key(old.contact_key(conn.execute(sa.select(contacts.c.data_key)).scalar_one()))
        conn.execute(sa.update(tenant_keys).where(tenant_keys.c.version == version).values(retired_at=NOW))
        retired = tenant_cipher(conn, "acme")
        with pytest.raises(PiiKeyError, match="retired or unknown"):
            read_contacts(conn, retired, [anna])
        conn.execute(sa.update(contacts).where(contacts.c.id == anna).values(data_key=rewrapped))
        assert read_contacts(conn, retired, [anna]) == {anna: ANNA}


def test_keys_do_not_open_under_another_master_key(engine, monkeypatch):
    with engine.begin() as conn:
        _insert(conn, "acme", "c-1", ANNA)
        monkeypatch.setenv("ALGOR_MASTER_KEY", base64.b64encode(os.urandom(32)).decode())
        with pytest.raises(PiiKeyError, match="master key"):
            tenant_cipher(conn, "acme")


def test_sample_import_leaves_no_plaintext_personal_data_in_the_sqlite_file(algor_home, tmp_path):
    path = tmp_path / "opstore.db"
    migrate(f"sqlite:///{path}")
    engine = sa.create_engine(f"sqlite:///{path}")
    good = validate_contact_rows(read_contacts_file(SAMPLE_PATH).frame).good
    with engine.begin() as conn:
        upsert_contacts(conn, "demo", good, NOW)
        record_consents(conn, "demo", good, NOW, file="sample.csv")
    with engine.connect() as conn:
        conn.execute(sa.text("PRAGMA wal_checkpoint(TRUNCATE)"))
        cipher = tenant_cipher(conn, "demo")
        assert len(read_contacts(conn, cipher, range(1, len(good) + 1))) == len(good)
    engine.dispose()
    data = b"".join(p.read_bytes() for p in tmp_path.glob("opstore.db*"))
    known = {  # 8 bytes at least: a shorter value would turn up in random ciphertext by chance
        field: {str(v) for v in good[field].dropna() if len(str(v).encode()) >= 8}
        for field in ("email", "phone", "first_name", "last_name", "telegram_chat_id")
    }
    assert all(known.values())
    leaked = {field: sorted(v for v in values if v.encode() in data)[:3] for field, values in known.items()}
    assert leaked == {field: [] for field in known}
