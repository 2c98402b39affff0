"""Replacing a segment's members by a new evaluation, recording who entered and who left.

The new members go into a temporary table first (one ``INSERT … SELECT`` of the compiled rule);
set differences against ``segment_members`` then give the entered and left contacts, recorded in
``segment_events`` (what ``segment_entered`` triggers read), and only the difference is written
to ``segment_members``: a member who stays keeps the ``materialized_at`` of the materialisation
that brought them in. Everything runs on the caller's connection, in its transaction.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import sqlalchemy as sa

from orchestrator_assets.segment_behaviour import drop_id_tables, id_table
from resources.opstore_schema import segment_events, segment_members as members

ENTERED = "entered"
LEFT = "left"


def refresh_planner_statistics(conn: sa.Connection) -> None:
    """Sampled SQLite statistics of ``contacts`` (``ANALYZE`` reading at most 1000 rows per index:
    milliseconds). Without any, SQLite guesses that ``tenant = ?`` is selective and scans the
    tenant's whole index instead of looking up the few ids a behaviour clause returned (measured:
    5x slower at 300k contacts). PostgreSQL's autovacuum keeps its own statistics."""
    if conn.dialect.name == "sqlite":
        conn.exec_driver_sql("PRAGMA analysis_limit=1000")
        conn.exec_driver_sql("ANALYZE contacts")


@dataclass(frozen=True)
class MembershipChange:
    members: int
    entered: int
    left: int


def refresh_members(conn: sa.Connection, tenant: str, segment: str, ids: sa.Select, now: dt.datetime) -> MembershipChange:
    """Make ``segment``'s members the contacts ``ids`` selects; record and count the change."""
    new = id_table(conn, "segment_new_members", [])
    conn.execute(sa.insert(new).from_select(["contact_id"], ids))
    old = sa.select(members.c.contact_id).where(members.c.tenant == tenant, members.c.segment == segment)
    new_ids = sa.select(new.c.contact_id)
    tag = (sa.literal(tenant), sa.literal(segment))
    stamp = sa.literal(now, type_=segment_events.c.occurred_at.type)
    columns = ["tenant", "segment", "contact_id", "change", "occurred_at"]
    entering = sa.select(*tag, new.c.contact_id, sa.literal(ENTERED), stamp).where(new.c.contact_id.not_in(old))
    leaving = sa.select(*tag, members.c.contact_id, sa.literal(LEFT), stamp).where(
        members.c.tenant == tenant, members.c.segment == segment, members.c.contact_id.not_in(new_ids)
    )
    counted = {"preserve_rowcount": True}  # SQLAlchemy keeps an INSERT's rowcount only when asked
    entered = conn.execute(sa.insert(segment_events).from_select(columns, entering), execution_options=counted).rowcount
    left = conn.execute(sa.insert(segment_events).from_select(columns, leaving), execution_options=counted).rowcount
    if left:
        conn.execute(sa.delete(members).where(members.c.tenant == tenant, members.c.segment == segment, members.c.contact_id.not_in(new_ids)))
    if entered:
        joining = sa.select(*tag, new.c.contact_id, sa.literal(now, type_=members.c.materialized_at.type)).where(new.c.contact_id.not_in(old))
        conn.execute(sa.insert(members).from_select(["tenant", "segment", "contact_id", "materialized_at"], joining))
    count = conn.execute(sa.select(sa.func.count()).select_from(new)).scalar_one()
    drop_id_tables(conn, [new])
    return MembershipChange(count, entered, left)
