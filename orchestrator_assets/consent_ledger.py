"""The consent ledger: the only writer of ``consent_events`` and the only reader of consent state.

Every consent decision (an import row, a /start, an unsubscribe, a complaint, a dead number) is
appended here as a ``ConsentFact`` with typed evidence, chained to the contact's previous event
(``policies.consent_chain``). Nothing is ever updated in place; the current state is a query over
the events (``consent_state``), which the send path asks and nothing else.

**Concurrency.** ``append`` locks the contacts it writes for (``SELECT … FOR UPDATE`` on
PostgreSQL; SQLite lets one writer in at a time) before it reads their chain heads, and the unique
key (tenant, contact, prev_hash) refuses a second successor of one event outright, so two writers
can never fork a chain: the second waits for, or fails against, the first.

**State.** Per (contact, channel, purpose) the latest event wins, ranked by when it took effect:

* an event counts from the moment it names, but never later than when we recorded it, so a
  decision dated in 2099 outranks nothing we learn of afterwards;
* a withdrawal counts from no earlier than every decision recorded before it for that subject: it
  ends whatever we knew of when it arrived, however stale its own date (we cannot tell a stale
  opt-out from a real one, and sending on doubt is what consent law forbids);
* on a tie the withdrawal wins; a grant past its ``valid_until`` is not granted;
* a fact a contact merge appended (source ``merge``, ref ``merge:<id>``) counts while that merge
  stands: once ``contact_merges.undone_at`` is set the state is derived as if the merge's facts had
  never been appended, so an undo restores the survivor's exact earlier state without touching
  the chain (``merges.consent``).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import sqlalchemy as sa

from policies.consent_chain import GENESIS, EventTemplate, event_hash
from policies.consent_purposes import Purpose, SourceKind
from resources.opstore_schema import consent_events, contact_merges, contacts
from resources.pii import TenantCipher, tenant_cipher
from resources.sql import bulk_insert

GRANT, WITHDRAW = "grant", "withdraw"
# The fields of an event that make it the same decision from the same source (the unique key):
# re-processing a callback or re-importing a file appends nothing.
FACT_KEY = ("channel", "purpose", "action", "occurred_at", "source_kind", "source_ref")
MERGE_REF_PREFIX = "merge:"


@dataclass(frozen=True)
class ConsentFact:
    """One consent decision and its evidence, as a writer hands it to ``append``."""

    contact_id: int
    channel: str  # "any" for processing (policies.consent_purposes.subject_channel)
    purpose: Purpose
    action: str  # grant | withdraw
    source_kind: SourceKind
    source_ref: str
    occurred_at: dt.datetime
    origin: str | None = None
    text_version: str | None = None
    valid_until: dt.datetime | None = None
    withdrawal_channel: str | None = None
    identity: dict[str, Any] = field(default_factory=dict)  # ip, user_agent, chat_id, phone: sealed
    detail: str | None = None


def utc(moment: dt.datetime | None) -> dt.datetime | None:
    """Aware UTC; a naive time is UTC already (SQLite hands stored times back without the offset)."""
    if moment is None:
        return None
    return moment.replace(tzinfo=dt.UTC) if moment.tzinfo is None else moment.astimezone(dt.UTC)


def seal_identity(cipher: TenantCipher | None, wrapped_contact_key: bytes | None, identity: dict[str, Any]) -> bytes | None:
    """The identifying evidence as stored: sealed with the contact's key, so erasing the contact
    (shredding the key) makes it unreadable while the chain, which hashes the sealed bytes, still
    verifies. A contact already erased keeps none."""
    if not identity or cipher is None or wrapped_contact_key is None:
        return None
    return cipher.seal(wrapped_contact_key, identity)


def open_identity(cipher: TenantCipher, wrapped_contact_key: bytes | None, sealed: bytes | None) -> dict[str, Any]:
    """What ``seal_identity`` sealed; {} when there is none or the contact's key was shredded."""
    return cipher.open(wrapped_contact_key, sealed)


def _key(values: dict[str, Any]) -> tuple:
    return (values["contact_id"], *(utc(values[n]) if n == "occurred_at" else str(values[n]) for n in FACT_KEY))


def _lock_contacts(conn: sa.Connection, tenant: str, ids: list[int]) -> dict[int, bytes | None]:
    """Hold the contacts' chains for this transaction before their heads are read; returns the
    wrapped key of each contact found (None once erased).

    PostgreSQL: ``SELECT … FOR UPDATE`` in id order (no deadlock between two writers). SQLite reads
    outside a transaction until the first write, so a no-op ``UPDATE`` takes the database's one
    write lock first (a second writer waits out the busy timeout).
    """
    where = sa.and_(contacts.c.tenant == tenant, contacts.c.id.in_(ids))
    if conn.dialect.name == "sqlite":
        conn.execute(sa.update(contacts).where(where).values(id=contacts.c.id))
    return {row.id: row.data_key for row in conn.execute(sa.select(contacts.c.id, contacts.c.data_key).where(where).order_by(contacts.c.id).with_for_update())}


def append(conn: sa.Connection, tenant: str, facts: Sequence[ConsentFact], now: dt.datetime) -> list[bool]:
    """Append ``facts`` to their contacts' chains in the caller's transaction; for each fact, True
    when it was appended and False when that very fact (``FACT_KEY``) is already on record."""
    if not facts:
        return []
    ids = sorted({fact.contact_id for fact in facts})
    keys = _lock_contacts(conn, tenant, ids)
    if missing := set(ids) - keys.keys():
        raise ValueError(f"consent facts for contacts the tenant {tenant!r} does not have: {sorted(missing)[:5]}")
    cipher = tenant_cipher(conn, tenant) if any(fact.identity for fact in facts) else None
    heads: dict[int, str] = {}
    on_record: set[tuple] = set()
    stored = sa.select(consent_events).where(consent_events.c.tenant == tenant, consent_events.c.contact_id.in_(ids)).order_by(consent_events.c.id)
    for row in conn.execute(stored).mappings():
        heads[row["contact_id"]] = row["hash"]
        on_record.add(_key(row))
    rows, appended = [], []
    for fact in facts:
        row = {
            "tenant": tenant,
            "contact_id": fact.contact_id,
            "channel": fact.channel,
            "purpose": str(fact.purpose),
            "action": fact.action,
            "source_kind": str(fact.source_kind),
            "source_ref": fact.source_ref,
            "origin": fact.origin,
            "occurred_at": utc(fact.occurred_at),
            "recorded_at": utc(now),
            "text_version": fact.text_version,
            "valid_until": utc(fact.valid_until),
            "withdrawal_channel": fact.withdrawal_channel,
            "evidence_identity": seal_identity(cipher, keys[fact.contact_id], fact.identity),
            "detail": fact.detail,
        }
        if fact.action not in (GRANT, WITHDRAW):
            raise ValueError(f"consent action must be grant or withdraw, not {fact.action!r}")
        key = _key(row)
        if key in on_record:
            appended.append(False)
            continue
        on_record.add(key)
        row["prev_hash"] = heads.get(fact.contact_id, GENESIS)
        row["hash"] = heads[fact.contact_id] = event_hash(row["prev_hash"], row)
        rows.append(row)
        appended.append(True)
    if rows:
        conn.execute(sa.insert(consent_events), rows)
    return appended


# What ``first_event_rows`` takes: one row per event, in the order the events happened to each contact.
FIRST_EVENT_COLUMNS = ("contact_id", "channel", "purpose", "action", "source_kind", "source_ref", "origin", "occurred_at", "text_version")
_EVENT_KIND = ("channel", "purpose", "action", "source_kind", "origin", "text_version")  # shared by many events: one template each
_JSON_ESCAPED = r'["\\\x00-\x1f]'  # what json.dumps(…, ensure_ascii=False) escapes in a string
_COPIED = ("tenant", "contact_id", "channel", "purpose", "action", "source_kind", "source_ref", "origin", "occurred_at", "recorded_at", "text_version", "prev_hash", "hash")


def write_first_events(conn: sa.Connection, rows: Iterable[tuple]) -> int:
    """Append the rows ``first_event_rows`` built, in the caller's transaction; returns how many."""
    return bulk_insert(conn, consent_events, _COPIED, rows)


def first_event_rows(tenant: str, events: pd.DataFrame, now: dt.datetime) -> list[tuple]:
    """The first events of contacts that have none yet, as ``consent_events`` rows (``_COPIED``
    columns) for ``write_first_events``: contacts the caller's transaction has just created (a bulk
    import's new contacts), so each chain starts at ``GENESIS`` and no fact can be on record yet.

    ``events`` has the ``FIRST_EVENT_COLUMNS`` (``occurred_at`` aware UTC, ``origin`` and
    ``text_version`` may be missing); a contact's events keep their order. The chain is the one
    ``append`` writes (the verify job cannot tell them apart), but the per-contact work of ``append``
    (locking, reading heads and facts on record) is skipped and the canonical JSON comes from one
    ``EventTemplate`` per kind of event. Building and writing are two steps so that a bulk writer
    hashes the next batch while the store takes this one.
    """
    if events.empty:
        return []
    if not events["action"].isin((GRANT, WITHDRAW)).all():
        raise ValueError(f"consent action must be grant or withdraw, not {sorted(set(events['action']) - {GRANT, WITHDRAW})!r}")
    events = events.sort_values("contact_id", kind="stable")
    occurred = events["occurred_at"].dt.tz_convert("UTC").dt.tz_localize(None).to_numpy("datetime64[us]")
    occurred_json = np.char.add(np.char.add('"', np.datetime_as_string(occurred, unit="us")), 'Z"').tolist()
    refs = events["source_ref"].astype("string")
    plain = ~refs.str.contains(_JSON_ESCAPED, regex=True).to_numpy(dtype=bool)  # JSON is the text in quotes
    refs_json = np.where(plain, '"' + refs + '"', [json.dumps(ref, ensure_ascii=False) if not ok else "" for ref, ok in zip(refs, plain, strict=True)]).tolist()
    return list(_chained_rows(tenant, utc(now), events, occurred_json, occurred.astype(object).tolist(), refs_json))


def _chained_rows(
    tenant: str, recorded: dt.datetime, events: pd.DataFrame, occurred_json: list[str], occurred: list[dt.datetime], refs_json: list[str]
) -> Iterator[tuple]:
    """The rows of ``first_event_rows``, each hashed onto its contact's previous one."""
    sha256, templates = hashlib.sha256, {}
    kinds = zip(*(events[name].to_numpy(dtype=object, na_value=None) for name in _EVENT_KIND), strict=True)
    contact_ids = events["contact_id"].to_numpy(dtype=np.int64).tolist()
    last, prev = None, GENESIS
    for contact_id, kind, ref, ref_json, moment, moment_json in zip(contact_ids, kinds, events["source_ref"].tolist(), refs_json, occurred, occurred_json, strict=True):
        template = templates.get(kind)
        if template is None:
            fixed = {"tenant": tenant, "recorded_at": recorded, **dict(zip(_EVENT_KIND, kind, strict=True))}
            template = templates[kind] = EventTemplate(fixed, ("contact_id", "occurred_at", "source_ref")).json
        if contact_id != last:
            last, prev = contact_id, GENESIS
        digest = sha256((prev + template(str(contact_id), moment_json, ref_json)).encode()).hexdigest()
        channel, purpose, action, source_kind, origin, text_version = kind
        yield (tenant, contact_id, channel, purpose, action, source_kind, ref, origin, moment.replace(tzinfo=dt.UTC), recorded, text_version, prev, digest)
        prev = digest


def merge_ref(merge_id: int) -> str:
    """The ``source_ref`` of the facts merge ``merge_id`` appends; ``consent_state`` keys on it."""
    return f"{MERGE_REF_PREFIX}{merge_id}"


def undone_merge_refs() -> sa.Subquery:
    """(tenant, source_ref, undone_at) of every undone merge: whose facts ``consent_state`` leaves out."""
    m = contact_merges.c
    ref = sa.literal(MERGE_REF_PREFIX, sa.String) + sa.cast(m.id, sa.String)
    return sa.select(m.tenant, ref.label("source_ref"), m.undone_at).where(m.undone_at.is_not(None)).subquery("undone_merges")


def _standing() -> sa.ColumnElement[bool]:
    """The event is not a fact of an undone merge (every other event always stands)."""
    e, undone = consent_events.c, undone_merge_refs().c
    # Uncorrelated, so PostgreSQL hashes the (few) undone refs once instead of probing per event.
    return sa.or_(e.source_kind != str(SourceKind.MERGE), sa.tuple_(e.tenant, e.source_ref).not_in(sa.select(undone.tenant, undone.source_ref)))


def _earlier(a, b):
    """The earlier of two timestamp expressions (SQLite has no ``LEAST``)."""
    return sa.case((a < b, a), else_=b)


def consent_state(now: dt.datetime) -> sa.Subquery:
    """The current consent per (tenant, contact_id, channel, purpose), derived from the events by
    the rule in the module docstring. Columns: tenant, contact_id, channel, purpose, action,
    ``granted`` (bool: a grant still valid at ``now``), event_id, occurred_at, valid_until."""
    e = consent_events.c
    subject = (e.tenant, e.contact_id, e.channel, e.purpose)
    effective = _earlier(e.occurred_at, e.recorded_at)
    running = sa.func.max(effective).over(partition_by=subject, order_by=e.id, rows=(None, 0))
    ranked = (
        sa.select(*subject, e.id, e.action, e.occurred_at, e.valid_until, sa.case((e.action == WITHDRAW, running), else_=effective).label("rank_at"))
        .where(_standing())
        .subquery()
    )
    r = ranked.c
    latest = sa.func.row_number().over(
        partition_by=(r.tenant, r.contact_id, r.channel, r.purpose),
        order_by=(r.rank_at.desc(), sa.case((r.action == WITHDRAW, 1), else_=0).desc(), r.id.desc()),
    )
    numbered = sa.select(r.tenant, r.contact_id, r.channel, r.purpose, r.id.label("event_id"), r.action, r.occurred_at, r.valid_until, latest.label("n")).subquery()
    s = numbered.c
    granted = sa.and_(s.action == GRANT, sa.or_(s.valid_until.is_(None), s.valid_until > sa.literal(utc(now), consent_events.c.valid_until.type)))
    return (
        sa.select(s.tenant, s.contact_id, s.channel, s.purpose, s.action, s.event_id, s.occurred_at, s.valid_until, granted.label("granted"))
        .where(s.n == 1)
        .subquery("consent_state")
    )


def granted_subjects(conn: sa.Connection, tenant: str, contact_ids: Iterable[int], now: dt.datetime) -> set[tuple[int, str, str]]:
    """(contact_id, channel, purpose) of every consent the contacts hold at ``now``."""
    state = consent_state(now)
    wanted = sorted(set(contact_ids))
    query = sa.select(state.c.contact_id, state.c.channel, state.c.purpose).where(state.c.tenant == tenant, state.c.contact_id.in_(wanted), state.c.granted)
    return {(row.contact_id, row.channel, row.purpose) for row in conn.execute(query)}


def has_consent(state: sa.Subquery, tenant: str, contact_id, purpose: str, channel: str) -> sa.Exists:
    """EXISTS: ``contact_id`` (a column or value) holds a granted ``purpose`` consent on ``channel``."""
    s = state.c
    return sa.exists().where(s.tenant == tenant, s.contact_id == contact_id, s.channel == channel, s.purpose == purpose, s.granted)
