"""The import → campaign → delivery flow with the operational store and the Dagster instance on PostgreSQL."""

from __future__ import annotations

import shutil
from pathlib import Path

import dagster as dg
import pytest
import sqlalchemy as sa

from flow import metadata, process_inbox, run_pipeline, running_stack
from pg import create_database, drop_database
from resources.opstore import OperationalStore
from resources.opstore_schema import deliveries, sends, webhook_inbox

PRODUCTION_INSTANCE_YAML = Path(__file__).resolve().parents[1] / "deploy" / "production" / "dagster.yaml"


@pytest.fixture
def postgres_deployment(algor_home, tmp_path, monkeypatch):
    """Operational store and Dagster storage each in a fresh PostgreSQL database."""
    store_url, dagster_url = create_database("algor_store"), create_database("algor_dagster")
    monkeypatch.setenv("ALGOR_DATABASE_URL", store_url)
    monkeypatch.setenv("ALGOR_ALLOW_SANDBOX_WITH", "ALGOR_DATABASE_URL")  # PostgreSQL with the provider sandbox, on purpose
    monkeypatch.setenv("ALGOR_DAGSTER_PG_URL", dagster_url.replace("postgresql+psycopg://", "postgresql+psycopg2://"))
    home = tmp_path / "dagster_pg_home"
    home.mkdir()
    shutil.copy(PRODUCTION_INSTANCE_YAML, home / "dagster.yaml")
    instance = dg.DagsterInstance.from_config(str(home))
    try:
        yield instance
    finally:
        instance.dispose()
        OperationalStore().engine().dispose()
        drop_database(store_url)
        drop_database(dagster_url)


def test_flow_on_postgres(postgres_deployment, monkeypatch):
    instance = postgres_deployment
    assert type(instance.run_storage).__name__ == "PostgresRunStorage"
    with running_stack(monkeypatch) as stack:
        first = metadata(run_pipeline(instance, "demo"), "sends/campaign_sends")
        again = metadata(run_pipeline(instance, "demo"), "sends/campaign_sends")
        assert first["sent"] > 0 and again["sent"] == 0 and again["failed"] == 0
        assert again["skipped_already_sent"] == again["messages"] == first["messages"] - first["failed"]  # unreachable now suppressed
        stack.wait_for_callbacks()
        requests, _ = process_inbox(instance)
        assert requests
    engine = OperationalStore().engine()
    assert engine.dialect.name == "postgresql"
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).where(webhook_inbox.c.processed_at.is_(None))).scalar_one() == 0
        sent = conn.execute(sa.select(sa.func.count()).where(sends.c.status == "sent")).scalar_one()
        tracked = conn.execute(sa.select(sa.func.count()).select_from(deliveries)).scalar_one()
        statuses = set(conn.execute(sa.select(deliveries.c.status).distinct()).scalars())
    assert sent == first["sent"] == tracked
    assert {"delivered", "clicked", "delivery_failed"} <= statuses
    runs = instance.get_runs(dg.RunsFilter(job_name="delivery_processing_job"))
    assert runs and all(run.status == dg.DagsterRunStatus.SUCCESS for run in runs)
