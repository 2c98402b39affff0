"""Shared fixtures: every test gets its own ALGOR_HOME, so state never leaks between tests."""

from __future__ import annotations

import os
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


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, algor_home: Path, tmp_path: Path):
    """A migrated operational store, once on SQLite and once on the session's PostgreSQL database
    (emptied afterwards, schema and Alembic's version table included, for the next test)."""
    from resources.opstore import migrate
    from resources.opstore_schema import metadata

    url = f"sqlite:///{tmp_path / 'opstore.db'}" if request.param == "sqlite" else request.getfixturevalue("postgres_url")
    migrate(url)
    engine = sa.create_engine(url)
    yield engine
    metadata.drop_all(engine)
    with engine.begin() as conn:
        conn.execute(sa.text("DROP TABLE alembic_version"))
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
