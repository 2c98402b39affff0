"""Alembic environment: the engine comes from ``resources.opstore.migrate`` (no alembic.ini)."""

from alembic import context

from resources.opstore_schema import metadata

engine = context.config.attributes["engine"]
with engine.begin() as connection:
    context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
    context.run_migrations()
