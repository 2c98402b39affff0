"""Contacts as tests need them, sealed the way the store holds them (orchestrator_assets.contact_pii).

Tests that set up contacts directly, or look at their personal data, go through these helpers
instead of plaintext columns, which the store no longer has.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import sqlalchemy as sa

from orchestrator_assets.contact_pii import INDEXED, ContactKeys, blind_index, contact_columns, find_contact_id, read_contacts
from resources.opstore_schema import contacts
from resources.pii import tenant_cipher

PLAIN = ("city", "language", "timezone")


def add_contact(conn: sa.Connection, tenant: str, external_id: str, now: dt.datetime, contact_id: int | None = None, **fields: Any) -> int:
    """Insert a contact with ``fields`` (personal ones sealed, city/language as they are); its id."""
    cipher = tenant_cipher(conn, tenant)
    key = cipher.new_contact_key()
    row = {**({"id": contact_id} if contact_id is not None else {}),
        "tenant": tenant, "external_id": external_id, "data_key": key, "created_at": now, "updated_at": now,
        **contact_columns(cipher, key, fields), **{name: fields.get(name) for name in PLAIN},
    }
    return conn.execute(sa.insert(contacts).values(row).returning(contacts.c.id)).scalar_one()


def personal(conn: sa.Connection, tenant: str, contact_id: int) -> dict[str, Any]:
    """The contact's opened personal data ({} when erased or unknown)."""
    return read_contacts(conn, tenant_cipher(conn, tenant), [contact_id]).get(contact_id, {})


def contacts_with(conn: sa.Connection, tenant: str, field: str, value: Any) -> list[sa.Row]:
    """The tenant's contact rows whose ``field`` (email, phone, telegram_chat_id, vk_user_id) is ``value``."""
    kind = INDEXED[field]
    index = blind_index(tenant_cipher(conn, tenant), kind, value)
    return conn.execute(sa.select(contacts).where(contacts.c.tenant == tenant, contacts.c[f"{kind}_bidx"] == index).order_by(contacts.c.id)).all()


def contact_id_with(conn: sa.Connection, tenant: str, kind: str, value: Any) -> int | None:
    return find_contact_id(conn, tenant_cipher(conn, tenant), kind, value)


def newcomer_external_id(conn: sa.Connection, tenant: str, channel: str, address: int) -> str:
    """The external id an opt-in from an unknown Telegram/VK id gives its new contact."""
    return f"{channel}:{blind_index(tenant_cipher(conn, tenant), channel, address)}"


def sealed_address(conn: sa.Connection, tenant: str, contact_id: int, address: str) -> bytes:
    """``address`` as ``sends.address`` holds it: sealed with the contact's key."""
    return ContactKeys.load(conn, tenant_cipher(conn, tenant), [contact_id]).seal_address(contact_id, address)


def send_address(conn: sa.Connection, send: sa.Row) -> str | None:
    """The plaintext address of a ``sends`` row (None once its contact is erased)."""
    return ContactKeys.load(conn, tenant_cipher(conn, send.tenant), [send.contact_id]).open_address(send.contact_id, send.address)
