"""The import commit: contacts and consents in one transaction under an import id, all-or-nothing or
valid-rows-only, duplicates of stored contacts refused, on SQLite and PostgreSQL and through Dagster."""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest
import sqlalchemy as sa
from import_commit_support import NOW, commit, rows, snapshot

from orchestrator_assets.contacts import COMMIT_OP, commit_contact_import
from orchestrator_assets.imports import store
from orchestrator_assets.imports.commit import ImportRefused
from orchestrator_assets.imports.rollback import rollback_import
from orchestrator_assets.imports.assets import contact_import_rows
from orchestrator_assets.imports.sample_contacts import SAMPLE_PATH
from orchestrator_assets.imports.validation import CSV_COLUMNS
from policies import loader
from policies.tenants import ImportMode
from resources.opstore import OperationalStore
from resources.pii import tenant_cipher
from resources.opstore_schema import audit_log, consent_events, contact_import_changes, contact_imports, contacts

IMPORT_OP = "imports__contact_import_rows"
ANNA = {"external_id": "c-1", "first_name": "Анна", "phone": "+7 916 123-45-67", "email": "anna@example.ru"}
BORIS = {"external_id": "c-2", "first_name": "Борис", "email": "boris@example.ru", "consent_email": "yes", "consent_source": "form:x"}


def _count(engine, table) -> int:
    with engine.connect() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one()


def test_an_import_gets_an_id_its_counts_history_consent_evidence_and_an_audit_row(engine):
    first = commit(engine, rows(ANNA))
    second = commit(engine, rows({**ANNA, "first_name": "Аня", "city": "Москва"}, BORIS, rejected=1), now=NOW.replace(hour=10))

    assert (first.import_id, second.import_id) == (1, 2)
    with engine.connect() as conn:
        imported = conn.execute(sa.select(contact_imports).where(contact_imports.c.id == 2)).one()
        changes = {
            row.action: row for row in conn.execute(sa.select(contact_import_changes).where(contact_import_changes.c.import_id == 2))
        }
        evidence = conn.execute(sa.select(consent_events.c.source_kind, consent_events.c.source_ref)).one()
        anna_key = conn.execute(sa.select(contacts.c.data_key).where(contacts.c.external_id == "c-1")).scalar_one()
        previous = tenant_cipher(conn, "acme").open(anna_key, changes["updated"].previous)
        audit = conn.execute(sa.select(audit_log.c.action, audit_log.c.params).order_by(audit_log.c.id)).all()
    assert (imported.source_file, imported.mode, imported.status, imported.run_id) == ("crm.csv", "valid_rows_only", "committed", "run-1")
    counts = ("rows_read", "rows_valid", "rows_rejected", "rows_inserted", "rows_updated", "rows_unchanged", "rows_merged")
    assert tuple(imported._mapping[c] for c in counts) == (3, 2, 1, 1, 1, 0, 0)
    assert previous == {"first_name": "Анна", "city": None}  # sealed with Anna's own key
    assert "Анна".encode() not in changes["updated"].previous
    assert changes["created"].previous is None
    assert tuple(evidence) == ("import", "import 2:crm.csv:row 3")
    assert [action for action, _ in audit] == ["import.commit", "import.commit"]
    assert "Анна" not in audit[1].params and "anna@" not in audit[1].params and json.loads(audit[1].params)["import_id"] == 2


def test_all_or_nothing_with_a_rejected_row_writes_nothing(engine):
    commit(engine, rows(ANNA))
    before = snapshot(engine), _count(engine, contact_imports), _count(engine, audit_log)

    with pytest.raises(ImportRefused, match="1 rejected row"):
        commit(engine, rows(BORIS, rejected=1), mode=ImportMode.ALL_OR_NOTHING)

    assert (snapshot(engine), _count(engine, contact_imports), _count(engine, audit_log)) == before


def test_a_row_holding_a_stored_contacts_phone_or_email_is_refused_and_reported_masked(engine):
    commit(engine, rows(ANNA))
    same_phone = {"external_id": "c-9", "first_name": "Анна", "phone": "8 916 123 45 67"}
    same_email = {"external_id": "c-8", "email": "ANNA@example.ru"}

    result = commit(engine, rows(same_phone, same_email, BORIS))

    assert result.contacts == {"inserted": 1, "updated": 0, "unchanged": 0, "merged": 0}  # Boris only
    assert result.store_duplicates == [
        {"row": 2, "column": "phone", "value": "+7 916 ***-**-67", "reason": "duplicate of stored contact c-1: it already has this phone"},
        {"row": 3, "column": "email", "value": "a***@example.ru", "reason": "duplicate of stored contact c-1: it already has this email"},
    ]
    with pytest.raises(ImportRefused, match="2 rejected row"):
        commit(engine, rows(same_phone, same_email), mode=ImportMode.ALL_OR_NOTHING)
    with engine.connect() as conn:
        assert sorted(conn.execute(sa.select(contacts.c.external_id)).scalars()) == ["c-1", "c-2"]


def test_rows_without_an_external_id_find_their_contact_by_phone_then_email_or_get_a_new_id(engine):
    commit(engine, rows(ANNA, {"external_id": "c-2", "email": "boris@example.ru"}))
    good = rows({"external_id": "x", "phone": "89161234567", "city": "Казань"}, {"external_id": "y", "email": "boris@example.ru", "city": "Омск"},
                {"external_id": "z", "email": "vera@example.ru"})
    good["external_id"] = None  # a file without the column

    result = commit(engine, good)

    assert result.contacts == {"inserted": 1, "updated": 2, "unchanged": 0, "merged": 0} and result.store_duplicates == []
    with engine.connect() as conn:
        stored = dict(conn.execute(sa.select(contacts.c.external_id, contacts.c.city)).all())
    new_id = next(key for key in stored if key not in ("c-1", "c-2"))
    assert (stored["c-1"], stored["c-2"], new_id[:5]) == ("Казань", "Омск", "auto-")


def test_a_write_failing_after_hundreds_of_rows_leaves_the_store_as_it_was(engine):
    good = rows(*({**BORIS, "external_id": f"c-{n:04d}", "email": f"p{n}@example.ru"} for n in range(1200)))
    commit(engine, good.head(10))
    before = snapshot(engine), _count(engine, contact_imports), _count(engine, audit_log)
    with engine.begin() as conn:  # the database refuses row 1,150: two batches of 500 are already written
        if engine.dialect.name == "sqlite":
            conn.execute(sa.text("CREATE TRIGGER boom BEFORE INSERT ON contacts WHEN NEW.external_id = 'c-1150' BEGIN SELECT RAISE(ABORT, 'disk full'); END"))
        else:
            conn.execute(sa.text("CREATE FUNCTION boom() RETURNS trigger AS $$ BEGIN IF NEW.external_id = 'c-1150' THEN RAISE EXCEPTION 'disk full'; END IF; RETURN NEW; END $$ LANGUAGE plpgsql"))
            conn.execute(sa.text("CREATE TRIGGER boom BEFORE INSERT ON contacts FOR EACH ROW EXECUTE FUNCTION boom()"))
    assert store.BATCH_SIZE < 1150

    with pytest.raises(sa.exc.DatabaseError, match="disk full"):
        commit(engine, good)

    assert (snapshot(engine), _count(engine, contact_imports), _count(engine, audit_log)) == before


KILLED_BETWEEN_CONTACTS_AND_CONSENTS = """
import os, signal, sys
from datetime import UTC, datetime
import sqlalchemy as sa
from orchestrator_assets.imports import new_contacts
from orchestrator_assets.imports.commit import ImportSource, commit_import
from orchestrator_assets.imports.reading import read_contacts_file
from orchestrator_assets.imports.validation import validate_contact_rows
from policies.tenants import ImportMode
from resources.opstore_schema import contacts

good = validate_contact_rows(read_contacts_file(sys.argv[2]).frame).good
good.attrs["source_file"] = "demo_contacts.csv"

def killed(conn, *args, **kwargs):
    written = conn.execute(sa.select(sa.func.count()).select_from(contacts)).scalar_one()
    print(written, flush=True)  # the contacts are in the open transaction when the process dies
    os.kill(os.getpid(), signal.SIGKILL)

new_contacts.record_first_decisions = killed  # the sample's contacts are all new
with sa.create_engine(sys.argv[1]).begin() as conn:
    commit_import(conn, "acme", good, ImportSource.of(good), ImportMode.VALID_ROWS_ONLY, datetime.now(UTC), actor="test")
"""


def test_a_process_killed_between_contacts_and_consents_leaves_neither(engine):
    commit(engine, rows(ANNA))
    before = snapshot(engine), _count(engine, contact_imports)
    done = subprocess.run(
        [sys.executable, "-c", KILLED_BETWEEN_CONTACTS_AND_CONSENTS, engine.url.render_as_string(hide_password=False), str(SAMPLE_PATH)],
        capture_output=True, text=True, timeout=120, cwd=Path(__file__).resolve().parents[1],
    )

    assert done.returncode == -signal.SIGKILL, done.stderr
    assert int(done.stdout) > 1000  # the sample's contacts were written, uncommitted
    assert (snapshot(engine), _count(engine, contact_imports)) == before


def _write_csv(path: Path, *records: dict[str, str]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows({**dict.fromkeys(CSV_COLUMNS, ""), **record} for record in records)
    return path


def _materialize(instance, path: Path, commit_config: dict | None = None) -> dg.ExecuteInProcessResult:
    ops = {IMPORT_OP: {"config": {"csv_path": str(path)}}}
    if commit_config:
        ops[COMMIT_OP] = {"config": commit_config}
    return dg.materialize(
        [contact_import_rows, commit_contact_import], instance=instance, partition_key="acme",
        resources={"opstore": OperationalStore()}, run_config={"ops": ops}, raise_on_error=False,
    )


def test_an_all_or_nothing_run_with_a_bad_row_fails_with_the_report_and_writes_nothing(algor_home, instance, tmp_path):
    path = _write_csv(tmp_path / "crm.csv", {**BORIS, "phone": "12"}, {**ANNA})

    result = _materialize(instance, path, {"import_mode": "all_or_nothing"})

    assert not result.success
    (failure,) = [e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_FAILURE]
    assert "1 rejected row(s) and import_mode all_or_nothing: nothing was imported" in failure.step_failure_data.user_failure_data.description
    assert failure.step_failure_data.user_failure_data.metadata["error_report"].value.endswith("crm.errors.csv")
    materialized = [e.materialization.asset_key.path for e in result.get_asset_materialization_events()]
    assert materialized == [["imports", "contact_import_rows"]]  # no contacts, no consents
    with OperationalStore().engine().connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(contacts)).scalar_one() == 0


def test_the_tenants_import_mode_is_the_default_of_its_runs(algor_home, instance, tmp_path, monkeypatch):
    config = shutil.copytree(loader.DEFAULT_CONFIG_DIR, tmp_path / "config")
    tenants = (loader.DEFAULT_CONFIG_DIR / loader.TENANTS_FILE).read_text(encoding="utf-8")
    (config / loader.TENANTS_FILE).write_text(tenants.replace("  acme:\n", "  acme:\n    import_mode: all_or_nothing\n"), encoding="utf-8")
    monkeypatch.setattr(loader, "DEFAULT_CONFIG_DIR", config)
    path = _write_csv(tmp_path / "crm.csv", {**BORIS, "phone": "12"}, {**ANNA})

    assert not _materialize(instance, path).success
    overridden = _materialize(instance, path, {"import_mode": "valid_rows_only"})

    assert overridden.success
    (materialization,) = [m for m in overridden.asset_materializations_for_node(COMMIT_OP) if m.asset_key.path == ["contacts", "contacts"]]
    assert (materialization.metadata["import_id"].value, materialization.metadata["inserted"].value) == (1, 1)
    assert materialization.metadata["rows_rejected"].value == 1
    with OperationalStore().engine().connect() as conn:
        assert conn.execute(sa.select(contact_imports.c.content_sha256)).scalar_one() == hashlib.sha256(path.read_bytes()).hexdigest()


def test_no_file_writes_no_import(algor_home, instance):
    result = dg.materialize([contact_import_rows, commit_contact_import], instance=instance, partition_key="acme", resources={"opstore": OperationalStore()})
    assert result.success
    with OperationalStore().engine().connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(contact_imports)).scalar_one() == 0



def test_custom_fields_are_stored_kept_where_a_later_file_is_blank_and_restored_by_rollback(engine):
    first = rows({"external_id": "c-1", "email": "a@example.ru"})
    first["custom_fields"] = ['{"vip":true,"orders":3}']
    commit(engine, first)
    before = snapshot(engine)
    later = rows({"external_id": "c-1", "email": "a@example.ru"}, file="crm-2.csv")
    later["custom_fields"] = ['{"orders":4}']
    result = commit(engine, later)
    with engine.connect() as conn:
        stored = conn.execute(sa.select(contacts.c.custom_fields).where(contacts.c.external_id == "c-1")).scalar_one()
    assert json.loads(stored) == {"orders": 4, "vip": True}
    assert result.contacts["updated"] == 1
    with engine.begin() as conn:
        rollback_import(conn, result.import_id, operator="anna@ops.example.ru", reason="wrong file", force=False, now=NOW)
    assert snapshot(engine) == before
