"""Shared fixtures: every test gets its own ALGOR_HOME, so state never leaks between tests."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import dagster as dg
import pytest
import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parent))  # tests' helper modules (pg, flow)

DEPLOYMENT_VARS = (
    "ALGOR_ENV",
    "ALGOR_DATABASE_URL",
    "ALGOR_WAREHOUSE_DSN",
    "ALGOR_SANDBOX_URL",
    "ALGOR_GATEWAY_URL",
    "ALGOR_DBT_TARGET",
    "ALGOR_MASTER_KEY",
    "ALGOR_MASTER_KEY_PREVIOUS",
    "ALGOR_ALLOW_SANDBOX_WITH",
)


@pytest.fixture(autouse=True, scope="session")
def _no_state_in_the_checkout(tmp_path_factory: pytest.TempPathFactory):
    """Point ALGOR_HOME away from the checkout for the whole session: a test that forgets
    ``algor_home`` would otherwise write ``.algor/`` (a master key, a store) into the repository,
    and ``make demo`` then refuses that folder as not its own."""
    previous = os.environ.get("ALGOR_HOME")
    os.environ["ALGOR_HOME"] = str(tmp_path_factory.mktemp("session-home") / "algor")
    yield
    if previous is None:
        os.environ.pop("ALGOR_HOME", None)
    else:
        os.environ["ALGOR_HOME"] = previous


@pytest.fixture
def algor_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty embedded deployment (SQLite store, chDB warehouse) under tmp_path."""
    for name in DEPLOYMENT_VARS:
        monkeypatch.delenv(name, raising=False)
    home = tmp_path / "algor"
    monkeypatch.setenv("ALGOR_HOME", str(home))
    return home


@pytest.fixture(scope="session")
def migrated_sqlite(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite store migrated to head once per session; tests get copies (a copy takes
    milliseconds, a migration of the whole chain half a second or more)."""
    from resources.opstore import engine_for, migrate

    path = tmp_path_factory.mktemp("migrated-sqlite") / "opstore.db"
    migrate(f"sqlite:///{path}")
    engine_for(f"sqlite:///{path}").dispose()  # closed: the copies are of a quiet file
    return path


# What a test may add to or change in a schema (a trigger that fails writes, a column): compared
# with the migrated state before the session's PostgreSQL store is handed on.
SCHEMA_FINGERPRINT = sa.text(
    """
    SELECT 'column', table_name || '.' || column_name || ' ' || data_type || ' ' || coalesce(column_default, '')
      FROM information_schema.columns WHERE table_schema = 'public'
    UNION ALL SELECT 'index', indexdef FROM pg_indexes WHERE schemaname = 'public'
    UNION ALL SELECT 'trigger', tgname FROM pg_trigger WHERE NOT tgisinternal
    UNION ALL SELECT 'function', proname FROM pg_proc WHERE pronamespace = 'public'::regnamespace
    UNION ALL SELECT 'constraint', conname FROM pg_constraint WHERE connamespace = 'public'::regnamespace
    UNION ALL SELECT 'alembic', version_num FROM alembic_version
    ORDER BY 1, 2
    """
)


class SessionPostgresStore:
    """A PostgreSQL store migrated to head once per session and emptied between tests.

    Migrating takes ~1.5 s with the drop and ~100 tests ask for a migrated store; emptying it row
    by row and restarting its sequences takes ~50 ms (TRUNCATE a second) and leaves the state the
    migrations leave. A test that changed the schema gets the next test a newly migrated database.
    """

    def __init__(self) -> None:
        self.url = ""
        self.fingerprint: list = []

    def create(self) -> None:
        from pg import create_database
        from resources.opstore import engine_for, migrate

        self.url = create_database("algor_store")
        migrate(self.url)
        with engine_for(self.url).connect() as conn:
            self.fingerprint = conn.execute(SCHEMA_FINGERPRINT).all()

    def drop(self) -> None:
        from pg import drop_database
        from resources.opstore import engine_for

        engine_for(self.url).dispose()
        drop_database(self.url)

    def emptied(self) -> str:
        from resources.opstore import engine_for
        from resources.opstore_schema import metadata

        with engine_for(self.url).begin() as conn:
            if conn.execute(SCHEMA_FINGERPRINT).all() != self.fingerprint:
                changed = True
            else:
                changed = False
                conn.execute(sa.text("SET LOCAL lock_timeout = '10s'"))  # a connection a test left open fails loudly
                for table in reversed(metadata.sorted_tables):
                    conn.execute(table.delete())
                for sequence in conn.execute(sa.text("SELECT schemaname || '.' || sequencename FROM pg_sequences")).scalars().all():
                    conn.execute(sa.text("SELECT setval(:sequence, 1, false)"), {"sequence": sequence})
        if changed:
            self.drop()
            self.create()
        return self.url


@pytest.fixture(scope="session")
def migrated_postgres():
    """The session's PostgreSQL store for ``migrated_store_url`` (apart from ``postgres_url``,
    which some tests migrate and drop themselves)."""
    store = SessionPostgresStore()
    store.create()
    yield store
    store.drop()


@pytest.fixture(params=["sqlite", "postgresql"])
def migrated_store_url(request: pytest.FixtureRequest, algor_home: Path, tmp_path: Path) -> str:
    """The URL of an empty store migrated to head, once on SQLite and once on PostgreSQL: a copy
    of a SQLite file the session migrated once, or the session's PostgreSQL store emptied."""
    if request.param == "sqlite":
        path = tmp_path / "opstore.db"
        shutil.copyfile(request.getfixturevalue("migrated_sqlite"), path)
        return f"sqlite:///{path}"
    return request.getfixturevalue("migrated_postgres").emptied()


@pytest.fixture
def engine(migrated_store_url: str):
    """An empty operational store migrated to head, on SQLite and on PostgreSQL."""
    engine = sa.create_engine(migrated_store_url)
    yield engine
    engine.dispose()


@pytest.fixture
def instance(tmp_path: Path) -> dg.DagsterInstance:
    """A real, persistent Dagster instance (SQLite storage) with the project's dagster.yaml settings."""
    (tmp_path / "dagster_home").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "dagster_home"), overrides={"concurrency": {"pools": {"default_limit": 1}}}) as inst:
        yield inst


@pytest.fixture(scope="session")
def postgres_url():
    """A fresh database on the local PostgreSQL for this test session, dropped afterwards.

    Never skipped: CI starts the server (.ci/run), and a test that silently skips proves nothing.
    """
    from pg import create_database, drop_database

    url = create_database()
    yield url
    drop_database(url)


@pytest.fixture(scope="module")
def receiver():
    """(recorder, base URL): a webhook endpoint on loopback that records what the sandbox posts."""
    from sandbox.recorder import CallbackRecorder
    from sandbox.server import run_uvicorn_in_thread

    recorder = CallbackRecorder()
    with run_uvicorn_in_thread(recorder.app) as url:
        yield recorder, url


@pytest.fixture(scope="module")
def recorder(receiver):
    return receiver[0]


@pytest.fixture
def gateway(algor_home, monkeypatch):
    """The webhook gateway on loopback (base URL) for the configured tenants plus ``every``, which
    has an account at every provider (``test_gateway_providers.TENANT``)."""
    from gateway.app import create_app
    from policies.loader import load_tenants
    from sandbox.server import run_uvicorn_in_thread
    from test_gateway_providers import TENANT

    with run_uvicorn_in_thread(create_app(tenants={**load_tenants().tenants, "every": TENANT})) as url:
        monkeypatch.setenv("ALGOR_GATEWAY_URL", url)  # the public URL Twilio signs
        yield url
