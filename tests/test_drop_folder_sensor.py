"""The drop-folder sensor on a real Dagster instance: a file imports itself once it stops changing,
once per content, whatever its name; the run it asks for imports it."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import dagster as dg
import sqlalchemy as sa

from definitions import defs
from orchestrator_assets.imports.validation import CSV_COLUMNS
from resources.opstore import OperationalStore
from resources.opstore_schema import contact_imports
from sensors.imports import IMPORT_OP, contact_drop_folder_sensor

CSV = ",".join(CSV_COLUMNS) + "\nc-1,Анна,,anna@example.ru,,,,,yes,,,form:x,\n"


def _tick(instance: dg.DagsterInstance, cursor: str | None) -> dg.SensorResult:
    with dg.build_sensor_context(instance=instance, cursor=cursor) as context:
        return contact_drop_folder_sensor(context)


def _drop(folder: Path, name: str, text: str = CSV) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


def test_a_dropped_file_is_taken_once_it_stops_changing_and_moved_under_its_hash(algor_home, instance):
    inbox = algor_home / "imports" / "inbox" / "acme"
    path = _drop(inbox, "crm.csv")

    first = _tick(instance, None)
    assert not first.run_requests  # seen once: it may still be being written
    grown = CSV + "c-2,Борис,,boris@example.ru,,,,,,,,,\n"
    path.write_text(grown, encoding="utf-8")
    os.utime(path, ns=(1, 1))
    second = _tick(instance, first.cursor)
    assert not second.run_requests  # it changed since the last tick
    third = _tick(instance, second.cursor)

    (request,) = third.run_requests
    sha256 = hashlib.sha256(grown.encode()).hexdigest()
    moved = inbox / "processed" / sha256 / "crm.csv"
    assert request.run_key == f"import:acme:{sha256}" and request.partition_key == "acme"
    assert request.run_config == {"ops": {IMPORT_OP: {"config": {"csv_path": str(moved)}}}}
    assert not path.exists() and moved.read_text(encoding="utf-8") == grown and json.loads(third.cursor) == {}
    # Had the daemon stopped before launching it, the next tick asks again (same key: one run at most) …
    assert [r.run_key for r in _tick(instance, third.cursor).run_requests] == [request.run_key]
    os.utime(moved, (0, 0))  # … for a while after the move, not forever.
    assert not _tick(instance, third.cursor).run_requests


def test_the_same_content_under_another_name_asks_for_the_same_run(algor_home, instance):
    inbox = algor_home / "imports" / "inbox" / "acme"
    _drop(inbox, "monday.csv")
    first = _tick(instance, None)
    (monday,) = _tick(instance, first.cursor).run_requests

    _drop(inbox, "MONDAY (copy).CSV")
    again = _tick(instance, None)
    keys = {request.run_key for request in _tick(instance, again.cursor).run_requests}

    assert keys == {monday.run_key}  # Dagster launches one run per run key
    assert sorted(p.name for p in (inbox / "processed" / monday.run_key.rsplit(":", 1)[1]).iterdir()) == ["MONDAY (copy).CSV", "monday.csv"]


def test_folders_of_unknown_tenants_and_other_files_are_left_alone(algor_home, instance):
    inbox = algor_home / "imports" / "inbox"
    stranger = _drop(inbox / "nobody", "crm.csv")
    notes = _drop(inbox / "acme", "notes.txt")

    result = _tick(instance, _tick(instance, None).cursor)

    assert not result.run_requests and stranger.exists() and notes.exists()


def test_the_inbox_is_configurable_and_the_requested_run_imports_the_file(algor_home, instance, tmp_path, monkeypatch):
    inbox = tmp_path / "elsewhere"
    monkeypatch.setenv("ALGOR_IMPORT_INBOX", str(inbox))
    _drop(inbox / "acme", "crm.csv")
    (request,) = _tick(instance, _tick(instance, None).cursor).run_requests
    OperationalStore().migrate()

    result = defs.resolve_job_def("contact_import_job").execute_in_process(
        run_config=request.run_config, partition_key=request.partition_key, instance=instance, resources={"opstore": OperationalStore()}
    )

    assert result.success
    with OperationalStore().engine().connect() as conn:
        imported = conn.execute(sa.select(contact_imports.c.source_file, contact_imports.c.content_sha256, contact_imports.c.rows_inserted)).one()
    sha256 = hashlib.sha256(CSV.encode()).hexdigest()
    assert tuple(imported) == ("crm.csv", sha256, 1)
    assert request.run_key == f"import:acme:{sha256}"
