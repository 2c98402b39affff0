"""Shared by the import commit and rollback tests: a migrated store on SQLite or PostgreSQL, rows as
the reading step hands them to the commit, and a snapshot of what a rollback must restore."""

from __future__ import annotations

from datetime import UTC, datetime

import pandas as pd
import sqlalchemy as sa

from orchestrator_assets.consent_ledger import consent_state
from orchestrator_assets.imports.commit import CommitResult, ImportSource, commit_import
from orchestrator_assets.imports.validation import CSV_COLUMNS, validate_contact_rows
from policies.tenants import ImportMode
from resources.opstore_schema import consent_events, contacts
from resources.pii import tenant_cipher

NOW = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)


def rows(*records: dict[str, str], file: str = "crm.csv", rejected: int = 0) -> pd.DataFrame:
    """Valid rows of a file as ``contact_import_rows`` outputs them (``rejected`` other rows failed validation)."""
    frame = pd.DataFrame([{**dict.fromkeys(CSV_COLUMNS, ""), **record} for record in records], columns=list(CSV_COLUMNS))
    result = validate_contact_rows(frame, now=NOW)
    assert result.errors.empty, result.errors
    result.good.attrs.update(source_file=file, source_sha256="ab" * 32, rows_read=len(records) + rejected, rows_rejected=rejected)
    return result.good


def commit(engine: sa.Engine, good: pd.DataFrame, *, tenant: str = "acme", mode: ImportMode = ImportMode.VALID_ROWS_ONLY, now: datetime = NOW) -> CommitResult:
    with engine.begin() as conn:
        return commit_import(conn, tenant, good, ImportSource.of(good), mode, now, actor="test", run_id="run-1")


def snapshot(engine: sa.Engine) -> dict[str, list]:
    """Contacts (personal data opened), consent state (derived from the ledger) and consent events
    as a reader of the store sees them."""
    state = consent_state(NOW).c
    with engine.connect() as conn:
        return {
            # The sealed blob differs on every sealing (a fresh nonce): what it opens to is compared.
            "contacts": [
                {**row._mapping, "pii": tenant_cipher(conn, row.tenant).open(row.data_key, row.pii)}
                for row in conn.execute(sa.select(contacts).order_by(contacts.c.id))
            ],
            "consents": conn.execute(sa.select(*state).order_by(state.contact_id, state.channel, state.purpose)).all(),
            "consent_events": conn.execute(sa.select(consent_events).order_by(consent_events.c.id)).all(),
        }
