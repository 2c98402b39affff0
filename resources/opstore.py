"""The operational store: SQLite file by default, PostgreSQL in production.

Sends are only as exactly-once as this store is durable, so SQLite runs in WAL mode with a busy
timeout (the gateway, sensors and run steps write from different processes), and the schema is
created only by Alembic migrations, never by ``create_all``. SQLite's ``lower()`` is replaced by
one that folds all of Unicode, so segment rules match the same contacts on both stores.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

import dagster as dg
import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from pydantic import Field

from resources.settings import get_settings

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
SQLITE_BUSY_TIMEOUT_MS = 30_000


@lru_cache(maxsize=8)
def engine_for(url: str) -> sa.Engine:
    """One engine per URL per process (engines own connection pools; make them once)."""
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000})

        @sa.event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection, _record):  # noqa: ANN001 - DBAPI hook
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()
            # Segment rules compare case-insensitively; SQLite's own lower() is ASCII-only.
            register_sqlite_unicode_lower(dbapi_connection)

        return engine
    return sa.create_engine(url, pool_pre_ping=True)


def register_sqlite_unicode_lower(dbapi_connection: Any) -> None:
    """Make SQLite's ``lower()`` fold all of Unicode, as PostgreSQL's does.

    SQLite's built-in ``lower()`` folds ASCII only, so ``city contains "моск"`` would miss
    "Москва" on the embedded store. Call this from the engine's ``connect`` event.
    """
    dbapi_connection.create_function("lower", 1, _unicode_lower, deterministic=True)


def _unicode_lower(value: Any) -> Any:
    return value.lower() if isinstance(value, str) else value


def migrate(url: str) -> None:
    """Bring the schema at ``url`` to the newest Alembic revision (idempotent)."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["engine"] = engine_for(url)
    command.upgrade(config, "head")


class OperationalStore(dg.ConfigurableResource):
    """SQLAlchemy access to the operational store; ``url`` defaults to the environment helper's."""

    url: str | None = Field(default=None, description="SQLAlchemy URL; empty = ALGOR_DATABASE_URL or the embedded SQLite file")

    def resolved_url(self) -> str:
        return self.url or get_settings().database_url

    def engine(self) -> sa.Engine:
        return engine_for(self.resolved_url())

    def migrate(self) -> None:
        migrate(self.resolved_url())

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        # Every process that writes runs the (idempotent, ~50 ms) upgrade first, so a fresh
        # machine or a newly deployed revision never meets a missing table.
        self.migrate()
