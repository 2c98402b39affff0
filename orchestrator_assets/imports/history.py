"""The record of what each contact import did: its ``contact_imports`` row, the contacts it created
or changed (with their former values), and how to find the consent events it appended.

The former values are personal data: they are sealed with the contact's own key
(``resources.pii``), so erasing the contact shreds its import history with everything else.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from orchestrator_assets.imports.store import ContactChange
from policies.consent_purposes import SourceKind
from resources.opstore_schema import consent_events, contact_import_changes, contact_imports
from resources.pii import TenantCipher
from resources.sql import bulk_insert

COMMITTED, ROLLED_BACK = "committed", "rolled_back"
CREATED, UPDATED = "created", "updated"


def open_import(conn: sa.Connection, row: dict[str, Any]) -> int:
    """Insert the import's row (status committed; counts as known so far); returns its id."""
    return conn.execute(sa.insert(contact_imports).values(status=COMMITTED, **row).returning(contact_imports.c.id)).scalar_one()


def record_changes(conn: sa.Connection, cipher: TenantCipher, import_id: int, changes: Sequence[ContactChange]) -> None:
    rows = [
        {
            "import_id": import_id,
            "contact_id": change.contact_id,
            "action": CREATED if change.previous is None else UPDATED,
            "previous": None if change.previous is None else cipher.seal(change.data_key, change.previous),
            "previous_updated_at": change.previous_updated_at,
        }
        for change in changes
    ]
    if rows:
        conn.execute(sa.insert(contact_import_changes), rows)


def record_created(conn: sa.Connection, import_id: int, contact_ids: Iterable[int]) -> None:
    """``record_changes`` for contacts the import created (nothing to restore: a rollback deletes them), in bulk."""
    bulk_insert(conn, contact_import_changes, ("import_id", "contact_id", "action"), ((import_id, contact_id, CREATED) for contact_id in contact_ids))


def import_consent_events(import_id: int) -> sa.ColumnElement[bool]:
    """The consent events ``import_id`` appended: source kind ``import`` and a ``source_ref`` that
    starts with its id (``store.import_ref``; the colon keeps import 4 from matching import 42)."""
    return sa.and_(consent_events.c.source_kind == str(SourceKind.IMPORT), consent_events.c.source_ref.startswith(f"import {int(import_id)}:", autoescape=True))


def mark_rolled_back(conn: sa.Connection, import_id: int, now: datetime) -> None:
    conn.execute(sa.update(contact_imports).where(contact_imports.c.id == import_id).values(status=ROLLED_BACK, rolled_back_at=now))
