"""The Alembic migrations are the only creator of the operational store's tables: upgraded to head,
a database holds exactly the tables, columns and indexes ``resources/opstore_schema.py`` declares,
on SQLite and on PostgreSQL. One comparison of the whole schema, so a table added by any change is
held to it without a test of its own."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from resources.opstore import migrate
from resources.opstore_schema import metadata


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_migrations_create_exactly_the_schema(backend, request, tmp_path):
    url = request.getfixturevalue("postgres_url") if backend == "postgresql" else f"sqlite:///{tmp_path / 'operational.sqlite3'}"
    migrate(url)
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            assert compare_metadata(MigrationContext.configure(conn), metadata) == []
    finally:
        metadata.drop_all(engine)
        with engine.begin() as conn:
            conn.execute(sa.text("DROP TABLE alembic_version"))
        engine.dispose()
