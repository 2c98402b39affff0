"""Write validated contacts and their consent decisions to the operational store.

Both functions take the ``good`` frame of ``validation.validate_contact_rows`` and a connection
inside the caller's transaction (``with engine.begin() as conn``), so a failed import leaves no
half-written state. They run unchanged on SQLite (embedded default) and PostgreSQL (production):
the only dialect-specific piece is the ``INSERT … ON CONFLICT`` construct, chosen by ``resources.sql.upsert_insert``.

Re-importing the same file is a no-op and is reported as such (``unchanged`` counts): contacts
are compared with what is stored before writing, consent events are keyed by their facts and
inserted with ``ON CONFLICT DO NOTHING``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd
import sqlalchemy as sa

from orchestrator_assets.consent_decisions import GRANT, PURPOSE, STATUS, WITHDRAW, FutureDatedGrant, consent_state_upsert, fact_time, state_row
from orchestrator_assets.contact_pii import PII_FIELDS, contact_columns
from orchestrator_assets.imports.validation import CHANNELS
from orchestrator_assets.webhooks.events import WebhookEvent, consent_event
from resources.opstore_schema import consent_events, consents, contacts
from resources.pii import tenant_cipher
from resources.sql import upsert_insert

BATCH_SIZE = 500
PLAIN_FIELDS = ("city", "language", "timezone")  # not personal on their own: stored as they are, for segment rules
CONTACT_FIELDS = (*PII_FIELDS, *PLAIN_FIELDS)
SEALED_COLUMNS = ("email_bidx", "phone_bidx", "telegram_bidx", "vk_bidx", "email_domain", "phone_country")


def _utc(moment: datetime | pd.Timestamp) -> datetime:
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


def upsert_contacts(conn: sa.Connection, tenant: str, good_df: pd.DataFrame, now: datetime) -> dict[str, int]:
    """Insert new contacts and update changed ones, keyed by (tenant, external_id).

    An empty cell never erases a stored value: a CRM export without telegram ids must not wipe
    the chat ids our bot collected. Returns ``{"inserted", "updated", "unchanged"}``; a contact
    is ``unchanged`` when every non-empty field equals what is stored, and is then not written
    at all (its ``updated_at`` stays put). Personal data is sealed (``contact_pii``): stored
    contacts are opened, merged with the file here, and sealed again under their own key.
    """
    now = _utc(now)
    fields = [field for field in CONTACT_FIELDS if field in good_df.columns]
    records = _records(good_df, ("external_id", *fields))
    counts = {"inserted": 0, "updated": 0, "unchanged": 0}
    cipher = tenant_cipher(conn, tenant)
    insert = upsert_insert(conn, contacts)
    written = ("data_key", "pii", *SEALED_COLUMNS, *PLAIN_FIELDS, "updated_at")
    upsert = insert.on_conflict_do_update(
        index_elements=[contacts.c.tenant, contacts.c.external_id], set_={column: insert.excluded[column] for column in written}
    )
    stored_columns = [contacts.c.external_id, contacts.c.data_key, contacts.c.pii, *(contacts.c[field] for field in PLAIN_FIELDS)]
    for batch in _batches(records):
        stored = {
            row.external_id: {**cipher.open(row.data_key, row.pii), **{f: row._mapping[f] for f in PLAIN_FIELDS}, "data_key": row.data_key}
            for row in conn.execute(
                sa.select(*stored_columns).where(
                    contacts.c.tenant == tenant, contacts.c.external_id.in_([r["external_id"] for r in batch])
                )
            )
        }
        writes = []
        for record in batch:
            old = stored.get(record["external_id"])
            if old is None:
                counts["inserted"] += 1
                old = {"data_key": cipher.new_contact_key()}
            elif any(record[f] is not None and record[f] != old.get(f) for f in fields):
                counts["updated"] += 1
            else:
                counts["unchanged"] += 1
                continue
            merged = {f: old.get(f) if record.get(f) is None else record[f] for f in (*PII_FIELDS, *PLAIN_FIELDS)}
            sealed = contact_columns(cipher, old["data_key"], merged)
            plain = {f: merged[f] for f in PLAIN_FIELDS}
            writes.append(
                {"tenant": tenant, "external_id": record["external_id"], "data_key": old["data_key"], **sealed, **plain, "created_at": now, "updated_at": now}
            )
        if writes:
            conn.execute(upsert, writes)
    return counts


def _contact_ids(conn: sa.Connection, tenant: str, external_ids: Iterable[str]) -> dict[str, int]:
    wanted = set(external_ids)
    found = {
        row.external_id: row.id
        for row in conn.execute(
            sa.select(contacts.c.external_id, contacts.c.id).where(
                contacts.c.tenant == tenant, contacts.c.external_id.in_(wanted)
            )
        )
    }
    missing = wanted - found.keys()
    if missing:
        raise ValueError(f"{len(missing)} contacts are not in the store (run upsert_contacts first): {sorted(missing)[:5]}")
    return found


def record_consents(
    conn: sa.Connection, tenant: str, good_df: pd.DataFrame, now: datetime, *, file: str | None = None,
    webhook_events: list[WebhookEvent] | None = None,
) -> dict[str, int]:
    """Log every consent decision of the import and advance the current consent state.

    For each contact × channel with a decision (``consent_<channel>`` True/False; None = no
    decision) a ``consent_events`` row is appended (action grant|withdraw, source =
    ``consent_source``, evidence = import file and row, occurred_at = ``consent_at``) unless that
    exact fact is already logged. Newly logged facts then move ``consents`` by the rule of
    ``orchestrator_assets.consent_decisions`` (the one every consent writer follows): dated beyond
    the allowed clock skew, a grant is refused (``ValueError`` naming the row; validation reports
    such rows first) and a withdrawal is dated ``now``; a grant must be newer than the state, a
    withdrawal always ends a grant.

    A decision without ``consent_at`` is dated ``now``; since that date differs on every run, it
    is recorded only when it changes the current status (otherwise re-importing the file would
    log it again).

    Returns ``{"granted", "withdrawn", "unchanged"}``: newly logged grant and withdraw events,
    and decisions that were already on record. Contacts must exist (``upsert_contacts`` first).
    Each decision that changed the current state is announced in ``webhook_events`` (consent.granted /
    consent.withdrawn) when the caller passes it.
    """
    now = _utc(now)
    consent_columns = tuple(f"consent_{channel}" for channel in CHANNELS)
    records = _records(good_df, ("row", "external_id", *consent_columns, "consent_source", "consent_at"))
    counts = {"granted": 0, "withdrawn": 0, "unchanged": 0}
    fact = [consent_events.c[name] for name in ("tenant", "contact_id", "channel", "purpose", "action", "occurred_at", "source")]
    log_event = (
        upsert_insert(conn, consent_events)
        .on_conflict_do_nothing(index_elements=fact)
        .returning(consent_events.c.contact_id, consent_events.c.channel)
    )
    set_state = consent_state_upsert(conn).returning(consents.c.contact_id, consents.c.channel)
    for batch in _batches(records):
        decisions = [
            (record, channel, record[f"consent_{channel}"])
            for record in batch
            for channel in CHANNELS
            if record[f"consent_{channel}"] is not None
        ]
        if not decisions:
            continue
        ids = _contact_ids(conn, tenant, (record["external_id"] for record, _, _ in decisions))
        status_now = {
            (row.contact_id, row.channel): row.status
            for row in conn.execute(
                sa.select(consents.c.contact_id, consents.c.channel, consents.c.status).where(
                    consents.c.tenant == tenant,
                    consents.c.purpose == PURPOSE,
                    consents.c.contact_id.in_(list(ids.values())),
                )
            )
        }
        events = []
        for record, channel, granted in decisions:
            contact_id, action = ids[record["external_id"]], GRANT if granted else WITHDRAW
            occurred_at = record["consent_at"]
            if occurred_at is None:
                if status_now.get((contact_id, channel)) == STATUS[action]:
                    counts["unchanged"] += 1
                    continue
                occurred_at = now
            if not record["consent_source"]:
                raise ValueError(f"row {record['row']}: a consent decision needs a consent_source")
            try:
                occurred_at = fact_time(action, _utc(occurred_at), now)
            except FutureDatedGrant as exc:  # validation reports these rows; a frame built elsewhere may not
                raise ValueError(f"row {record['row']}: consent_at: {exc}") from exc
            evidence = {"file": file, "row": record["row"]} if file else {"row": record["row"]}
            events.append(
                {
                    "tenant": tenant,
                    "contact_id": contact_id,
                    "channel": channel,
                    "purpose": PURPOSE,
                    "action": action,
                    "source": record["consent_source"],
                    "evidence": json.dumps(evidence, ensure_ascii=False, separators=(",", ":")),
                    "occurred_at": occurred_at,
                    "recorded_at": now,
                }
            )
        if not events:
            continue
        logged = {(row.contact_id, row.channel) for row in conn.execute(log_event, events)}
        new_events = [event for event in events if (event["contact_id"], event["channel"]) in logged]
        counts["unchanged"] += len(events) - len(new_events)
        for event in new_events:
            counts["granted" if event["action"] == GRANT else "withdrawn"] += 1
        if new_events:
            applied = conn.execute(set_state, [state_row(event) for event in new_events])
            changed = {(row.contact_id, row.channel) for row in applied}
            for event in new_events:
                if webhook_events is not None and (event["contact_id"], event["channel"]) in changed:
                    webhook_events.append(
                        consent_event(event["action"], tenant, event["contact_id"], event["channel"], PURPOSE, event["source"], event["occurred_at"])
                    )
    return counts
