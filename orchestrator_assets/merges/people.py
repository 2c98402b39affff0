"""Every read and write of contacts' personal data that matching and merging make.

Personal data is sealed per contact (``orchestrator_assets.contact_pii``): matching opens the
tenant's live contacts in memory, a merge seals the survivor's filled-in fields and the send
addresses it takes over with the survivor's key, and the undo puts back the exact sealed bytes
and blind indexes it replaced. What the undo needs is kept in ``contact_merge_moves`` as those
sealed bytes (base64) and keyed indexes, never as plaintext: erasing a contact shreds the copies
too. Nothing here returns a value that leaves the process except masked (``masked_people``).
"""

from __future__ import annotations

import base64
import datetime as dt
from typing import Any

import sqlalchemy as sa

from orchestrator_assets.contact_pii import PII_FIELDS, ContactKeys, contact_columns, read_contacts
from orchestrator_assets.merges.matching import Person
from policies.masking import mask_value
from resources.opstore_schema import contacts, sends
from resources.pii import TenantCipher

# Plain columns a merge fills on the survivor where it has none, beside the sealed fields.
PLAIN_FILLABLE = ("city", "language", "timezone")
# What contact_columns writes: replaced by a merge that fills a sealed field, put back by its undo.
SEALED_COLUMNS = ("pii", "email_bidx", "phone_bidx", "telegram_bidx", "vk_bidx", "email_domain", "phone_country")
SHOWN = ("first_name", "last_name", "phone", "email")


def _b64(value: bytes | None) -> str | None:
    return None if value is None else base64.b64encode(bytes(value)).decode()


def _unb64(value: str | None) -> bytes | None:
    return None if value is None else base64.b64decode(value)


def live_people(conn: sa.Connection, cipher: TenantCipher) -> list[Person]:
    """The tenant's contacts that are neither tombstones nor erased, with what matching compares."""
    rows = conn.execute(
        sa.select(contacts.c.id, contacts.c.city).where(contacts.c.tenant == cipher.tenant, contacts.c.merged_into.is_(None), contacts.c.erased_at.is_(None))
    ).all()
    plain = read_contacts(conn, cipher, [row.id for row in rows])
    return [Person(row.id, *(plain.get(row.id, {}).get(f) for f in ("first_name", "last_name", "email", "phone")), row.city) for row in rows]


def masked_people(conn: sa.Connection, cipher: TenantCipher, ids: list[int]) -> dict[int, str]:
    """``id → "I***, P***, +7 916 ***-**-67, i***@gmail.com"``: enough to recognise, not to contact."""
    plain = read_contacts(conn, cipher, ids)
    return {i: ", ".join(str(mask_value(f, v)) for f in SHOWN if (v := plain.get(i, {}).get(f))) or "—" for i in ids}


def _pair(conn: sa.Connection, survivor_id: int, merged_id: int) -> tuple[sa.RowMapping, sa.RowMapping]:
    rows = {row.id: row._mapping for row in conn.execute(sa.select(contacts).where(contacts.c.id.in_([survivor_id, merged_id])))}
    return rows[survivor_id], rows[merged_id]


def fill_empty_fields(conn: sa.Connection, cipher: TenantCipher, survivor_id: int, merged_id: int, now: dt.datetime) -> tuple[list[str], dict[str, Any]]:
    """Copy the merged contact's values into the survivor's empty fields (sealed ones re-sealed with
    the survivor's key). Returns the fields filled and what the undo needs to put the row back."""
    survivor, merged = _pair(conn, survivor_id, merged_id)
    ours, theirs = _opened(conn, cipher, survivor_id, merged_id)
    sealed = [f for f in PII_FIELDS if ours.get(f) in (None, "") and theirs.get(f) not in (None, "")]
    plain = [f for f in PLAIN_FILLABLE if survivor[f] is None and merged[f] is not None]
    if not sealed and not plain:
        return [], {}
    before = {"updated_at": survivor["updated_at"].isoformat(), **{c: survivor[c] for c in SEALED_COLUMNS}}
    before["pii"] = _b64(survivor["pii"])
    values: dict[str, Any] = {f: merged[f] for f in plain}
    if sealed:
        values.update(contact_columns(cipher, survivor["data_key"], {**ours, **{f: theirs[f] for f in sealed}}))
    conn.execute(sa.update(contacts).where(contacts.c.id == survivor_id).values(**values, updated_at=now))
    return sealed + plain, before


def _opened(conn: sa.Connection, cipher: TenantCipher, survivor_id: int, merged_id: int) -> tuple[dict, dict]:
    opened = read_contacts(conn, cipher, [survivor_id, merged_id])
    return opened.get(survivor_id, {}), opened.get(merged_id, {})


def empty_filled_fields(conn: sa.Connection, cipher: TenantCipher, survivor_id: int, merged_id: int, fields: list[str], before: dict[str, Any]) -> list[str]:
    """Undo ``fill_empty_fields``: where every filled field still holds the merged contact's value,
    the survivor's row is put back exactly (sealed bytes, indexes, ``updated_at``); where some
    changed since, only the unchanged ones are emptied. Returns the changed fields, left as they are."""
    survivor, merged = _pair(conn, survivor_id, merged_id)
    ours, theirs = _opened(conn, cipher, survivor_id, merged_id)

    def current(f: str) -> Any:
        return ours.get(f) if f in PII_FIELDS else survivor[f]

    def theirs_of(f: str) -> Any:
        return theirs.get(f) if f in PII_FIELDS else merged[f]

    changed = [f for f in fields if current(f) != theirs_of(f)]
    unchanged = [f for f in fields if f not in changed]
    if not changed:
        restored = {**{c: before[c] for c in SEALED_COLUMNS}, "pii": _unb64(before["pii"]), "updated_at": dt.datetime.fromisoformat(before["updated_at"])}
        conn.execute(sa.update(contacts).where(contacts.c.id == survivor_id).values(**restored, **dict.fromkeys(f for f in fields if f in PLAIN_FILLABLE)))
        return []
    values: dict[str, Any] = dict.fromkeys(f for f in unchanged if f in PLAIN_FILLABLE)
    if any(f in PII_FIELDS for f in unchanged):
        kept = {f: v for f, v in ours.items() if f not in unchanged}
        values.update(contact_columns(cipher, survivor["data_key"], kept))
    if values:
        conn.execute(sa.update(contacts).where(contacts.c.id == survivor_id).values(**values))
    return changed


def reseal_send_addresses(conn: sa.Connection, cipher: TenantCipher, send_ids: list[str], from_id: int, to_id: int) -> dict[str, str]:
    """Seal the addresses of sends moving from one contact to another with the new contact's key (a
    reader opens a send's address with its contact's key); the old sealed bytes by send id, base64."""
    if not send_ids:
        return {}
    keys = ContactKeys.load(conn, cipher, [from_id, to_id])
    old = dict(conn.execute(sa.select(sends.c.send_id, sends.c.address).where(sends.c.send_id.in_(send_ids))).all())
    for send_id, sealed in old.items():
        address = keys.open_address(from_id, sealed)
        conn.execute(sa.update(sends).where(sends.c.send_id == send_id).values(contact_id=to_id, address=keys.seal_address(to_id, address)))
    return {send_id: _b64(sealed) for send_id, sealed in old.items()}


def restore_send(conn: sa.Connection, send_id: str, survivor_id: int, merged_id: int, sealed: str) -> int:
    """Give a moved send back to the merged contact with its original sealed address; 1 if it was
    still the survivor's."""
    where = [sends.c.send_id == send_id, sends.c.contact_id == survivor_id]
    return conn.execute(sa.update(sends).where(*where).values(contact_id=merged_id, address=_unb64(sealed))).rowcount
