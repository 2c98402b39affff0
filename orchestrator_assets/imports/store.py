"""Write validated contacts and their consent decisions to the operational store.

Both functions take the ``good`` frame of ``validation.validate_contact_rows`` and a connection
inside the caller's transaction (``with engine.begin() as conn``), so a failed import leaves no
half-written state. They run unchanged on SQLite (embedded default) and PostgreSQL (production):
the only dialect-specific piece is the ``INSERT … ON CONFLICT`` construct, chosen by ``resources.sql.upsert_insert``.

Re-importing the same file is a no-op and is reported as such (``unchanged`` counts): contacts
are compared with what is stored before writing, consent events are keyed by their facts and
appended to the consent ledger once (``orchestrator_assets.consent_ledger``).
"""

from __future__ import annotations

import json

import re
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import sqlalchemy as sa

from orchestrator_assets.consent_decisions import GRANT, WITHDRAW, FutureDatedGrant, fact_time, record_decisions
from orchestrator_assets.consent_ledger import ConsentFact, consent_state, utc
from orchestrator_assets.contact_pii import PII_FIELDS, contact_columns
from orchestrator_assets.imports.validation import CHANNELS
from orchestrator_assets.webhooks.events import WebhookEvent
from policies.consent_purposes import ANY_CHANNEL, Purpose, SourceKind
from policies.consent_texts import ConsentTextsFile
from policies.loader import load_consent_texts
from resources.opstore_schema import consent_events, contacts
from resources.pii import tenant_cipher
from resources.sql import upsert_insert

BATCH_SIZE = 500
# Not personal on their own: stored as they are, for segment rules. ``custom_fields`` is the tenant's
# declared fields (policies.tenants.CustomField) as one JSON object; docs/imports.md tells tenants
# not to declare personal data there.
PLAIN_FIELDS = ("city", "language", "timezone", "custom_fields")
CONTACT_FIELDS = (*PII_FIELDS, *PLAIN_FIELDS)
SEALED_COLUMNS = ("email_bidx", "phone_bidx", "telegram_bidx", "vk_bidx", "email_domain", "phone_country")


def aware_utc(moment: datetime | pd.Timestamp) -> datetime:
    """Aware UTC ``datetime``. SQLite drops the offset when storing, so everything stored must
    already be UTC for stored values (and the event unique key) to be comparable."""
    stamp = pd.Timestamp(moment)
    if stamp.tzinfo is None:
        raise ValueError(f"timestamp {moment!r} has no timezone")
    return stamp.tz_convert("UTC").to_pydatetime()


def _plain(value: Any) -> Any:
    """Python value for a DB parameter: pandas/numpy missing → None, numpy scalars → Python."""
    if pd.api.types.is_scalar(value) and pd.isna(value):
        return None
    if isinstance(value, np.generic):
        return value.item()
    return value


def _records(frame: pd.DataFrame, columns: Sequence[str]) -> list[dict[str, Any]]:
    records = [
        {column: _plain(value) for column, value in zip(columns, values, strict=True)}
        for values in frame[list(columns)].itertuples(index=False, name=None)
    ]
    seen: set[str] = set()
    for record in records:
        if record["external_id"] in seen:
            # Validation guarantees this; a second row would make the result depend on row order.
            raise ValueError(f"external_id {record['external_id']!r} appears more than once")
        seen.add(record["external_id"])
    return records


def _batches(items: Sequence[Any], size: int = BATCH_SIZE) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class ContactChange(NamedTuple):
    """One contact an import wrote: created (``previous`` None) or updated (the changed fields'
    former values, and the ``updated_at`` they had)."""

    external_id: str
    contact_id: int | None
    data_key: bytes  # the contact's wrapped key: its history is sealed with it
    previous: dict[str, Any] | None
    previous_updated_at: datetime | None


def upsert_contacts(
    conn: sa.Connection, tenant: str, good_df: pd.DataFrame, now: datetime, *, changes: list[ContactChange] | None = None
) -> dict[str, int]:
    """Insert new contacts and update changed ones, keyed by (tenant, external_id).

    An empty cell never erases a stored value: a CRM export without telegram ids must not wipe
    the chat ids our bot collected. Returns ``{"inserted", "updated", "unchanged", "merged"}``; a contact
    is ``unchanged`` when every non-empty field equals what is stored, and is then not written
    at all (its ``updated_at`` stays put). Personal data is sealed (``contact_pii``): stored
    contacts are opened, merged with the file here, and sealed again under their own key. When the
    caller passes ``changes``, every contact written is appended to it with what it was before (the
    history an import rollback restores).

    A row whose external_id names a merged contact (a tombstone, ``contacts.merged_into`` set) is
    not written and is counted in ``merged``: the tombstone must stay as the merge left it for its
    undo, and the person's data now lives on the survivor, under the survivor's external_id.
    """
    now = aware_utc(now)
    fields = [field for field in CONTACT_FIELDS if field in good_df.columns]
    records = _records(good_df, ("external_id", *fields))
    counts = {"inserted": 0, "updated": 0, "unchanged": 0, "merged": 0}
    cipher = tenant_cipher(conn, tenant)
    insert = upsert_insert(conn, contacts)
    written = ("data_key", "pii", *SEALED_COLUMNS, *PLAIN_FIELDS, "updated_at")
    upsert = insert.on_conflict_do_update(
        index_elements=[contacts.c.tenant, contacts.c.external_id], set_={column: insert.excluded[column] for column in written}
    )
    stored_columns = [
        contacts.c.id, contacts.c.external_id, contacts.c.updated_at, contacts.c.data_key, contacts.c.pii, contacts.c.merged_into,
        *(contacts.c[field] for field in PLAIN_FIELDS),
    ]
    analysed = False
    for batch in _batches(records):
        stored = {
            row.external_id: {
                **cipher.open(row.data_key, row.pii), **{f: row._mapping[f] for f in PLAIN_FIELDS},
                "data_key": row.data_key, "id": row.id, "updated_at": row.updated_at, "merged_into": row.merged_into,
            }
            for row in conn.execute(
                sa.select(*stored_columns).where(
                    contacts.c.tenant == tenant, contacts.c.external_id.in_([r["external_id"] for r in batch])
                )
            )
        }
        writes, batch_changes = [], []
        for record in batch:
            old = stored.get(record["external_id"])
            if old is not None and old["merged_into"] is not None:
                counts["merged"] += 1
                continue
            if record.get("custom_fields") is not None:
                record["custom_fields"] = merged_custom_fields(old and old.get("custom_fields"), record["custom_fields"])
            if old is None:
                counts["inserted"] += 1
                old = {"data_key": cipher.new_contact_key()}
                batch_changes.append(ContactChange(record["external_id"], None, old["data_key"], None, None))
            elif changed := {f: old.get(f) for f in fields if record[f] is not None and record[f] != old.get(f)}:
                counts["updated"] += 1
                old["data_key"] = old["data_key"] or cipher.new_contact_key()  # an erased contact's key is gone for good
                batch_changes.append(ContactChange(record["external_id"], old["id"], old["data_key"], changed, old["updated_at"]))
            else:
                counts["unchanged"] += 1
                continue
            merged = {f: old.get(f) if record.get(f) is None else record[f] for f in (*PII_FIELDS, *PLAIN_FIELDS)}
            key = old["data_key"]
            sealed = contact_columns(cipher, key, merged)
            plain = {f: merged[f] for f in PLAIN_FIELDS}
            writes.append({"tenant": tenant, "external_id": record["external_id"], "data_key": key, **sealed, **plain, "created_at": now, "updated_at": now})
        if writes:
            conn.execute(upsert, writes)
            if not analysed and len(records) > len(batch):
                _refresh_statistics(conn, contacts)
                analysed = True
        if changes is not None and batch_changes:
            created = _contact_ids(conn, tenant, (c.external_id for c in batch_changes if c.contact_id is None))
            changes.extend(c if c.contact_id is not None else c._replace(contact_id=created[c.external_id]) for c in batch_changes)
    return counts


def merged_custom_fields(stored: str | None, imported: str) -> str:
    """The stored custom fields with the file's on top: like any other field, a value the file
    leaves blank (absent from its object) keeps what is stored."""
    merged = {**(json.loads(stored) if stored else {}), **json.loads(imported)}
    return json.dumps(merged, ensure_ascii=False, sort_keys=True, separators=(",", ":"))


def _contact_ids(conn: sa.Connection, tenant: str, external_ids: Iterable[str]) -> dict[str, int]:
    """The live contact each external_id stands for: a merged contact's decisions are the person's,
    so they go to the survivor (followed through later merges), never to the tombstone."""
    wanted = set(external_ids)
    if not wanted:
        return {}
    query = sa.select(contacts.c.external_id, contacts.c.id, contacts.c.merged_into).where(contacts.c.tenant == tenant, contacts.c.external_id.in_(wanted))
    rows = conn.execute(query).all()
    missing = wanted - {row.external_id for row in rows}
    if missing:
        raise ValueError(f"{len(missing)} contacts are not in the store (run upsert_contacts first): {sorted(missing)[:5]}")
    found = {row.external_id: row.merged_into or row.id for row in rows}
    while later := dict(conn.execute(sa.select(contacts.c.id, contacts.c.merged_into).where(contacts.c.id.in_(set(found.values())), contacts.c.merged_into.is_not(None))).all()):
        found = {external_id: later.get(contact_id, contact_id) for external_id, contact_id in found.items()}
    return found


# Which consent each decision column records: (purpose, channel).
DECISION_COLUMNS: dict[str, tuple[Purpose, str]] = {
    **{f"consent_{channel}": (Purpose.ADVERTISING, channel) for channel in CHANNELS},
    "consent_processing": (Purpose.PROCESSING, ANY_CHANNEL),
    **{f"consent_{channel}_transactional": (Purpose.TRANSACTIONAL, channel) for channel in CHANNELS},
}


def import_ref(import_id: int | None, file: str | None, row: int) -> str:
    """The ``source_ref`` of a decision read from an import's row, e.g. ``import 42:crm.csv:row 7``.

    The import id leads, so a rollback finds the events its import appended
    (``imports.history.import_consent_events``); what follows names the row, the same in every
    import of the file, so re-importing it appends nothing (``_imported_facts``).
    """
    return f"{import_ref_prefix(import_id, file)}{row}"


def import_ref_prefix(import_id: int | None, file: str | None) -> str:
    """``import_ref`` without the row number (the same for every row of an import)."""
    where = f"{file}:row " if file else "row "
    return where if import_id is None else f"import {import_id}:{where}"


def _row_ref(source_ref: str) -> str:
    """What ``import_ref`` says of the row, without the import id."""
    return _IMPORT_PREFIX.sub("", source_ref, count=1)


_IMPORT_PREFIX = re.compile(r"^import \d+:")


def record_consents(
    conn: sa.Connection, tenant: str, good_df: pd.DataFrame, now: datetime, *, file: str | None = None,
    webhook_events: list[WebhookEvent] | None = None, texts: ConsentTextsFile | None = None, import_id: int | None = None,
) -> dict[str, int]:
    """Append every consent decision of the import to the consent ledger.

    Each non-empty decision column (``DECISION_COLUMNS``: True = grant, False = withdraw) of a row
    becomes one ``ConsentFact``: source ``import`` with the import, file and row as its reference
    (``import_ref``), the row's ``consent_source`` as its origin, dated ``consent_at``, citing the text the row names
    (``consent_text_version``, which must be one of the tenant's texts) or else the tenant's current
    text for the purpose in the contact's language (``texts``, default ``consent_texts.yaml``).
    Dating follows ``orchestrator_assets.consent_decisions``: a grant beyond the allowed clock skew
    is refused (``ValueError`` naming the row; validation reports such rows first), such a
    withdrawal is dated ``now``. A fact already on record is not appended again, nor one an earlier
    import of the same file row appended.

    A decision without ``consent_at`` is dated ``now``; since that date differs on every run, it
    is recorded only when the subject's latest decision differs (otherwise re-importing the file
    would log it again).

    Returns ``{"granted", "withdrawn", "unchanged"}``: newly appended grant and withdraw events,
    and decisions that were already on record. Contacts must exist (``upsert_contacts`` first); a
    row of a merged contact records its decisions on the survivor (``_contact_ids``).
    Each decision that changed the current state is announced in ``webhook_events`` (consent.granted /
    consent.withdrawn) when the caller passes it. ``import_id`` (the ``contact_imports`` row of the
    commit) goes into every appended event's ``source_ref``, so a rollback finds what the import appended.
    """
    now = aware_utc(now)
    texts = texts if texts is not None else load_consent_texts()
    columns = [column for column in DECISION_COLUMNS if column in good_df.columns]
    extra = [column for column in ("language", "consent_text_version") if column in good_df.columns]
    records = _records(good_df, ("row", "external_id", *columns, *extra, "consent_source", "consent_at"))
    counts = {"granted": 0, "withdrawn": 0, "unchanged": 0}
    analysed = False
    for batch in _batches(records):
        decisions = [(record, column, record[column]) for record in batch for column in columns if record[column] is not None]
        if not decisions:
            continue
        ids = _contact_ids(conn, tenant, (record["external_id"] for record, _, _ in decisions))
        state = consent_state(now)
        latest = {
            (row.contact_id, row.channel, row.purpose): row.action
            for row in conn.execute(sa.select(state.c.contact_id, state.c.channel, state.c.purpose, state.c.action).where(state.c.tenant == tenant, state.c.contact_id.in_(list(ids.values()))))
        }
        imported = _imported_facts(conn, tenant, ids.values())
        facts = []
        for record, column, granted in decisions:
            purpose, channel = DECISION_COLUMNS[column]
            contact_id, action = ids[record["external_id"]], GRANT if granted else WITHDRAW
            occurred_at = record["consent_at"]
            if occurred_at is None:
                if latest.get((contact_id, channel, str(purpose))) == action:
                    counts["unchanged"] += 1
                    continue
                occurred_at = now
            if not record["consent_source"]:
                raise ValueError(f"row {record['row']}: a consent decision needs a consent_source")
            try:
                occurred_at = fact_time(action, aware_utc(occurred_at), now)
            except FutureDatedGrant as exc:  # validation reports these rows; a frame built elsewhere may not
                raise ValueError(f"row {record['row']}: consent_at: {exc}") from exc
            fact = ConsentFact(
                contact_id, channel, purpose, action, SourceKind.IMPORT, import_ref(import_id, file, record["row"]),
                occurred_at, origin=record["consent_source"], text_version=decision_text_version(texts, tenant, purpose, record),
            )  # fmt: skip
            if _fact_key(fact) in imported:
                counts["unchanged"] += 1
                continue
            facts.append(fact)
        appended, _ = record_decisions(conn, tenant, facts, now, webhook_events)
        counts["unchanged"] += appended.count(False)
        for fact, new in zip(facts, appended, strict=True):
            if new:
                counts["granted" if fact.action == GRANT else "withdrawn"] += 1
        if not analysed and any(appended) and len(records) > len(batch):
            _refresh_statistics(conn, consent_events)
            analysed = True
    return counts


def _refresh_statistics(conn: sa.Connection, table: sa.Table) -> None:
    """Refresh PostgreSQL's statistics of ``table`` once an import has written its first batch.

    Each batch reads the stored rows of its own contacts (``contacts`` by external id; in
    ``consent_events`` chain heads, facts on record, state before and after), which should cost the
    size of the batch through the indexes. Before a table's first ANALYZE (a new store, or a tenant's
    first import) and for rows this very transaction wrote (autovacuum cannot see them), the planner
    knows nothing of them and filters all of the tenant's rows per batch instead: a 20,000-row import
    took 4× the time of a 10,000-row one. ANALYZE inside the transaction counts the rows it wrote,
    and the per-contact statistics it leaves scale with the table, so once per import is enough.
    """
    if conn.dialect.name == "postgresql":
        conn.execute(sa.text(f"ANALYZE {table.name}"))


def _fact_key(fact: ConsentFact | sa.Row) -> tuple:
    return (fact.contact_id, fact.channel, str(fact.purpose), fact.action, utc(fact.occurred_at), _row_ref(fact.source_ref))


def _imported_facts(conn: sa.Connection, tenant: str, contact_ids: Iterable[int]) -> set[tuple]:
    """The decisions imports already appended for the contacts, each as ``_fact_key`` names it:
    the same decision from the same file row is on record whichever import appended it."""
    e = consent_events.c
    query = sa.select(e.contact_id, e.channel, e.purpose, e.action, e.occurred_at, e.source_ref).where(
        e.tenant == tenant, e.contact_id.in_(sorted(set(contact_ids))), e.source_kind == str(SourceKind.IMPORT)
    )
    return {_fact_key(row) for row in conn.execute(query)}


def decision_text_version(texts: ConsentTextsFile, tenant: str, purpose: Purpose, record: dict[str, Any]) -> str | None:
    """The consent text version a row's decision rests on: the one it names, else the current one."""
    named = record.get("consent_text_version")
    if named is None:
        return texts.current(tenant, purpose, record.get("language"))
    if texts.text(tenant, named) is None:
        raise ValueError(f"row {record['row']}: consent_text_version {named!r} is not one of tenant {tenant!r}'s consent texts (consent_texts.yaml)")
    return named
