"""Small SQL helpers shared by every writer of the operational store (SQLite and PostgreSQL)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite


def upsert_insert(conn: sa.Connection, table: sa.Table):
    """An INSERT that supports ``on_conflict_do_nothing`` / ``on_conflict_do_update`` on both dialects."""
    dialect = conn.dialect.name
    if dialect == "sqlite":
        return sqlite.insert(table)
    if dialect == "postgresql":
        return postgresql.insert(table)
    raise NotImplementedError(f"operational store dialect {dialect!r} is not supported (use SQLite or PostgreSQL)")


# PostgreSQL binary COPY type names for the column types the operational store uses.
_COPY_TYPES = {sa.BigInteger: "int8", sa.Integer: "int8", sa.String: "text", sa.Text: "text", sa.LargeBinary: "bytea", sa.DateTime: "timestamptz", sa.Boolean: "bool"}


def _copy_type(column: sa.Column) -> str:
    for kind, name in _COPY_TYPES.items():
        if isinstance(column.type, kind):
            return "timestamp" if name == "timestamptz" and not column.type.timezone else name
    raise NotImplementedError(f"no COPY type for {column.table.name}.{column.name} ({column.type})")


def bulk_insert(conn: sa.Connection, table: sa.Table, columns: tuple[str, ...], rows: Iterable[tuple]) -> int:
    """Insert ``rows`` (tuples in ``columns`` order) in the caller's transaction; returns how many.

    On PostgreSQL this is a binary ``COPY``: a million contacts go in at the server's pace instead
    of a round trip per few hundred rows. SQLite (one local writer, no network) takes an
    ``executemany``. Values are Python's (``int``, ``str``, ``bytes``, aware ``datetime``, None).
    """
    if conn.dialect.name == "postgresql":
        types = [_copy_type(table.c[name]) for name in columns]
        statement = f"COPY {table.name} ({', '.join(columns)}) FROM STDIN (FORMAT BINARY)"
        count = 0
        dbapi_error = conn.dialect.loaded_dbapi.Error
        try:
            with conn.connection.driver_connection.cursor() as cursor, cursor.copy(statement) as copy:
                copy.set_types(types)
                for row in rows:
                    copy.write_row(row)
                    count += 1
        except dbapi_error as exc:  # as SQLAlchemy raises it for any other statement
            raise sa.exc.DBAPIError.instance(statement, None, exc, dbapi_error) from exc
        return count
    records = [dict(zip(columns, row, strict=True)) for row in rows]
    if records:
        conn.execute(sa.insert(table), records)
    return len(records)


def next_ids(conn: sa.Connection, table: sa.Table, count: int) -> list[int]:
    """``count`` fresh values of ``table``'s integer primary key, for rows the caller inserts with
    explicit ids (rows that other rows of the same batch refer to, before any is written).

    PostgreSQL draws them from the column's sequence (safe beside concurrent writers). SQLite has
    one writer at a time: a no-op UPDATE takes the write lock for this transaction first, then the
    ids above the largest stored one are this transaction's until it ends.
    """
    if count <= 0:
        return []
    (key,) = table.primary_key.columns
    if conn.dialect.name == "postgresql":
        query = sa.text("SELECT nextval(pg_get_serial_sequence(:table, :column)) FROM generate_series(1, :count)")
        return sorted(conn.execute(query, {"table": table.name, "column": key.name, "count": count}).scalars())
    conn.execute(sa.update(table).where(sa.false()).values({key.name: key}))
    start = conn.execute(sa.select(sa.func.coalesce(sa.func.max(key), 0))).scalar_one() + 1
    return list(range(start, start + count))


def batched_in(conn: sa.Connection, column: sa.ColumnElement, values: Sequence) -> Iterator[sa.ColumnElement[bool]]:
    """``column IN values`` as a few conditions that each fit one statement. On PostgreSQL each
    condition carries 50,000 values as one JSON text parameter (an IN list of thousands of
    parameters costs more to build and parse than to run, and psycopg dumps an array parameter
    element by element in Python, where ``json.dumps`` does it in C); on SQLite, IN lists under
    its variable limit."""
    if conn.dialect.name != "postgresql":
        for start in range(0, len(values), 5_000):
            yield column.in_(values[start : start + 5_000])
        return
    for start in range(0, len(values), 50_000):
        batch = json.dumps(list(values[start : start + 50_000]), ensure_ascii=False)
        elements = sa.func.jsonb_array_elements_text(sa.cast(sa.literal(batch, sa.Text), postgresql.JSONB)).column_valued("value")
        yield column.in_(sa.select(sa.cast(elements, column.type)))
