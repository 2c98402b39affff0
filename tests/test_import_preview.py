"""The import preview job on a real Dagster instance: it shows what an import would do and does nothing."""

from __future__ import annotations

import csv
from pathlib import Path

import dagster as dg
import sqlalchemy as sa

from jobs.imports import contact_import_preview_job
from orchestrator_assets.imports.inspection import error_report_path
from orchestrator_assets.imports.validation import CSV_COLUMNS
from resources.opstore import OperationalStore

CORPUS = Path(__file__).resolve().parent / "data" / "ugly_csv"
PREVIEW_OP = "contact_import_preview"


def _preview(instance: dg.DagsterInstance, path: Path, tenant: str = "demo") -> dg.ExecuteInProcessResult:
    return contact_import_preview_job.execute_in_process(
        run_config={"ops": {PREVIEW_OP: {"config": {"csv_path": str(path)}}}},
        instance=instance,
        partition_key=tenant,
        raise_on_error=False,
    )


def _metadata(result: dg.ExecuteInProcessResult) -> dict:
    [event] = [e for e in result.all_node_events if e.event_type_value == "STEP_OUTPUT" and e.step_key == PREVIEW_OP]
    return event.event_specific_data.metadata


def _tables_in_store() -> list[str]:
    return sa.inspect(OperationalStore().engine()).get_table_names()


def test_preview_shows_rows_as_stored_masked_and_every_problem_grouped_and_stores_nothing(algor_home, instance, tmp_path):
    path = tmp_path / "crm.csv"
    rows = [
        {**dict.fromkeys(CSV_COLUMNS, ""), "external_id": f"c-{n}", "first_name": "Иван", "email": f"ivan{n}@example.ru", "phone": f"+7916123{n:04d}"}
        for n in range(1, 13)
    ]
    rows += [{**dict.fromkeys(CSV_COLUMNS, ""), "external_id": f"bad-{n}", "email": "not-an-email", "language": "fr"} for n in range(3)]
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)

    result = _preview(instance, path)

    assert result.success
    metadata = _metadata(result)
    assert (metadata["rows_read"].value, metadata["rows_valid"].value, metadata["rows_rejected"].value) == (15, 12, 3)
    stored = metadata["rows_as_stored"].value.splitlines()
    assert len(stored) == 2 + 10  # header, rule, the first ten rows
    assert "| 2 | c-1 | И*** |" in stored[2] and "i***@example.ru" in stored[2] and "+7 916 ***-**-01" in stored[2]
    grouped = metadata["problems_by_reason"].value
    assert "| unknown language code (expected one of: en, ru) | 3 | 14, 15, 16 |" in grouped
    assert "| invalid e-mail: " in grouped
    assert metadata["error_report"].path == str(error_report_path("demo", path))
    text = "\n".join(str(value.value) for value in metadata.values())
    assert "ivan1@" not in text and "1230001" not in text
    assert _tables_in_store() == []  # not even migrated: the preview never opens the store


def test_preview_of_a_refused_file_fails_with_the_reason(algor_home, instance):
    result = _preview(instance, CORPUS / "png_renamed.csv")
    assert not result.success
    failure = result.failure_data_for_node(PREVIEW_OP)
    assert failure.user_failure_data.description == "png_renamed.csv not imported: not a CSV file: the file is a PNG image"
    assert _tables_in_store() == []


def test_preview_shows_how_the_file_was_read(algor_home, instance):
    detected = _metadata(_preview(instance, CORPUS / "ru_headers.csv"))["detected"].value
    assert "| encoding | UTF-8 |" in detected
    assert "| delimiter | semicolon |" in detected
    assert "Моб. телефон → phone" in detected
    assert "| columns ignored (unknown) | Комментарий |" in detected
