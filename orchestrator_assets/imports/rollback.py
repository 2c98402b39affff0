"""Roll back one committed contact import, exactly, in the caller's one transaction.

What a rollback undoes:

- **contacts the import created** are removed, with their consent events, segment membership and
  duplicate candidates. A created contact that has since been messaged, triggered a campaign, had
  its phone looked up or taken part in a merge is never removed (that history must stay; the
  erasure job is the tool), so such an import cannot be rolled back.
- **fields the import changed** get their former values back (sealed again under the contact's
  key, blind indexes recomputed), and the contact its former ``updated_at``. A contact erased since
  stays erased: its history was sealed with the key the erasure destroyed.
- **consent events the import appended** (``history.import_consent_events``) are deleted; the
  consent state is derived from the events that remain (``consent_ledger.consent_state``), so it
  is the state before the import. Consent events are append-only proof, and a rollback is the one
  exception: the proof came from the file the operator now says was wrong. They are deleted only
  while they are the newest of the contact's hash chain, so what remains is a whole chain ending
  at its former head and still verifies (``consent_verify``); a contact with events recorded since
  keeps the import's events, even when forced.

A rollback refuses, naming the contacts, when something changed them after the import (a later
import or any other writer: their ``updated_at`` is newer than the import, a consent event was
recorded for them afterwards, or they were merged into another contact), because restoring the import's "before" would silently undo that
later change. ``force`` rolls back anyway: fields the import changed get their former values
over whatever came later, and consent events with later events after them stay on record.
Consent webhooks already sent to the tenant are not recalled.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from itertools import pairwise
from datetime import UTC, datetime

import sqlalchemy as sa

from orchestrator_assets.contact_pii import contact_columns
from orchestrator_assets.imports.history import COMMITTED, CREATED, import_consent_events, mark_rolled_back
from orchestrator_assets.imports.store import PLAIN_FIELDS
from resources.audit import record_audit
from resources.pii import TenantCipher, tenant_cipher
from resources.opstore_schema import (
    consent_events,
    contact_duplicate_candidates,
    contact_import_changes,
    contact_imports,
    contact_merges,
    contacts,
    phone_reachability,
    segment_events,
    segment_members,
    sends,
    trigger_events,
)

# Rows that make a created contact's removal lose history that is not the import's.
# (table, its columns naming a contact)
HISTORY_TABLES = {
    "sends": (sends, ("contact_id",)),
    "trigger_events": (trigger_events, ("contact_id",)),
    "phone_reachability": (phone_reachability, ("contact_id",)),
    "contact_merges": (contact_merges, ("survivor_id", "merged_id")),
}
CHUNK = 500  # ids per IN (...) list: SQLite caps the parameters of one statement


class RollbackRefused(Exception):
    """Nothing was changed; ``problems`` are (contact external id or import, why) pairs."""

    def __init__(self, message: str, problems: list[tuple[str, str]], forceable: bool = False):
        super().__init__(message)
        self.problems = problems
        self.forceable = forceable


def _chunks(ids: Iterable[int]) -> Iterator[list[int]]:
    ids = sorted(set(ids))
    for start in range(0, len(ids), CHUNK):
        yield ids[start : start + CHUNK]


def _rows(conn: sa.Connection, statement: Callable[[list[int]], sa.Executable], ids: Iterable[int]) -> list[sa.Row]:
    """``statement(chunk)`` run for each chunk of ``ids``, the rows of all of them."""
    return [row for chunk in _chunks(ids) for row in conn.execute(statement(chunk))]


def _aware(moment: datetime) -> datetime:
    """SQLite hands stored UTC times back naive."""
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _load(conn: sa.Connection, import_id: int) -> sa.Row:
    row = conn.execute(sa.select(contact_imports).where(contact_imports.c.id == import_id)).first()
    if row is None:
        raise RollbackRefused(f"there is no contact import {import_id}", [(f"import {import_id}", "not found")])
    if row.status != COMMITTED:
        raise RollbackRefused(f"import {import_id} was already rolled back at {row.rolled_back_at}", [(f"import {import_id}", row.status)])
    return row


class _Plan:
    """What the import touched, read before anything is changed, and what stands in the way."""

    def __init__(self, conn: sa.Connection, imported: sa.Row):
        self.tenant, import_id = imported.tenant, imported.id
        self.changes = conn.execute(sa.select(contact_import_changes).where(contact_import_changes.c.import_id == import_id)).all()
        self.events = conn.execute(
            sa.select(consent_events).where(consent_events.c.tenant == self.tenant, import_consent_events(import_id)).order_by(consent_events.c.id)
        ).all()
        touched = {change.contact_id for change in self.changes} | {event.contact_id for event in self.events}
        stored = _rows(conn, lambda ids: sa.select(contacts).where(contacts.c.id.in_(ids)), touched)
        self.stored = {row.id: row for row in stored}
        self.name = {row.id: row.external_id for row in stored}
        self.created = {change.contact_id for change in self.changes if change.action == CREATED and change.contact_id in self.name}
        own_last = {event.contact_id: event.id for event in self.events}
        newest = _rows(
            conn,
            lambda ids: sa.select(consent_events.c.contact_id, sa.func.max(consent_events.c.id)).where(consent_events.c.contact_id.in_(ids)).group_by(consent_events.c.contact_id),
            own_last,
        )
        # The import's events of a contact must be the end of its chain, one linked to the next: then
        # deleting them leaves the chain as it was before the import. Anything else is a later event.
        own_links: dict[int, list[sa.Row]] = defaultdict(list)
        for event in self.events:
            own_links[event.contact_id].append(event)
        unlinked = {c for c, own in own_links.items() if any(b.prev_hash != a.hash for a, b in pairwise(own))}
        self.later_events = unlinked | {contact_id for contact_id, newest_id in newest if newest_id > own_last[contact_id]}
        self.later_imports: dict[int, list[int]] = defaultdict(list)

        def later(ids: list[int]) -> sa.Select:
            return (
                sa.select(contact_import_changes.c.contact_id, contact_import_changes.c.import_id)
                .join(contact_imports, contact_imports.c.id == contact_import_changes.c.import_id)
                .where(contact_import_changes.c.contact_id.in_(ids), contact_import_changes.c.import_id > import_id, contact_imports.c.status == COMMITTED)
                .order_by(contact_import_changes.c.import_id)
            )

        for contact_id, later_id in _rows(conn, later, self.name):
            self.later_imports[contact_id].append(later_id)
        committed_at = _aware(imported.committed_at)
        written = {change.contact_id for change in self.changes}
        changed = {row.id for row in stored if row.id in written and _aware(row.updated_at) > committed_at}
        self.merged = {row.id for row in stored if row.id in written and row.merged_into is not None}
        self.changed_since = changed | set(self.later_imports) | self.merged
        self.history = sorted(
            (self.name[contact_id], f"created by this import and in {table_name} since: erase it instead")
            for table_name, (table, columns) in HISTORY_TABLES.items()
            for column in columns
            for (contact_id,) in _rows(conn, lambda ids, c=table.c[column]: sa.select(c).where(c.in_(ids)).distinct(), self.created)
        )

    def conflicts(self) -> list[tuple[str, str]]:
        """(external id, why) of each contact something changed after the import."""
        conflicts = []
        for contact_id in sorted(self.changed_since | self.later_events, key=lambda c: self.name[c]):
            why = []
            if contact_id in self.changed_since:
                by = self.later_imports.get(contact_id)
                if by:
                    why.append(f"changed since by import {', '.join(map(str, by))}")
                if contact_id in self.merged:
                    why.append("merged into another contact since")
                if not by and contact_id not in self.merged:
                    why.append("changed since by another writer")
            if contact_id in self.later_events:
                why.append("consent events recorded since")
            conflicts.append((self.name[contact_id], "; ".join(why)))
        return conflicts


def rollback_import(
    conn: sa.Connection, import_id: int, *, operator: str, reason: str, force: bool, now: datetime, run_id: str | None = None
) -> dict[str, int]:
    """Undo import ``import_id``; returns counts. Raises ``RollbackRefused`` (nothing changed)."""
    plan = _Plan(conn, _load(conn, import_id))
    if plan.history:
        contacts_with_history = len({contact for contact, _ in plan.history})
        raise RollbackRefused(f"import {import_id} cannot be rolled back: {contacts_with_history} contact(s) it created have a history", plan.history)
    conflicts = plan.conflicts()
    if conflicts and not force:
        raise RollbackRefused(
            f"import {import_id}: {len(conflicts)} contact(s) changed since the import; force to roll back anyway", conflicts, forceable=True
        )

    # Created contacts go whole, with their consent chains and their rows in derived tables.
    for chunk in _chunks(plan.created):
        for table in (segment_members, segment_events, consent_events):
            conn.execute(sa.delete(table).where(table.c.contact_id.in_(chunk)))
        candidates = contact_duplicate_candidates.c
        conn.execute(sa.delete(contact_duplicate_candidates).where(sa.or_(candidates.contact_id.in_(chunk), candidates.other_id.in_(chunk))))
        conn.execute(sa.delete(contacts).where(contacts.c.id.in_(chunk)))

    cipher = tenant_cipher(conn, plan.tenant)
    restored = [
        change
        for change in plan.changes
        if change.action != CREATED
        and change.contact_id in plan.stored
        and _restore(conn, cipher, plan.stored[change.contact_id], change, now if change.contact_id in plan.changed_since else change.previous_updated_at)
    ]

    removable = [e for e in plan.events if e.contact_id not in plan.created and e.contact_id not in plan.later_events]
    for chunk in _chunks(e.id for e in removable):
        conn.execute(sa.delete(consent_events).where(consent_events.c.id.in_(chunk)))

    mark_rolled_back(conn, import_id, now)
    counts = {
        "contacts_removed": len(plan.created),
        "contacts_restored": len(restored),
        "consent_events_removed": len(removable) + sum(e.contact_id in plan.created for e in plan.events),
        "consent_events_kept": sum(e.contact_id in plan.later_events and e.contact_id not in plan.created for e in plan.events),
        "conflicts_overridden": len(conflicts),
    }
    record_audit(
        conn, tenant=plan.tenant, actor=operator, action="import.rollback", run_id=run_id, now=now,
        params={"import_id": import_id, "reason": reason, "force": force, "overridden": [c for c, _ in conflicts], **counts},
    )
    return counts


def _restore(conn: sa.Connection, cipher: TenantCipher, contact: sa.Row, change: sa.Row, updated_at: datetime) -> bool:
    """Put the fields ``change`` recorded back on ``contact``, sealed again; False when the contact
    has been erased since (its key, and with it the history, is gone)."""
    previous = cipher.open(contact.data_key, change.previous)
    if not previous:
        return False
    fields = {**cipher.open(contact.data_key, contact.pii), **{f: contact._mapping[f] for f in PLAIN_FIELDS}, **previous}
    columns = {**contact_columns(cipher, contact.data_key, fields), **{f: fields.get(f) for f in PLAIN_FIELDS}}
    conn.execute(sa.update(contacts).where(contacts.c.id == contact.id).values(**columns, updated_at=updated_at))
    return True

