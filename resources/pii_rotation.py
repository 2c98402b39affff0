"""Rotation of the keys of PII at rest (``resources/pii.py``), in steps short enough that sends keep running.

Two duties, each a mode of ``pii_key_rotation_job``:

- **rewrap**: a new master key (``ALGOR_MASTER_KEY``; the one it replaces in
  ``ALGOR_MASTER_KEY_PREVIOUS`` meanwhile). Only the tenants' key rows are re-wrapped, retired
  versions included, one tenant per transaction: a handful of rows, nothing else changes. Afterwards
  the old master key opens nothing in the store.
- **rotate_data_key**: a new version of a tenant's data key. The version is added first (new
  contact keys are wrapped by it from then on, and both versions open); then every contact key is
  re-wrapped in batches, each its own transaction, written only if the row still holds the key that
  was read (an erasure or an import meanwhile wins); then every older version that no contact key
  uses any more is retired. The contact keys themselves do not change, so nothing sealed with them
  (contacts, send addresses, consent evidence) is touched. The blind-index key carries over to the
  new version: a new one would change every index at once and lose every lookup until all were
  recomputed.
"""

from __future__ import annotations

import datetime as dt
import os

import sqlalchemy as sa

from resources.opstore_schema import contacts, tenant_keys
from resources.pii import KEY_BYTES, PiiKeyError, TenantCipher, contact_key_version, unwrap_tenant_key, wrap_tenant_key

PURPOSES = {"data-key": tenant_keys.c.wrapped_data_key, "index-key": tenant_keys.c.wrapped_index_key}


def tenants_with_keys(conn: sa.Connection) -> list[str]:
    return list(conn.execute(sa.select(tenant_keys.c.tenant).distinct().order_by(tenant_keys.c.tenant)).scalars())


def rewrap_tenant_keys(conn: sa.Connection, tenant: str, old_master: bytes, new_master: bytes) -> int:
    """Re-wrap every key version of ``tenant`` from ``old_master`` to ``new_master``; the number re-wrapped
    (rows already under the new key are left as they are, so a repeated run is harmless)."""
    rewrapped = 0
    for row in conn.execute(sa.select(tenant_keys).where(tenant_keys.c.tenant == tenant).order_by(tenant_keys.c.version)).mappings().all():
        values = {}
        for purpose, column in PURPOSES.items():
            wrapped = bytes(row[column.name])
            try:
                unwrap_tenant_key(new_master, purpose, tenant, row["version"], wrapped)
                continue
            except PiiKeyError:
                key = unwrap_tenant_key(old_master, purpose, tenant, row["version"], wrapped)  # neither opens: raise
            values[column.name] = wrap_tenant_key(new_master, purpose, tenant, row["version"], key)
        if values:
            conn.execute(sa.update(tenant_keys).where(tenant_keys.c.tenant == tenant, tenant_keys.c.version == row["version"]).values(values))
            rewrapped += 1
    return rewrapped


def add_data_key_version(conn: sa.Connection, tenant: str, master: bytes, now: dt.datetime) -> int:
    """A new newest version of the tenant's data key (the index key carried over); its number."""
    newest = conn.execute(
        sa.select(tenant_keys).where(tenant_keys.c.tenant == tenant, tenant_keys.c.retired_at.is_(None)).order_by(tenant_keys.c.version.desc()).limit(1)
    ).mappings().one_or_none()
    if newest is None:
        raise PiiKeyError(f"tenant {tenant!r} has no keys yet: nothing to rotate")
    index_key = unwrap_tenant_key(master, "index-key", tenant, newest["version"], bytes(newest["wrapped_index_key"]))
    version = conn.execute(sa.select(sa.func.max(tenant_keys.c.version)).where(tenant_keys.c.tenant == tenant)).scalar_one() + 1
    row = {
        "tenant": tenant,
        "version": version,
        "wrapped_data_key": wrap_tenant_key(master, "data-key", tenant, version, os.urandom(KEY_BYTES)),
        "wrapped_index_key": wrap_tenant_key(master, "index-key", tenant, version, index_key),
        "created_at": now,
    }
    conn.execute(sa.insert(tenant_keys).values(row))
    return version


def rewrap_contact_keys(conn: sa.Connection, cipher: TenantCipher, after_id: int, limit: int) -> tuple[int | None, int]:
    """Re-wrap with the newest version the contact keys of the next ``limit`` contacts after ``after_id``.

    Returns (the last id seen, None when there was none left; how many were re-wrapped).
    """
    rows = conn.execute(
        sa.select(contacts.c.id, contacts.c.data_key)
        .where(contacts.c.tenant == cipher.tenant, contacts.c.id > after_id, contacts.c.data_key.is_not(None))
        .order_by(contacts.c.id)
        .limit(limit)
    ).all()
    rewrapped = 0
    for contact_id, wrapped in rows:
        wrapped = bytes(wrapped)
        if contact_key_version(wrapped) == cipher.newest_version:
            continue
        fresh = cipher.wrap_contact_key(cipher.contact_key(wrapped))
        result = conn.execute(sa.update(contacts).where(contacts.c.id == contact_id, contacts.c.data_key == wrapped).values(data_key=fresh))
        rewrapped += result.rowcount
    return (rows[-1][0] if rows else None), rewrapped


def versions_in_use(conn: sa.Connection, tenant: str) -> set[int]:
    query = sa.select(contacts.c.data_key).where(contacts.c.tenant == tenant, contacts.c.data_key.is_not(None))
    return {contact_key_version(bytes(wrapped)) for wrapped in conn.execute(query).scalars()}


def retire_unused_versions(conn: sa.Connection, tenant: str, now: dt.datetime) -> list[int]:
    """Retire every active version but the newest that no contact key uses; the versions retired."""
    active = list(
        conn.execute(
            sa.select(tenant_keys.c.version).where(tenant_keys.c.tenant == tenant, tenant_keys.c.retired_at.is_(None)).order_by(tenant_keys.c.version)
        ).scalars()
    )
    retired = sorted(set(active[:-1]) - versions_in_use(conn, tenant))
    if retired:
        conn.execute(sa.update(tenant_keys).where(tenant_keys.c.tenant == tenant, tenant_keys.c.version.in_(retired)).values(retired_at=now))
    return retired
