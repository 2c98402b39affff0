"""Merging one contact into another, and undoing it exactly.

A merge runs in the caller's transaction (one per merge) and records every row it changes in
``contact_merge_moves``, so its undo puts back what it moved and nothing else:

- **contacts**: the survivor's empty fields are filled from the merged contact (``people``); the
  merged contact becomes a tombstone (``merged_into``), never deleted, so warehouse events and
  rows left with it still add up.
- **sends** (and their deliveries, keyed by send id): re-pointed to the survivor, so the ledger
  key stops the merged person from getting a campaign step twice. A send whose ledger key the
  survivor already holds (both got the same step) stays with the tombstone: both sends happened,
  neither row may be lost, and the key allows one per contact.
- **trigger events**: re-pointed. **Segment membership**: re-pointed, or dropped where the
  survivor is already a member. **Phone reachability**: re-pointed unless the survivor has its own.
- **consent**: the stricter state wins, by facts appended to the survivor's ledger chain
  (``merges.consent``); the undo voids them by setting ``undone_at``, which the ledger's derived
  state honours, so no event is ever edited.

The undo walks the moves backwards. A row changed since the merge (a segment rebuilt, a field
overwritten) is left as it is and counted in ``not_restored``. A survivor merged again later must
be unmerged first (undo in reverse order), since its rows have moved on.
"""

from __future__ import annotations

import datetime as dt
import json
from collections import Counter
from dataclasses import dataclass, field

import sqlalchemy as sa

from orchestrator_assets.merges import consent, people
from resources.audit import record_audit
from resources.pii import TenantCipher, tenant_cipher
from resources.sql import upsert_insert
from resources.opstore_schema import contact_merge_moves, contact_merges, contacts, phone_reachability, segment_members, sends, trigger_events

MOVED, KEPT, DELETED, FILLED, APPENDED, TOMBSTONE = "moved", "kept", "deleted", "filled", "appended", "tombstone"
LEDGER_KEY = ("campaign", "step", "channel")


class MergeError(ValueError):
    """The merge (or its undo) cannot be made as asked; nothing was changed."""


@dataclass
class MergeOutcome:
    merge_id: int
    survivor_id: int
    merged_id: int
    counts: Counter = field(default_factory=Counter)  # "<table> <action>" → rows


@dataclass(frozen=True)
class Actor:
    operator: str
    reason: str
    run_id: str


def _live(conn: sa.Connection, tenant: str, contact_id: int) -> sa.RowMapping:
    # Locked till the merge commits: two merges of one contact in parallel runs cannot both see it live.
    query = sa.select(contacts.c.merged_into, contacts.c.erased_at).where(contacts.c.tenant == tenant, contacts.c.id == contact_id)
    row = conn.execute(query.with_for_update()).first()
    if row is None:
        raise MergeError(f"contact {contact_id} is not a contact of tenant {tenant!r}")
    if row.erased_at is not None:
        raise MergeError(f"contact {contact_id} was erased: nothing of it is left to merge")
    if row.merged_into is not None:
        raise MergeError(f"contact {contact_id} was merged into contact {row.merged_into} already")
    return row._mapping


class _Moves:
    """Writes one merge's moves and counts them."""

    def __init__(self, conn: sa.Connection, tenant: str, merge_id: int) -> None:
        self.conn, self.tenant, self.merge_id, self.counts = conn, tenant, merge_id, Counter()

    def add(self, table: str, keys: list, action: str, before: dict | None = None) -> None:
        if not keys:
            return
        rows = [
            {"merge_id": self.merge_id, "tenant": self.tenant, "table_name": table, "row_key": str(key), "action": action,
             "before": json.dumps(before, default=str) if before is not None else None}
            for key in keys
        ]
        self.conn.execute(sa.insert(contact_merge_moves), rows)
        self.counts[f"{table} {action}"] += len(rows)


def merge_contacts(
    conn: sa.Connection, tenant: str, survivor_id: int, merged_id: int, actor: Actor, now: dt.datetime, score: int | None = None
) -> MergeOutcome:
    """Merge ``merged_id`` into ``survivor_id`` (both live contacts of ``tenant``), audited."""
    if survivor_id == merged_id:
        raise MergeError(f"contact {survivor_id} cannot be merged into itself")
    _live(conn, tenant, merged_id)
    _live(conn, tenant, survivor_id)
    cipher = tenant_cipher(conn, tenant)
    merge_id = conn.execute(
        sa.insert(contact_merges)
        .values(tenant=tenant, survivor_id=survivor_id, merged_id=merged_id, score=score, operator=actor.operator, reason=actor.reason,
                run_id=actor.run_id, merged_at=now)
        .returning(contact_merges.c.id)
    ).scalar_one()
    moves = _Moves(conn, tenant, merge_id)

    filled = _merge_fields(conn, cipher, survivor_id, merged_id, now, moves)
    _merge_sends(conn, cipher, survivor_id, merged_id, moves)
    events = conn.execute(sa.select(trigger_events.c.id).where(trigger_events.c.tenant == tenant, trigger_events.c.contact_id == merged_id)).scalars().all()
    if events:
        conn.execute(sa.update(trigger_events).where(trigger_events.c.id.in_(events)).values(contact_id=survivor_id))
    moves.add("trigger_events", events, MOVED)
    _merge_segments(conn, tenant, survivor_id, merged_id, moves)
    _merge_reachability(conn, tenant, survivor_id, merged_id, moves)
    for channel, purpose, action in consent.merge_consents(conn, tenant, survivor_id, merged_id, merge_id, now):
        moves.add("consent_events", [f"{channel}/{purpose}"], APPENDED, {"action": action})

    record_audit(conn, tenant=tenant, actor=actor.operator, action="contact.merge", run_id=actor.run_id, now=now, params={
        "merge_id": merge_id, "survivor_id": survivor_id, "merged_id": merged_id, "score": score, "reason": actor.reason,
        "changes": dict(moves.counts), "fields_filled": filled,
    })
    return MergeOutcome(merge_id, survivor_id, merged_id, moves.counts)


def _merge_fields(conn: sa.Connection, cipher: TenantCipher, survivor_id: int, merged_id: int, now: dt.datetime, moves: _Moves) -> list[str]:
    filled, before = people.fill_empty_fields(conn, cipher, survivor_id, merged_id, now)
    if filled:
        moves.add("contacts", [survivor_id], FILLED, {"fields": filled, **before})
    conn.execute(sa.update(contacts).where(contacts.c.id == merged_id).values(merged_into=survivor_id))
    moves.add("contacts", [merged_id], TOMBSTONE)
    return filled


def _merge_sends(conn: sa.Connection, cipher: TenantCipher, survivor_id: int, merged_id: int, moves: _Moves) -> None:
    def ledger(contact_id: int) -> list[sa.Row]:
        return conn.execute(sa.select(sends.c.send_id, *(sends.c[k] for k in LEDGER_KEY)).where(sends.c.tenant == cipher.tenant, sends.c.contact_id == contact_id)).all()

    taken = {tuple(row)[1:] for row in ledger(survivor_id)}
    theirs = ledger(merged_id)
    movable = [row.send_id for row in theirs if tuple(row)[1:] not in taken]
    for send_id, sealed in people.reseal_send_addresses(conn, cipher, movable, merged_id, survivor_id).items():
        moves.add("sends", [send_id], MOVED, {"address": sealed})
    moves.add("sends", [row.send_id for row in theirs if tuple(row)[1:] in taken], KEPT)


def _merge_reachability(conn: sa.Connection, tenant: str, survivor_id: int, merged_id: int, moves: _Moves) -> None:
    checked = set(conn.execute(sa.select(phone_reachability.c.contact_id).where(
        phone_reachability.c.tenant == tenant, phone_reachability.c.contact_id.in_([survivor_id, merged_id]))).scalars())
    if merged_id not in checked:
        return
    if survivor_id in checked:
        moves.add("phone_reachability", [merged_id], KEPT)
        return
    theirs = [phone_reachability.c.tenant == tenant, phone_reachability.c.contact_id == merged_id]
    conn.execute(sa.update(phone_reachability).where(*theirs).values(contact_id=survivor_id))
    moves.add("phone_reachability", [merged_id], MOVED)


def _materialized_at(move) -> dt.datetime:
    return dt.datetime.fromisoformat(json.loads(move.before)["materialized_at"])


def _merge_segments(conn: sa.Connection, tenant: str, survivor_id: int, merged_id: int, moves: _Moves) -> None:
    mine = set(conn.execute(sa.select(segment_members.c.segment).where(segment_members.c.tenant == tenant, segment_members.c.contact_id == survivor_id)).scalars())
    for row in conn.execute(sa.select(segment_members).where(segment_members.c.tenant == tenant, segment_members.c.contact_id == merged_id)).all():
        where = [segment_members.c.tenant == tenant, segment_members.c.segment == row.segment, segment_members.c.contact_id == merged_id]
        if row.segment in mine:
            conn.execute(sa.delete(segment_members).where(*where))
            moves.add("segment_members", [row.segment], DELETED, {"materialized_at": row.materialized_at.isoformat()})
        else:
            conn.execute(sa.update(segment_members).where(*where).values(contact_id=survivor_id))
            moves.add("segment_members", [row.segment], MOVED, {"materialized_at": row.materialized_at.isoformat()})


def unmerge(conn: sa.Connection, tenant: str, merge_id: int, actor: Actor, now: dt.datetime) -> MergeOutcome:
    """Undo merge ``merge_id`` of ``tenant``: every move put back where nothing changed it since, audited."""
    merge = conn.execute(sa.select(contact_merges).where(contact_merges.c.tenant == tenant, contact_merges.c.id == merge_id)).first()
    if merge is None:
        raise MergeError(f"tenant {tenant!r} has no merge {merge_id}")
    if merge.undone_at is not None:
        raise MergeError(f"merge {merge_id} was undone already ({merge.undone_at:%Y-%m-%d %H:%M} by {merge.undone_by})")
    later = conn.execute(sa.select(contacts.c.merged_into).where(contacts.c.id == merge.survivor_id)).scalar()
    if later is not None:
        raise MergeError(f"contact {merge.survivor_id} (the survivor of merge {merge_id}) was merged into {later} since: undo that merge first")
    survivor, merged = merge.survivor_id, merge.merged_id
    outcome = MergeOutcome(merge_id, survivor, merged)
    moves = conn.execute(sa.select(contact_merge_moves).where(contact_merge_moves.c.merge_id == merge_id).order_by(contact_merge_moves.c.id.desc())).all()
    by_kind: dict[tuple[str, str], list] = {}
    for move in moves:
        by_kind.setdefault((move.table_name, move.action), []).append(move)

    def restored(table: str, done: int, of: int) -> None:
        outcome.counts[f"{table} restored"] += done
        outcome.counts["not_restored"] += of - done

    for move in by_kind.get(("sends", MOVED), []):
        restored("sends", people.restore_send(conn, move.row_key, survivor, merged, json.loads(move.before)["address"]), 1)
    if events := [int(m.row_key) for m in by_kind.get(("trigger_events", MOVED), [])]:
        done = conn.execute(sa.update(trigger_events).where(trigger_events.c.id.in_(events), trigger_events.c.contact_id == survivor).values(contact_id=merged)).rowcount
        restored("trigger_events", done, len(events))
    for move in by_kind.get(("segment_members", MOVED), []):
        # A segment rebuilt since the merge has rows of its own time: the survivor's stays.
        where = [segment_members.c.tenant == tenant, segment_members.c.segment == move.row_key, segment_members.c.contact_id == survivor,
                 segment_members.c.materialized_at == _materialized_at(move)]
        restored("segment_members", conn.execute(sa.update(segment_members).where(*where).values(contact_id=merged)).rowcount, 1)
    for move in by_kind.get(("segment_members", DELETED), []):
        row = {"tenant": tenant, "segment": move.row_key, "contact_id": merged, "materialized_at": _materialized_at(move)}
        restored("segment_members", conn.execute(upsert_insert(conn, segment_members).values(row).on_conflict_do_nothing()).rowcount, 1)
    if by_kind.get(("phone_reachability", MOVED)):
        done = conn.execute(sa.update(phone_reachability).where(phone_reachability.c.tenant == tenant, phone_reachability.c.contact_id == survivor)
                            .values(contact_id=merged)).rowcount
        restored("phone_reachability", done, 1)
    # The merge's consent facts stay in the ledger and stop counting once undone_at is set below.
    voided = len(by_kind.get(("consent_events", APPENDED), []))
    restored("consent_events", voided, voided)

    for move in by_kind.get(("contacts", FILLED), []):
        before = json.loads(move.before)
        changed = people.empty_filled_fields(conn, tenant_cipher(conn, tenant), survivor, merged, before["fields"], before)
        restored("contacts", len(before["fields"]) - len(changed), len(before["fields"]))
    conn.execute(sa.update(contacts).where(contacts.c.id == merged).values(merged_into=None))
    conn.execute(sa.update(contact_merges).where(contact_merges.c.id == merge_id).values(undone_at=now, undone_by=actor.operator, undo_run_id=actor.run_id))
    record_audit(conn, tenant=tenant, actor=actor.operator, action="contact.unmerge", run_id=actor.run_id, now=now, params={
        "merge_id": merge_id, "survivor_id": survivor, "merged_id": merged, "reason": actor.reason, "changes": dict(outcome.counts),
    })
    return outcome
