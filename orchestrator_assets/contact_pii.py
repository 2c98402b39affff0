"""The one place where contacts' personal data is sealed, opened and looked up.

Every writer builds the columns of a contact with ``contact_columns`` (the sealed blob, blind
indexes and derived columns, always together so they never disagree); every reader opens contacts
in bulk with ``read_contacts``; a provider's address (an e-mail, a phone, a chat id) is matched to a
contact with ``find_contact_id`` through its blind index. Send addresses are sealed with the
contact's key (``ContactKeys``), so erasing the contact shreds them too.

Blind indexes are computed over one canonical spelling per kind (``canonical``): e-mails lowercased,
phones as ``+`` and digits, chat/user ids as decimal integers, so a provider that reports
``79161234567`` finds the contact imported as ``+79161234567``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import pandas as pd
import phonenumbers
import sqlalchemy as sa

from orchestrator_assets.imports.phones import countries
from resources.opstore_schema import contacts
from resources.pii import PiiKeyError, TenantCipher

# What ``contacts.pii`` holds, sealed.
PII_FIELDS = ("first_name", "last_name", "email", "phone", "phone_ext", "telegram_chat_id", "vk_user_id")
# Blind index kind and column per indexed field.
INDEXED = {"email": "email", "phone": "phone", "telegram_chat_id": "telegram", "vk_user_id": "vk"}
INDEX_COLUMNS = {kind: contacts.c[f"{kind}_bidx"] for kind in INDEXED.values()}
# The blind index column that says a contact has an address on each channel.
CHANNEL_INDEX = {"email": "email", "sms": "phone", "whatsapp": "phone", "telegram": "telegram", "vk": "vk"}
# The sealed field that holds each channel's address.
CHANNEL_FIELD = {"email": "email", "sms": "phone", "whatsapp": "phone", "telegram": "telegram_chat_id", "vk": "vk_user_id"}
READ_BATCH = 1000


def canonical(kind: str, value: Any) -> str | None:
    """The one spelling of ``value`` a blind index of ``kind`` is computed over; None for nothing usable."""
    if value is None:
        return None
    text = str(value).strip()
    if kind == "email":
        return text.lower() or None
    if kind == "phone":
        digits = "".join(ch for ch in text if ch.isascii() and ch.isdigit())
        return f"+{digits}" if digits else None
    if kind in ("telegram", "vk"):
        try:
            return str(int(text))
        except ValueError:
            return None
    return text or None


def blind_index(cipher: TenantCipher, kind: str, value: Any) -> str | None:
    """The blind index of ``value`` as a ``kind``, or None when there is no value."""
    text = canonical(kind, value)
    return None if text is None else cipher.index(kind, text)


def phone_country(e164: str | None) -> str | None:
    """ISO region of an E.164 phone (``RU``), None when the number names none."""
    if not e164:
        return None
    try:
        region = phonenumbers.region_code_for_number(phonenumbers.parse(e164, None))
    except phonenumbers.NumberParseException:
        return None
    return region if region and region not in ("ZZ", "001") else None  # 001: a non-geographic code (+800)


def contact_columns(cipher: TenantCipher, wrapped_key: bytes, fields: Mapping[str, Any]) -> dict[str, Any]:
    """The ``contacts`` columns for a contact whose personal data is ``fields`` (every field, not a
    change: what is left out is not stored): ``pii``, the blind indexes and the derived columns."""
    values = {name: fields[name] for name in PII_FIELDS if fields.get(name) not in (None, "")}
    email, phone = values.get("email"), values.get("phone")
    columns: dict[str, Any] = {"pii": cipher.seal(wrapped_key, values) if values else None}
    for field, kind in INDEXED.items():
        columns[f"{kind}_bidx"] = blind_index(cipher, kind, values.get(field))
    columns["email_domain"] = email.rpartition("@")[2].lower() if email and "@" in email else None
    columns["phone_country"] = fields.get("phone_country") or phone_country(phone)
    return columns


def new_contact_columns(cipher: TenantCipher, fields: pd.DataFrame) -> dict[str, list[Any]]:
    """``contact_columns`` of many new contacts at once, each under a fresh contact key (also in
    the result, as ``data_key``): column name → one value per row of ``fields``. A bulk import
    seals a million contacts this way; every value is the one ``contact_columns`` gives. Blind
    index columns already in ``fields`` (``email_bidx`` …) are taken as they are.
    """
    count = len(fields)
    absent = [None] * count
    values = {name: fields[name].to_numpy(dtype=object, na_value=None) if name in fields else absent for name in PII_FIELDS}
    keys = [cipher.new_contact_key_pair() for _ in range(count)]
    seal_with, sealed = cipher.seal_with, []
    for (key, _), row in zip(keys, zip(*(values[name] for name in PII_FIELDS), strict=True), strict=True):
        present = {name: value for name, value in zip(PII_FIELDS, row, strict=True) if value is not None and value != ""}
        sealed.append(seal_with(key, present) if present else None)
    columns: dict[str, list[Any]] = {"data_key": [wrapped for _, wrapped in keys], "pii": sealed}
    for field, kind in INDEXED.items():
        name = f"{kind}_bidx"
        if name in fields:  # computed already (imports.identity does for phones and e-mails)
            columns[name] = fields[name].to_numpy(dtype=object, na_value=None).tolist()
        else:
            columns[name] = [None if value is None else blind_index(cipher, kind, value) for value in values[field]]
    columns["email_domain"] = [email.rpartition("@")[2].lower() if email and "@" in email else None for email in values["email"]]
    columns["phone_country"] = countries(pd.Series(values["phone"], dtype="string")).to_numpy(dtype=object, na_value=None).tolist()
    return columns


def read_contacts(conn: sa.Connection, cipher: TenantCipher, ids: Iterable[int]) -> dict[int, dict[str, Any]]:
    """Plaintext personal data of the tenant's contacts ``ids`` by id (``{}`` for an erased one)."""
    wanted = sorted(set(ids))
    found: dict[int, dict[str, Any]] = {}
    for start in range(0, len(wanted), READ_BATCH):
        query = sa.select(contacts.c.id, contacts.c.data_key, contacts.c.pii).where(
            contacts.c.tenant == cipher.tenant, contacts.c.id.in_(wanted[start : start + READ_BATCH])
        )
        for row in conn.execute(query):
            found[row.id] = cipher.open(row.data_key, row.pii)
    return found


def find_contact_id(conn: sa.Connection, cipher: TenantCipher, kind: str, value: Any) -> int | None:
    """The tenant's (oldest) contact whose ``kind`` (email | phone | telegram | vk) is ``value``; a
    live one before a merged contact's tombstone, which keeps its addresses the survivor may share."""
    index = blind_index(cipher, kind, value)
    if index is None:
        return None
    query = (
        sa.select(contacts.c.id)
        .where(contacts.c.tenant == cipher.tenant, INDEX_COLUMNS[kind] == index)
        .order_by(contacts.c.merged_into.is_not(None), contacts.c.id)
        .limit(1)
    )
    return conn.execute(query).scalar()


class ContactKeys:
    """Unwrapped keys of the contacts one step handles, for sealing and opening their send
    addresses (``sends.address``) in bulk: one query for the wrapped keys, one unwrap per contact."""

    def __init__(self, cipher: TenantCipher, wrapped: Mapping[int, bytes | None]) -> None:
        self.cipher = cipher
        self._wrapped = dict(wrapped)
        self._keys: dict[int, bytes] = {}

    @classmethod
    def load(cls, conn: sa.Connection, cipher: TenantCipher, ids: Iterable[int]) -> ContactKeys:
        wanted = sorted(set(ids))
        wrapped: dict[int, bytes | None] = {}
        for start in range(0, len(wanted), READ_BATCH):
            query = sa.select(contacts.c.id, contacts.c.data_key).where(
                contacts.c.tenant == cipher.tenant, contacts.c.id.in_(wanted[start : start + READ_BATCH])
            )
            wrapped.update((row.id, row.data_key) for row in conn.execute(query))
        return cls(cipher, wrapped)

    def _key(self, contact_id: int) -> bytes | None:
        key = self._keys.get(contact_id)
        if key is None and (wrapped := self._wrapped.get(contact_id)) is not None:
            key = self._keys[contact_id] = self.cipher.contact_key(wrapped)
        return key

    def seal_address(self, contact_id: int, address: str) -> bytes:
        """``address`` sealed with the contact's key; ``PiiKeyError`` for an erased or unknown contact."""
        key = self._key(contact_id)
        if key is None:
            raise PiiKeyError(f"contact {contact_id} has no key (erased, or not a contact of tenant {self.cipher.tenant!r})")
        return self.cipher.seal_with(key, {"address": address})

    def open_address(self, contact_id: int, sealed: bytes | None) -> str | None:
        """The address ``seal_address`` sealed; None once the contact is erased."""
        key = self._key(contact_id)
        return None if key is None else self.cipher.open_with(key, sealed).get("address")
