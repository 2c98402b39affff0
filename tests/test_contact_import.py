"""The import assets (CSV → contacts → consents) materialised on a real Dagster instance and a real
SQLite store: what an operator's file does, and what no file does."""

from __future__ import annotations

import csv
import datetime as dt
from pathlib import Path

import dagster as dg
import pandas as pd
import sqlalchemy as sa

from orchestrator_assets.consent_ledger import consent_state
from orchestrator_assets.contacts import commit_contact_import
from orchestrator_assets.imports.assets import contact_import_rows
from orchestrator_assets.imports.validation import CSV_COLUMNS
from resources.opstore import OperationalStore
from resources.opstore_schema import consent_events
from resources.opstore_schema import contacts as contacts_table

IMPORT_OP = "imports__contact_import_rows"


def _materialize(instance: dg.DagsterInstance, tenant: str, run_config: dict | None = None) -> dg.ExecuteInProcessResult:
    result = dg.materialize(
        [contact_import_rows, commit_contact_import],
        instance=instance,
        partition_key=tenant,
        resources={"opstore": OperationalStore()},
        run_config=run_config,
    )
    assert result.success
    return result


def _write_csv(path: Path, *rows: dict[str, str]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows({**dict.fromkeys(CSV_COLUMNS, ""), **row} for row in rows)
    return path


def _consent_states() -> dict[str, str]:
    with OperationalStore().engine().connect() as conn:
        state = consent_state(dt.datetime.now(dt.UTC))
        status = sa.case((state.c.granted, "granted"), else_="withdrawn")
        query = sa.select(contacts_table.c.external_id, status).join(state, state.c.contact_id == contacts_table.c.id)
        return dict(conn.execute(query).all())


def test_a_grant_dated_2099_is_a_row_error_and_one_a_minute_ahead_is_granted(algor_home, instance, tmp_path):
    soon = (dt.datetime.now(dt.UTC) + dt.timedelta(minutes=1)).isoformat(timespec="seconds")
    consent = {"consent_email": "yes", "consent_source": "form:https://shop.example/subscribe"}
    path = _write_csv(
        tmp_path / "crm.csv",
        {"external_id": "c-2099", "email": "future@example.com", "consent_at": "2099-01-01T00:00:00Z", **consent},
        {"external_id": "c-soon", "email": "soon@example.com", "consent_at": soon, **consent},
    )

    result = _materialize(instance, "acme", {"ops": {IMPORT_OP: {"config": {"csv_path": str(path)}}}})

    report = pd.read_csv(algor_home / "import_errors" / "acme" / "crm.errors.csv", dtype=str)
    (error,) = report.to_dict("records")
    assert (error["row"], error["column"], error["value"]) == ("2", "consent_at", "2099-01-01T00:00:00Z")
    assert error["reason"].startswith("dated 2099-01-01T00:00:00Z, more than 5 minutes after now")
    (check,) = result.get_asset_check_evaluations()
    assert not check.passed and check.metadata["rows_rejected"].value == 1
    assert _consent_states() == {"c-soon": "granted"}  # the 2099 row is not imported at all


def test_without_csv_path_a_tenant_gets_no_contacts_and_no_consents(algor_home, instance):
    result = _materialize(instance, "acme")

    with OperationalStore().engine().connect() as conn:
        for table in (contacts_table, consent_events):
            assert conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one() == 0, table.name
    (imported,) = [e.materialization for e in result.get_asset_materialization_events() if e.materialization.asset_key.path == ["imports", "contact_import_rows"]]
    assert imported.metadata["source_file"].value == "no file given (csv_path is empty)"
    assert imported.metadata["rows_read"].value == 0
