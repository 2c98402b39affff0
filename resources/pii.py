"""Envelope encryption of personal data at rest, and keyed blind indexes to find it again.

Three levels of keys, so that a copied database file is ciphertext and one person's data can be
destroyed without touching anyone else's:

- the **master key** (``Settings.master_key``, never in the database) wraps
- each tenant's **data key** and **blind-index key** (table ``tenant_keys``, one row per version),
  and the tenant data key wraps
- one **contact key** per contact (``contacts.data_key``), which seals that contact's personal data
  (``contacts.pii``) and everything else that identifies them (``sends.address`` …).

Erasing a contact deletes its contact key: whatever was sealed with it, wherever it is, can no
longer be opened (crypto-shredding). Every wrap and seal is AES-256-GCM with associated data that
names the tenant, so a blob copied into another tenant's rows does not open.

A wrapped contact key starts with the tenant key version that wrapped it: a rotation adds a newer
version, re-wraps contact keys at its pace and then retires the old one; until then both open.
Blind indexes are HMAC-SHA256 of a canonical value under the newest version's index key, cut to
16 bytes: equality lookups without the plaintext, and nothing else (no order, no substrings).
"""

from __future__ import annotations

import datetime as dt
import hmac
import json
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from resources.opstore_schema import tenant_keys
from resources.settings import get_settings
from resources.sql import upsert_insert

KEY_BYTES = 32
NONCE_BYTES = 12
BLIND_INDEX_BYTES = 16
FORMAT = 1  # first byte of every wrapped contact key and sealed blob: the layout below
_WRAPPED_HEADER = struct.Struct(">BI")  # format, tenant key version
INDEX_KINDS = frozenset({"email", "phone", "telegram", "vk", "hlr_lookup", "wamid"})  # wamid: orchestrator_assets/provider_ids.py


_FORMAT_BYTE = bytes([FORMAT])
# One encoder for every seal: json.dumps with options builds a new encoder per call, which cost more
# than the encryption (the send path seals an address per message, an import a contact per row).
_canonical_json = json.JSONEncoder(ensure_ascii=False, sort_keys=True, separators=(",", ":")).encode


class PiiKeyError(RuntimeError):
    """A key or blob that cannot be used: wrong tenant, retired or unknown key version, tampering."""


def _encrypt(key: AESGCM, plaintext: bytes, aad: bytes) -> bytes:
    nonce = os.urandom(NONCE_BYTES)
    return nonce + key.encrypt(nonce, plaintext, aad)


def _decrypt(key: AESGCM, blob: bytes, aad: bytes) -> bytes:
    return key.decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], aad)


def _tenant_aad(purpose: str, tenant: str, version: int | None = None) -> bytes:
    suffix = b"" if version is None else b"\0" + str(version).encode()
    return b"algor/" + purpose.encode() + b"\0" + tenant.encode() + suffix


@dataclass
class TenantCipher:
    """One tenant's unwrapped keys, held for one step (never stored, never logged).

    ``data_keys`` maps every non-retired version to its data key; the newest wraps new contact keys
    and its index key computes blind indexes.
    """

    tenant: str
    data_keys: dict[int, bytes]
    index_key: bytes
    # Loads the tenant's active data keys again: a key rotation that started after this cipher was
    # made re-wraps contact keys with a version it has not seen (resources/pii_rotation.py).
    reload: Callable[[], dict[int, bytes]] | None = field(default=None, repr=False)
    _wrappers: dict[int, AESGCM] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        self._use(self.data_keys)
        self._key_aad = _tenant_aad("contact-key", self.tenant)

    def _use(self, data_keys: dict[int, bytes]) -> None:
        self.data_keys = data_keys
        self._wrappers = {version: AESGCM(key) for version, key in data_keys.items()}
        self._newest = max(data_keys)
        self._pii_aad = _tenant_aad("pii", self.tenant)

    @property
    def newest_version(self) -> int:
        return self._newest

    def new_contact_key(self) -> bytes:
        """A fresh per-contact key, returned wrapped by the newest tenant data key (→ ``contacts.data_key``)."""
        return self.new_contact_key_pair()[1]

    def new_contact_key_pair(self) -> tuple[bytes, bytes]:
        """A fresh per-contact key, plain (to seal with at once, ``seal_with``) and wrapped."""
        key = AESGCM.generate_key(bit_length=KEY_BYTES * 8)
        return key, self.wrap_contact_key(key)

    def wrap_contact_key(self, contact_key: bytes) -> bytes:
        """``contact_key`` wrapped by the newest tenant data key (a rotation re-wraps with this)."""
        header = _WRAPPED_HEADER.pack(FORMAT, self._newest)
        return header + _encrypt(self._wrappers[self._newest], contact_key, self._key_aad + header)

    def contact_key(self, wrapped: bytes) -> bytes:
        """The plain contact key; ``PiiKeyError`` for another tenant's, a retired version's or a damaged one."""
        if len(wrapped) < _WRAPPED_HEADER.size + NONCE_BYTES:
            raise PiiKeyError("wrapped contact key is too short")
        header = bytes(wrapped[: _WRAPPED_HEADER.size])
        fmt, version = _WRAPPED_HEADER.unpack(header)
        if fmt != FORMAT:
            raise PiiKeyError(f"wrapped contact key has unknown format {fmt}")
        if version not in self._wrappers and version > self._newest and self.reload is not None:
            self._use(self.reload())
        wrapper = self._wrappers.get(version)
        if wrapper is None:
            raise PiiKeyError(f"tenant {self.tenant!r} has no usable key version {version} (retired or unknown)")
        try:
            return _decrypt(wrapper, bytes(wrapped[_WRAPPED_HEADER.size :]), self._key_aad + header)
        except InvalidTag as exc:
            raise PiiKeyError(f"contact key does not open with tenant {self.tenant!r}'s keys") from exc

    def seal(self, wrapped_contact_key: bytes, values: dict[str, Any]) -> bytes:
        """AES-GCM of ``values`` as canonical JSON under the contact's key."""
        return self.seal_with(self.contact_key(wrapped_contact_key), values)

    def seal_with(self, contact_key: bytes, values: dict[str, Any]) -> bytes:
        """``seal`` with an already unwrapped contact key: many values of one contact, one unwrap."""
        return _FORMAT_BYTE + _encrypt(AESGCM(contact_key), _canonical_json(values).encode(), self._pii_aad)

    def open(self, wrapped_contact_key: bytes | None, blob: bytes | None) -> dict[str, Any]:
        """What ``seal`` sealed; ``{}`` when there is nothing or the contact key was shredded (erasure)."""
        if wrapped_contact_key is None or blob is None:
            return {}
        return self.open_with(self.contact_key(wrapped_contact_key), blob)

    def open_with(self, contact_key: bytes, blob: bytes | None) -> dict[str, Any]:
        """``open`` with an already unwrapped contact key: many blobs of one contact, one unwrap."""
        if blob is None:
            return {}
        blob = bytes(blob)
        if not blob or blob[0] != FORMAT:
            raise PiiKeyError("sealed value has an unknown format")
        try:
            return json.loads(_decrypt(AESGCM(contact_key), blob[1:], self._pii_aad))
        except InvalidTag as exc:
            raise PiiKeyError(f"sealed value does not open with this contact key of tenant {self.tenant!r}") from exc

    def index(self, kind: str, normalised: str) -> str:
        """Keyed blind index (hex) of an already normalised value; ``kind`` keeps e-mails and phones apart."""
        if kind not in INDEX_KINDS:
            raise ValueError(f"no blind index kind {kind!r} (known: {', '.join(sorted(INDEX_KINDS))})")
        digest = hmac.digest(self.index_key, f"{kind}\0{normalised}".encode(), "sha256")
        return digest[:BLIND_INDEX_BYTES].hex()


def tenant_cipher(conn: sa.Connection, tenant: str) -> TenantCipher:
    """The tenant's keys, unwrapped with the master key; the first call for a tenant creates them.

    Creation happens in the caller's transaction, so keys commit together with the first data
    they protect (and vanish with it on rollback); a concurrent creator's row wins the race.
    """
    rows = _active_keys(conn, tenant)
    if not rows:
        _create_keys(conn, tenant)
        rows = _active_keys(conn, tenant)
    data_keys, index_key = _unwrap_rows(tenant, rows)
    engine = conn.engine

    def reload() -> dict[int, bytes]:
        with engine.connect() as fresh:
            return _unwrap_rows(tenant, _active_keys(fresh, tenant))[0]

    return TenantCipher(tenant, data_keys, index_key, reload)


def _unwrap_rows(tenant: str, rows: list[sa.Row]) -> tuple[dict[int, bytes], bytes]:
    """Data keys by version and the newest index key (rows are ordered by version).

    Each row opens with the master key or, while a master key rotation is under way, with the
    previous one (``Settings.previous_master_key``): rows not re-wrapped yet keep working.
    """
    settings = get_settings()
    masters = [key for key in (settings.master_key(), settings.previous_master_key()) if key]
    data_keys: dict[int, bytes] = {}
    index_key = b""
    for row in rows:
        data_keys[row.version] = _unwrap_any(masters, "data-key", tenant, row.version, bytes(row.wrapped_data_key))
        index_key = _unwrap_any(masters, "index-key", tenant, row.version, bytes(row.wrapped_index_key))
    return data_keys, index_key


def _unwrap_any(masters: list[bytes], purpose: str, tenant: str, version: int, wrapped: bytes) -> bytes:
    for master in masters:
        try:
            return unwrap_tenant_key(master, purpose, tenant, version, wrapped)
        except PiiKeyError:
            continue
    raise PiiKeyError(f"tenant {tenant!r}'s keys do not open with this master key (ALGOR_MASTER_KEY differs from the one they were made with)")


def wrap_tenant_key(master_key: bytes, purpose: str, tenant: str, version: int, key: bytes) -> bytes:
    """A tenant key as ``tenant_keys`` stores it (``purpose``: data-key | index-key)."""
    return _encrypt(AESGCM(master_key), key, _tenant_aad(purpose, tenant, version))


def unwrap_tenant_key(master_key: bytes, purpose: str, tenant: str, version: int, wrapped: bytes) -> bytes:
    """What ``wrap_tenant_key`` wrapped; ``PiiKeyError`` under another master key (or for another slot)."""
    try:
        return _decrypt(AESGCM(master_key), wrapped, _tenant_aad(purpose, tenant, version))
    except InvalidTag as exc:
        raise PiiKeyError(f"tenant {tenant!r}'s {purpose} version {version} does not open with this master key") from exc


def contact_key_version(wrapped: bytes) -> int:
    """The tenant key version that wrapped a contact key (its header says so in the clear)."""
    return _WRAPPED_HEADER.unpack(bytes(wrapped[: _WRAPPED_HEADER.size]))[1]


def _active_keys(conn: sa.Connection, tenant: str) -> list[sa.Row]:
    query = (
        sa.select(tenant_keys.c.version, tenant_keys.c.wrapped_data_key, tenant_keys.c.wrapped_index_key)
        .where(tenant_keys.c.tenant == tenant, tenant_keys.c.retired_at.is_(None))
        .order_by(tenant_keys.c.version)
    )
    return list(conn.execute(query))


def _create_keys(conn: sa.Connection, tenant: str) -> None:
    latest = conn.execute(sa.select(sa.func.max(tenant_keys.c.version)).where(tenant_keys.c.tenant == tenant)).scalar()
    version = (latest or 0) + 1
    master = get_settings().master_key()
    row = {
        "tenant": tenant,
        "version": version,
        "wrapped_data_key": wrap_tenant_key(master, "data-key", tenant, version, AESGCM.generate_key(bit_length=KEY_BYTES * 8)),
        "wrapped_index_key": wrap_tenant_key(master, "index-key", tenant, version, os.urandom(KEY_BYTES)),
        "created_at": dt.datetime.now(dt.UTC),
    }
    conn.execute(upsert_insert(conn, tenant_keys).values(row).on_conflict_do_nothing())
