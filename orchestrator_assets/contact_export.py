"""Everything the operational store holds about one contact, as one JSON document (152-FZ art. 14,
GDPR art. 15 and 20: the data subject's access and portability).

The rows are found by the store's own schema, not by a list kept here: every table with a foreign
key to the contact (consent events, sends, segment memberships, trigger events, phone checks,
duplicate candidates, merges, and any table added later), every table keyed by one of those sends (deliveries, operators' decisions), and
the audit rows whose parameters name the contact. Sealed columns are opened with the contact's key;
key material and blind indexes are left out (they say nothing to the person and would help anyone
holding the file match it against a store). An erased contact exports as what is left of it.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import quote

import sqlalchemy as sa

from orchestrator_assets.erasure import contact_columns
from resources.opstore_schema import audit_log, contacts, metadata
from resources.pii import PiiKeyError, TenantCipher

EXPORT_ACTION = "contact.export"
# Columns never exported: key material and blind indexes (see the module docstring).
WITHHELD = frozenset({"data_key", "pii", "email_bidx", "phone_bidx", "telegram_bidx", "vk_bidx", "lookup_bidx"})
UNREADABLE = "sealed; unreadable since the contact was erased"


class ExportError(LookupError):
    """The tenant has no contact with that external id."""


def _value(value: Any, cipher: TenantCipher, contact_key: bytes | None, column: str) -> Any:
    if isinstance(value, (bytes, memoryview)):
        if contact_key is None:
            return UNREADABLE
        try:
            opened = cipher.open_with(contact_key, bytes(value))
        except PiiKeyError:
            return UNREADABLE
        return opened[column] if set(opened) == {column} else opened  # a sealed address is {"address": …}
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    return value


def _rows(conn: sa.Connection, query: sa.Select, cipher: TenantCipher, contact_key: bytes | None) -> list[dict[str, Any]]:
    return [
        {column: _value(value, cipher, contact_key, column) for column, value in row.items() if column not in WITHHELD}
        for row in conn.execute(query).mappings()
    ]


# Audit parameters that name a contact by row id (imports, merges, certificates, erasures, exports).
CONTACT_ID_KEYS = ("contact_id", "contact_ids", "survivor_id", "merged_id")


def _mentions(params: Any, contact_id: int, external_id: str) -> bool:
    """Whether audit parameters name the contact (``CONTACT_ID_KEYS`` or ``external_id(s)``, at any depth)."""
    if isinstance(params, dict):
        for key, value in params.items():
            values = value if isinstance(value, list) else [value]
            if key.endswith(CONTACT_ID_KEYS) and contact_id in values:
                return True
            if key.endswith(("external_id", "external_ids")) and external_id in values:
                return True
            if _mentions(value, contact_id, external_id):
                return True
    if isinstance(params, list):
        return any(_mentions(item, contact_id, external_id) for item in params)
    return False


def contact_document(conn: sa.Connection, cipher: TenantCipher, external_id: str, now: dt.datetime) -> dict[str, Any]:
    """The export of the tenant's contact ``external_id`` (``ExportError`` when there is none)."""
    tenant = cipher.tenant
    row = conn.execute(sa.select(contacts).where(contacts.c.tenant == tenant, contacts.c.external_id == external_id)).mappings().one_or_none()
    if row is None:
        raise ExportError(f"tenant {tenant!r} has no contact with external id {external_id!r}")
    contact_key = cipher.contact_key(row["data_key"]) if row["data_key"] is not None else None
    document: dict[str, Any] = {
        "tenant": tenant,
        "external_id": external_id,
        "exported_at": now.isoformat(),
        "contact": {
            **{column: _value(value, cipher, contact_key, column) for column, value in row.items() if column not in WITHHELD},
            "personal_data": cipher.open_with(contact_key, row["pii"]) if contact_key else {},
        },
    }
    send_ids: list[str] = []
    for table in metadata.sorted_tables:
        if table is not contacts and (naming := contact_columns(table)):
            query = sa.select(table).where(table.c.tenant == tenant, sa.or_(*(column == row["id"] for column in naming)))
            document[table.name] = _rows(conn, query.order_by(*table.primary_key.columns), cipher, contact_key)
            if "send_id" in table.c and table.c.send_id.primary_key:
                send_ids = [send["send_id"] for send in document[table.name]]
    for table in metadata.sorted_tables:
        if "send_id" in table.c and not contact_columns(table):
            query = sa.select(table).where(table.c.tenant == tenant, table.c.send_id.in_(send_ids))
            document[table.name] = _rows(conn, query.order_by(*table.primary_key.columns), cipher, contact_key)
    audit_rows = conn.execute(sa.select(audit_log).where(audit_log.c.tenant == tenant).order_by(audit_log.c.id)).mappings()
    document[audit_log.name] = [
        {**{column: _value(value, cipher, None, column) for column, value in audit.items() if column != "params"}, "params": params}
        for audit in audit_rows
        if _mentions(params := json.loads(audit["params"]), row["id"], external_id)
    ]
    return document


def export_path(home: Path, tenant: str, external_id: str) -> Path:
    """``<home>/exports/<tenant>/<external_id>.json``; the id percent-encoded, since a CRM's id may hold ``/`` or ``..``."""
    name = quote(external_id, safe="").replace(".", "%2E")
    return home / "exports" / tenant / f"{name}.json"


def write_export(path: Path, document: dict[str, Any]) -> None:
    """Write the document readable by its owner only (0600, folders 0700), whole or not at all."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    descriptor, draft = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # created 0600
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as file:
            json.dump(document, file, ensure_ascii=False, indent=2, sort_keys=True)
            file.flush()
            os.fsync(file.fileno())
        os.replace(draft, path)
    except BaseException:
        os.unlink(draft)
        raise
