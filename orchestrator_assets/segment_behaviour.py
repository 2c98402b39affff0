"""Behaviour clauses of segment rules, answered by the warehouse as sets of contact ids.

Each clause (``policies.segments.Behaviour``) compiles to ONE ClickHouse query over
``algor.events`` that groups the tenant's matching events by contact and keeps the contacts whose
count fits; values are bound server-side (``{name:Type}``). The ids come back as one numpy column
and go into a temporary table of the operational store, where ``segment_sql`` tests
``contacts.id IN`` / ``NOT IN`` it inside the one statement that also tests the attributes, so
AND / OR / NOT remain set logic over all contacts.

A count only sees contacts with events, so "at most N" (which includes contacts with none) is
asked the other way round: the warehouse returns who had MORE than N, and the clause is its
complement (``BehaviourSet.complement``). Events are counted once per (event_type, event_id):
the table is a ReplacingMergeTree, whose duplicates linger until a merge, so counting distinct
keys is exact without ``FINAL``.

What the events can tell: ``failed`` is a send refused by the provider or a bounce; ``link`` is
the clicked URL as the provider reported it in the event's ``reason`` (Mailgun, SendGrid and our
tracked links report the URL; SMSC, VK and Telegram button presses report none, so a ``link``
clause never matches their clicks). Events of a contact later merged into another stay with the
merged (tombstone) id, so they do not count for the survivor.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import sqlalchemy as sa

from orchestrator_assets.segment_sql import BehaviourSet
from policies.segments import Behaviour, BehaviourEvent, Rule, behaviours
from resources import warehouse as wh
from resources.opstore_schema import BigIntId

EVENT_TYPES: dict[BehaviourEvent, tuple[str, ...]] = {
    BehaviourEvent.SENT: (wh.SENT,),
    BehaviourEvent.DELIVERED: (wh.DELIVERED,),
    BehaviourEvent.OPENED: (wh.OPENED,),
    BehaviourEvent.CLICKED: (wh.CLICKED,),
    BehaviourEvent.FAILED: (wh.SEND_FAILED, wh.DELIVERY_FAILED),
    BehaviourEvent.COMPLAINED: (wh.COMPLAINED,),
}
_COUNT = "uniqExact(event_type, event_id)"


@dataclass(frozen=True)
class BehaviourQuery:
    """A clause as ClickHouse SQL selecting ``contact_id``; ``complement``: members are the others."""

    sql: str
    parameters: dict[str, Any]
    complement: bool


def behaviour_query(behaviour: Behaviour, tenant: str, now: dt.datetime) -> BehaviourQuery:
    where = ["tenant = {tenant:String}", "event_type IN {types:Array(String)}", "occurred_at <= {now:DateTime64(3, 'UTC')}"]
    parameters: dict[str, Any] = {"tenant": tenant, "types": list(EVENT_TYPES[behaviour.event]), "now": now}
    for column, value in (("channel", behaviour.channel), ("campaign", behaviour.campaign), ("reason", behaviour.link)):
        if value is not None:
            where.append(f"{column} = {{{column}:String}}")
            parameters[column] = str(value)
    if behaviour.within_days is not None:
        where.append("occurred_at >= {since:DateTime64(3, 'UTC')}")
        parameters["since"] = now - dt.timedelta(days=behaviour.within_days)
    complement = behaviour.min_count == 0
    if behaviour.min_count == 1 and behaviour.at_most is None:  # "at least once": no count, so no dedup needed (3x faster)
        return BehaviourQuery(f"SELECT DISTINCT contact_id FROM {wh.EVENTS_TABLE} WHERE {' AND '.join(where)}", parameters, False)
    if complement:
        having = f"{_COUNT} > {int(behaviour.at_most)}"  # type: ignore[arg-type] - min_count 0 implies at_most
    else:
        having = f"{_COUNT} >= {behaviour.min_count}" + (f" AND {_COUNT} <= {behaviour.at_most}" if behaviour.at_most is not None else "")
    sql = f"SELECT contact_id FROM {wh.EVENTS_TABLE} WHERE {' AND '.join(where)} GROUP BY contact_id HAVING {having}"
    return BehaviourQuery(sql, parameters, complement)


def behaviour_ids(client: Any, query: BehaviourQuery) -> np.ndarray:
    """The contact ids the warehouse returns for ``query`` (one uint64 column)."""
    result = client.query_np(query.sql, parameters=query.parameters)
    return result[:, 0] if result.size else np.empty(0, dtype=np.uint64)


def id_table(conn: sa.Connection, name: str, ids: Sequence[int] | np.ndarray) -> sa.Table:
    """A temporary table of the store holding ``ids``, on this connection only, until
    ``drop_id_tables``. One left by a failed evaluation on this pooled connection is replaced:
    SQLite commits DDL at once, so a rollback does not remove it there (PostgreSQL's does)."""
    # On SQLite the key is the rowid itself (no second b-tree), filled in order: 5x faster to load.
    table = sa.Table(name, sa.MetaData(), sa.Column("contact_id", BigIntId, primary_key=True, autoincrement=False), prefixes=["TEMPORARY"])
    table.drop(conn, checkfirst=True)
    table.create(conn)
    if len(ids) == 0:
        return table
    ids = np.unique(np.asarray(ids))
    if conn.dialect.name == "postgresql":
        with conn.connection.dbapi_connection.cursor() as cursor, cursor.copy(f"COPY {name} (contact_id) FROM STDIN") as copy:
            copy.write("\n".join(map(str, np.asarray(ids).tolist())) + "\n")
        conn.exec_driver_sql(f"ANALYZE {name}")
    else:
        conn.exec_driver_sql(f"INSERT INTO {name} (contact_id) VALUES (?)", [(i,) for i in np.asarray(ids).tolist()])
    return table


def drop_id_tables(conn: sa.Connection, tables: Sequence[sa.Table]) -> None:
    for table in tables:
        table.drop(conn)


@contextmanager
def warehouse_client(warehouse: wh.Warehouse | None, *rules: Rule) -> Iterator[Any]:
    """An open warehouse client for the block when one of ``rules`` has a behaviour clause, else
    None: rules without one never wait for the warehouse (chDB admits one process at a time).
    Opening embedded chDB costs about as much as a query (it loads the table's parts): open once."""
    if not any(behaviours(rule) for rule in rules):
        yield None
        return
    if warehouse is None:
        raise ValueError("this rule has a behaviour clause: it needs the warehouse")
    with warehouse.client() as client:
        warehouse.ensure_schema(client)
        yield client


@contextmanager
def behaviour_sets(conn: sa.Connection, client: Any, tenant: str, rule: Rule, now: dt.datetime) -> Iterator[dict[Behaviour, BehaviourSet]]:
    """The id sets of ``rule``'s behaviour clauses as temporary tables on ``conn``, for the block
    (``client``: an open warehouse client, see ``warehouse_client``)."""
    found = [(clause, behaviour_query(clause, tenant, now)) for clause in behaviours(rule)]
    sets = {clause: BehaviourSet(id_table(conn, f"segment_behaviour_{i}", behaviour_ids(client, query)), query.complement) for i, (clause, query) in enumerate(found)}
    yield sets
    drop_id_tables(conn, [s.table for s in sets.values()])
