"""The Alembic migrations are the only creator of the operational store's tables: upgraded to head,
a database holds exactly the tables, columns and indexes ``resources/opstore_schema.py`` declares,
on SQLite and on PostgreSQL. One comparison of the whole schema, so a table added by any change is
held to it without a test of its own."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from resources.opstore_schema import metadata


def test_migrations_create_exactly_the_schema(engine):  # conftest: migrated to head, SQLite and PostgreSQL
    with engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), metadata) == []
