"""Throw-away PostgreSQL databases for tests.

Tests that must prove something on real PostgreSQL (upserts, ``ON CONFLICT``, timestamptz)
create a uniquely named database, use it, and drop it, so they never touch data of their own or
of a parallel run. The server defaults to the local one (``postgres`` user, trust auth) and can
be pointed elsewhere with ``ALGOR_TEST_POSTGRES`` (a libpq URL of the maintenance database).

    url = create_database()          # postgresql+psycopg://postgres@127.0.0.1:5432/algor_test_…
    try: ...
    finally: drop_database(url)
"""

from __future__ import annotations

import os
import uuid

import psycopg
from psycopg import sql
from sqlalchemy.engine import make_url

SERVER_URL = os.environ.get("ALGOR_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")


def _admin() -> psycopg.Connection:
    # CREATE/DROP DATABASE cannot run inside a transaction.
    return psycopg.connect(SERVER_URL, autocommit=True, connect_timeout=3)


def create_database(prefix: str = "algor_test", template: str | None = None) -> str:
    """Create a database with a unique name, empty or a copy of the database of URL ``template``
    (which must have no open sessions); return its SQLAlchemy URL (psycopg 3 driver)."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    statement = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
    if template:
        statement += sql.SQL(" TEMPLATE {}").format(sql.Identifier(make_url(template).database))
    with _admin() as conn:
        conn.execute(statement)
    url = make_url(SERVER_URL).set(drivername="postgresql+psycopg", database=name)
    return url.render_as_string(hide_password=False)


def drop_database(url: str) -> None:
    """Drop the database of ``url``, disconnecting leftover sessions (e.g. a leaked pool)."""
    name = make_url(url).database
    with _admin() as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
