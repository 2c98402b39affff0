"""Contacts an import creates, written in bulk.

Most rows of a first import, and many of any later one, name contacts the store has never seen.
For them the per-batch work of ``store.upsert_contacts`` and ``store.record_consents`` (reading
stored rows, locking consent chains, reading facts on record and state) finds nothing, yet at a
million rows it is most of the commit. Here they are written column by column instead: ids drawn
up front (``resources.sql.next_ids``), so consent events can name their contact before it is
written; personal data sealed in one pass (``contact_pii.new_contact_columns``); first consent
decisions chained from genesis (``consent_decisions.record_first_decisions``); rows streamed by
``resources.sql.bulk_insert`` (``COPY`` on PostgreSQL), ``CHUNK`` contacts at a time so memory
stays flat. The rows are the ones the per-row path writes (``tests/test_new_contacts.py``).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime

import numpy as np
import pandas as pd
import sqlalchemy as sa

from orchestrator_assets.consent_decisions import GRANT, WITHDRAW, FirstDecisions, FutureDatedGrant, first_decisions, record_first_decisions
from orchestrator_assets.contact_pii import new_contact_columns
from orchestrator_assets.imports.history import record_created
from orchestrator_assets.imports.store import DECISION_COLUMNS, PLAIN_FIELDS, merged_custom_fields, decision_text_version, aware_utc, import_ref_prefix
from orchestrator_assets.webhooks.events import WebhookEvent
from policies.consent_purposes import Purpose, SourceKind
from policies.consent_texts import ConsentTextsFile
from resources.opstore_schema import contacts
from resources.pii import tenant_cipher
from resources.sql import batched_in, bulk_insert, next_ids

CHUNK = 20_000
CONTACT_COLUMNS = (
    "id", "tenant", "external_id", "data_key", "pii", "email_bidx", "phone_bidx", "telegram_bidx", "vk_bidx",
    "email_domain", "phone_country", *PLAIN_FIELDS, "created_at", "updated_at",
)  # fmt: skip


def split_new(conn: sa.Connection, tenant: str, rows: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(new, known)``: the rows whose external id no stored contact of the tenant has, and the rest."""
    stored: set[str] = set()
    for among in batched_in(conn, contacts.c.external_id, rows["external_id"].tolist()):
        stored.update(conn.execute(sa.select(contacts.c.external_id).where(contacts.c.tenant == tenant, among)).scalars())
    known = rows["external_id"].isin(stored).to_numpy(dtype=bool)
    return rows[~known], rows[known]


def insert_new_contacts(
    conn: sa.Connection, tenant: str, rows: pd.DataFrame, now: datetime, *, texts: ConsentTextsFile,
    import_id: int | None = None, file: str | None = None, webhook_events: list[WebhookEvent] | None = None,
) -> dict[str, int]:
    """Write ``rows`` (``split_new``'s new ones) as contacts with their consent decisions and, with
    an ``import_id``, the import's history; returns ``{"inserted", "granted", "withdrawn"}``.

    A chunk is sealed and hashed (``_Prepared``) in a worker thread while the one before it is
    written: the store spends its time taking rows, Python its time encrypting and hashing, and
    (the GIL being free while the connection waits on the server) the two overlap.
    """
    now = aware_utc(now)
    cipher = tenant_cipher(conn, tenant)
    ids = next_ids(conn, contacts, len(rows))
    ref_prefix = import_ref_prefix(import_id, file)
    counts = {"inserted": len(rows), "granted": 0, "withdrawn": 0}

    def prepare(start: int) -> _Prepared:
        chunk, chunk_ids = rows.iloc[start : start + CHUNK], ids[start : start + CHUNK]
        columns = new_contact_columns(cipher, chunk)
        columns |= {name: _plain_column(chunk, name) for name in PLAIN_FIELDS}
        columns |= {"id": chunk_ids, "external_id": chunk["external_id"].tolist(), "tenant": [tenant] * len(chunk)}
        columns |= {"created_at": [now] * len(chunk), "updated_at": [now] * len(chunk)}
        facts = _decisions(tenant, chunk, chunk_ids, now, texts, ref_prefix)
        try:
            decisions = first_decisions(tenant, facts, now)
        except FutureDatedGrant as exc:  # validation reports these rows; a frame built elsewhere may not
            raise ValueError(f"row {facts['row'].iloc[exc.position]}: consent_at: {exc}") from exc
        return _Prepared(chunk_ids, list(zip(*(columns[name] for name in CONTACT_COLUMNS), strict=True)), decisions)

    with ThreadPoolExecutor(1, thread_name_prefix="seal-contacts") as worker:
        ahead = worker.submit(prepare, 0) if len(rows) else None
        for start in range(0, len(rows), CHUNK):
            prepared = ahead.result()
            ahead = worker.submit(prepare, start + CHUNK) if start + CHUNK < len(rows) else None
            bulk_insert(conn, contacts, CONTACT_COLUMNS, prepared.contacts)
            if import_id is not None:
                record_created(conn, import_id, prepared.ids)
            record_first_decisions(conn, tenant, prepared.decisions, webhook_events)
            for action, count in prepared.decisions.facts["action"].value_counts().items():
                counts["granted" if action == GRANT else "withdrawn"] += int(count)
    return counts


@dataclass(frozen=True)
class _Prepared:
    """One chunk of new contacts, sealed and with its consent chains hashed, ready to write."""

    ids: list[int]
    contacts: list[tuple]  # CONTACT_COLUMNS
    decisions: FirstDecisions


def _plain_column(chunk: pd.DataFrame, name: str) -> list:
    if name not in chunk:
        return [None] * len(chunk)
    values = chunk[name].to_numpy(dtype=object, na_value=None).tolist()
    if name == "custom_fields":
        return [None if value is None else merged_custom_fields(None, value) for value in values]
    return values


def _decisions(tenant: str, chunk: pd.DataFrame, ids: list[int], now: datetime, texts: ConsentTextsFile, ref_prefix: str) -> pd.DataFrame:
    """One row per non-empty decision cell, in the order ``store.record_consents`` appends them
    (row by row, ``DECISION_COLUMNS`` order), in ``consent_ledger.FIRST_EVENT_COLUMNS`` and ``row``."""
    pieces = []
    for order, column in enumerate(column for column in DECISION_COLUMNS if column in chunk):
        decided = chunk[column].notna().to_numpy(dtype=bool)
        if not decided.any():
            continue
        purpose, channel = DECISION_COLUMNS[column]
        positions = np.flatnonzero(decided)
        granted = chunk[column].to_numpy(dtype=object)[positions].astype(bool)
        pieces.append(pd.DataFrame({"position": positions, "order": order, "channel": channel, "purpose": str(purpose), "action": np.where(granted, GRANT, WITHDRAW)}))
    if not pieces:
        return pd.DataFrame(columns=["row", "contact_id", "channel", "purpose", "action", "source_kind", "source_ref", "origin", "occurred_at", "text_version"])
    facts = pd.concat(pieces, ignore_index=True).sort_values(["position", "order"], kind="stable", ignore_index=True)
    at = facts["position"].to_numpy()

    def taken(name: str) -> pd.Series:
        values = chunk[name] if name in chunk else pd.Series(pd.NA, index=chunk.index, dtype="string")
        return values.iloc[at].reset_index(drop=True)

    facts["row"] = taken("row").to_numpy()
    facts["contact_id"] = np.asarray(ids, dtype=np.int64)[at]
    origin = taken("consent_source")
    if (missing := origin.isna() | (origin == "")).any():
        raise ValueError(f"row {facts['row'][missing.to_numpy(dtype=bool)].iloc[0]}: a consent decision needs a consent_source")
    facts["origin"] = origin.to_numpy(dtype=object, na_value=None)
    facts["source_kind"] = str(SourceKind.IMPORT)
    facts["source_ref"] = ref_prefix + facts["row"].astype(str)
    occurred = taken("consent_at") if "consent_at" in chunk else pd.Series(pd.NaT, index=facts.index, dtype="datetime64[us, UTC]")
    facts["occurred_at"] = pd.to_datetime(occurred, utc=True).fillna(pd.Timestamp(now)).astype("datetime64[us, UTC]")
    facts["text_version"] = _text_versions(tenant, texts, facts, taken("language"), taken("consent_text_version"))
    return facts


def _text_versions(tenant: str, texts: ConsentTextsFile, facts: pd.DataFrame, language: pd.Series, named: pd.Series) -> list:
    """``store.decision_text_version`` of each fact, asked once per distinct (purpose, language, named text)."""
    keys = zip(facts["purpose"], language.to_numpy(dtype=object, na_value=None), named.to_numpy(dtype=object, na_value=None), strict=True)
    versions: dict[tuple, str | None] = {}
    found = []
    for row, key in zip(facts["row"], keys, strict=True):
        if key not in versions:
            purpose, lang, name = key
            versions[key] = decision_text_version(texts, tenant, Purpose(purpose), {"row": row, "language": lang, "consent_text_version": name})
        found.append(versions[key])
    return found
