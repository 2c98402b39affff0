"""The commit of one contact import: contacts, their consents, the import's id and history, and the
audit row, all in the caller's one transaction.

Whatever happens part-way (a constraint, a lost connection, a killed process) the transaction is
not committed and the store is as before: there is no state in which contacts exist without the
consents their file gave, or an import id without its contacts.

The tenant's ``import_mode`` (``policies.tenants.ImportMode``, overridable per run) decides what
rejected rows do: ``all_or_nothing`` refuses the whole file (``ImportRefused``, nothing written),
``valid_rows_only`` writes the rest. Rejected rows are those validation rejected and those that
duplicate another stored contact (``identity.resolve_against_store``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

import pandas as pd
import sqlalchemy as sa

from orchestrator_assets.imports.history import open_import, record_changes
from orchestrator_assets.imports.identity import resolve_against_store
from orchestrator_assets.imports.new_contacts import insert_new_contacts, split_new
from orchestrator_assets.imports.store import ContactChange, record_consents, upsert_contacts
from orchestrator_assets.webhooks.events import WebhookEvent
from policies.loader import load_consent_texts
from policies.tenants import ImportMode
from resources.audit import record_audit
from resources.opstore_schema import contact_imports
from resources.pii import tenant_cipher

@dataclass(frozen=True)
class ImportSource:
    """What the reading step knew about the file, carried on the rows frame's ``attrs`` (set by
    ``imports.assets.contact_import_rows``; a frame built elsewhere counts as all rows read, none rejected)."""

    file: str | None
    sha256: str | None
    rows_read: int
    rows_rejected: int
    error_report: str | None

    @classmethod
    def of(cls, rows: pd.DataFrame) -> ImportSource:
        attrs = rows.attrs
        return cls(
            file=attrs.get("source_file"),
            sha256=attrs.get("source_sha256"),
            rows_read=int(attrs.get("rows_read", len(rows))),
            rows_rejected=int(attrs.get("rows_rejected", 0)),
            error_report=attrs.get("error_report"),
        )


class ImportRefused(Exception):
    """All-or-nothing import with rejected rows: nothing was written."""

    def __init__(self, rejected: int, store_duplicates: list[dict]):
        super().__init__(f"{rejected} rejected row(s) and import_mode all_or_nothing: nothing was imported")
        self.rejected = rejected
        self.store_duplicates = store_duplicates


@dataclass
class CommitResult:
    import_id: int | None
    contacts: dict[str, int]
    consents: dict[str, int]
    rows_rejected: int
    store_duplicates: list[dict] = field(default_factory=list)


def commit_import(
    conn: sa.Connection,
    tenant: str,
    rows: pd.DataFrame,
    source: ImportSource,
    mode: ImportMode,
    now: datetime,
    *,
    actor: str,
    run_id: str | None = None,
    webhook_events: list[WebhookEvent] | None = None,
) -> CommitResult:
    """Write one import's rows in ``conn``'s transaction; raises ``ImportRefused`` (before writing
    anything) for an all-or-nothing import with rejected rows.

    A run without a file (``source.file`` None) writes what it is given without an import id:
    there is nothing to roll back to.
    """
    good, duplicates = resolve_against_store(conn, tenant, rows)
    texts = load_consent_texts()
    rejected = source.rows_rejected + len({problem["row"] for problem in duplicates})
    if mode == ImportMode.ALL_OR_NOTHING and rejected:
        raise ImportRefused(rejected, duplicates)
    import_id = None
    if source.file is not None:
        import_id = open_import(
            conn,
            {
                "tenant": tenant, "source_file": source.file[:512], "content_sha256": source.sha256, "mode": str(mode),
                "rows_read": source.rows_read, "rows_valid": len(good), "rows_rejected": rejected,
                "rows_inserted": 0, "rows_updated": 0, "rows_unchanged": 0, "rows_merged": 0, "run_id": run_id, "committed_at": now,
            },
        )
    new, known = split_new(conn, tenant, good)
    changes: list[ContactChange] = []
    contact_counts = upsert_contacts(conn, tenant, known, now, changes=changes)
    consent_counts = record_consents(conn, tenant, known, now, file=source.file, webhook_events=webhook_events, import_id=import_id, texts=texts)
    created = insert_new_contacts(conn, tenant, new, now, texts=texts, import_id=import_id, file=source.file, webhook_events=webhook_events)
    contact_counts["inserted"] += created.pop("inserted")
    consent_counts = {key: count + created.get(key, 0) for key, count in consent_counts.items()}
    if import_id is not None:
        record_changes(conn, tenant_cipher(conn, tenant), import_id, changes)
        conn.execute(
            sa.update(contact_imports)
            .where(contact_imports.c.id == import_id)
            .values(**{f"rows_{key}": count for key, count in contact_counts.items()})
        )
        record_audit(
            conn, tenant=tenant, actor=actor, action="import.commit", run_id=run_id, now=now,
            params={
                "import_id": import_id, "file": source.file, "sha256": source.sha256, "mode": str(mode),
                "rows_rejected": rejected, **contact_counts, **{f"consents_{k}": v for k, v in consent_counts.items()},
            },
        )
    return CommitResult(import_id, contact_counts, consent_counts, rejected, duplicates)
