"""The operator's key duties: a new tenant data key version and a new master key, each while the
store keeps being read, on a real SQLite or PostgreSQL store filled by the sample import."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import pytest
import sqlalchemy as sa

from jobs.privacy import pii_key_rotation_job
from orchestrator_assets.contact_pii import find_contact_id, read_contacts
from orchestrator_assets.contacts import commit_contact_import
from orchestrator_assets.imports.assets import contact_import_rows
from orchestrator_assets.imports.sample_contacts import SAMPLE_PATH
from conftest import DEPLOYMENT_VARS
from pg import create_database, drop_database
from resources.opstore import OperationalStore
from resources.opstore_schema import audit_log, tenant_keys
from resources.opstore_schema import contacts as contacts_table
from resources.pii import PiiKeyError, contact_key_version, tenant_cipher, unwrap_tenant_key
from resources.settings import get_settings

TENANT = "demo"


@dataclass
class Imported:
    home: Path  # the embedded deployment's home: its master key (and SQLite store)
    url: str | None  # the PostgreSQL store, or None for the embedded SQLite file
    plaintext: dict[int, dict]


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def imported_once(request, tmp_path_factory):
    """The sample imported once per store for the module (an import of the 1,000 contacts costs
    seconds); each test rotates keys on a copy of it, see ``imported``."""
    root = tmp_path_factory.mktemp(f"imported-{request.param}")
    with pytest.MonkeyPatch.context() as monkeypatch, contextlib.ExitStack() as cleanup:
        for name in DEPLOYMENT_VARS:
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("ALGOR_HOME", str(root / "algor"))
        url = None
        if request.param == "postgresql":
            url = create_database()
            cleanup.callback(drop_database, url)
            monkeypatch.setenv("ALGOR_DATABASE_URL", url)
            monkeypatch.setenv("ALGOR_ALLOW_SANDBOX_WITH", "ALGOR_DATABASE_URL")
        (root / "dagster_home").mkdir()
        with dg.instance_for_test(temp_dir=str(root / "dagster_home")) as instance:
            result = dg.materialize(
                [contact_import_rows, commit_contact_import],
                instance=instance,
                partition_key=TENANT,
                resources={"opstore": OperationalStore()},
                run_config={"ops": {"imports__contact_import_rows": {"config": {"csv_path": str(SAMPLE_PATH)}}}},
            )
        assert result.success
        with OperationalStore().engine().connect() as conn:
            ids = conn.execute(sa.select(contacts_table.c.id)).scalars().all()
            plaintext = read_contacts(conn, tenant_cipher(conn, TENANT), ids)
        OperationalStore().engine().dispose()  # a template database must have no sessions; the SQLite file is copied quiet
        yield Imported(root / "algor", url, plaintext)


@pytest.fixture
def imported(imported_once, algor_home, monkeypatch) -> dict[int, dict]:
    """The sample imported for the demo tenant, in a store of the test's own (a copy of the
    module's: the home with its master key, and the PostgreSQL database made from it as a
    template); its contacts' plaintext by id."""
    shutil.copytree(imported_once.home, algor_home)
    if imported_once.url is None:
        yield imported_once.plaintext
        return
    url = create_database(template=imported_once.url)
    monkeypatch.setenv("ALGOR_DATABASE_URL", url)
    monkeypatch.setenv("ALGOR_ALLOW_SANDBOX_WITH", "ALGOR_DATABASE_URL")
    try:
        yield imported_once.plaintext
    finally:
        OperationalStore().engine().dispose()
        drop_database(url)


def _rotate(instance: dg.DagsterInstance, **config) -> dg.ExecuteInProcessResult:
    run_config = {"ops": {"rotate_pii_keys": {"config": {"operator": "keys@ops.example", **config}}}}
    result = pii_key_rotation_job.execute_in_process(instance=instance, run_config=run_config, resources={"opstore": OperationalStore()})
    assert result.success
    return result


def _read_all(conn: sa.Connection, cipher=None) -> dict[int, dict]:
    ids = conn.execute(sa.select(contacts_table.c.id)).scalars().all()
    return read_contacts(conn, cipher or tenant_cipher(conn, TENANT), ids)


def test_a_new_data_key_version_rewraps_every_contact_key_and_retires_the_old(imported, instance):
    engine = OperationalStore().engine()
    with engine.connect() as conn:
        before = tenant_cipher(conn, TENANT)  # a step that started before the rotation …
        anyone = next(fields for fields in imported.values() if fields.get("email"))

    _rotate(instance, mode="rotate_data_key", tenant=TENANT, batch_size=128)  # 8 batches for the sample's 1,000

    with engine.connect() as conn:
        assert _read_all(conn, before) == imported  # … reads on after it
        assert _read_all(conn) == imported  # and so does one that starts now
        cipher = tenant_cipher(conn, TENANT)
        assert find_contact_id(conn, cipher, "email", anyone["email"]) is not None  # blind indexes unchanged
        versions = {row.version: row.retired_at for row in conn.execute(sa.select(tenant_keys).where(tenant_keys.c.tenant == TENANT))}
        wrapped = conn.execute(sa.select(contacts_table.c.data_key)).scalars().all()
        (audit,) = conn.execute(sa.select(audit_log.c.params).where(audit_log.c.action == "pii.rotate_data_key")).scalars()
    assert versions.keys() == {1, 2} and versions[1] is not None and versions[2] is None
    assert {contact_key_version(bytes(key)) for key in wrapped} == {2}
    assert json.loads(audit) == {"new_version": 2, "contact_keys_rewrapped": len(imported), "versions_retired": [1]}

    _rotate(instance, mode="rotate_data_key", tenant=TENANT, batch_size=1000)  # again: version 3, version 2 retired
    with engine.connect() as conn:
        assert _read_all(conn) == imported
        assert conn.execute(sa.select(sa.func.count()).where(tenant_keys.c.retired_at.is_(None))).scalar_one() == 1


def test_a_new_master_key_rewraps_tenant_keys_and_the_old_one_opens_nothing(imported, instance, monkeypatch):
    engine = OperationalStore().engine()
    old, new = get_settings().master_key(), os.urandom(32)
    _rotate(instance, mode="rotate_data_key", tenant=TENANT)  # a retired version too: it must move as well

    # The new key is deployed, the old one kept beside it until the rewrap is done: reads go on.
    monkeypatch.setenv("ALGOR_MASTER_KEY", base64.b64encode(new).decode())
    monkeypatch.setenv("ALGOR_MASTER_KEY_PREVIOUS", base64.b64encode(old).decode())
    with engine.connect() as conn:
        assert _read_all(conn) == imported
    _rotate(instance, mode="rewrap")
    monkeypatch.delenv("ALGOR_MASTER_KEY_PREVIOUS")

    with engine.connect() as conn:
        assert _read_all(conn) == imported
        rows = conn.execute(sa.select(tenant_keys)).mappings().all()
    assert len(rows) == 2
    for row in rows:  # no key row in the store opens with the old master key any more
        for purpose, column in (("data-key", "wrapped_data_key"), ("index-key", "wrapped_index_key")):
            with pytest.raises(PiiKeyError):
                unwrap_tenant_key(old, purpose, TENANT, row["version"], bytes(row[column]))
    monkeypatch.setenv("ALGOR_MASTER_KEY", base64.b64encode(old).decode())
    with engine.connect() as conn, pytest.raises(PiiKeyError, match="master key"):
        tenant_cipher(conn, TENANT)


def test_rewrap_without_the_previous_key_changes_nothing(imported, instance, monkeypatch):
    engine = OperationalStore().engine()
    with engine.connect() as conn:
        before = conn.execute(sa.select(tenant_keys)).all()
    monkeypatch.setenv("ALGOR_MASTER_KEY", base64.b64encode(os.urandom(32)).decode())  # deployed without ALGOR_MASTER_KEY_PREVIOUS
    run_config = {"ops": {"rotate_pii_keys": {"config": {"operator": "keys@ops.example", "mode": "rewrap"}}}}
    result = pii_key_rotation_job.execute_in_process(instance=instance, run_config=run_config, resources={"opstore": OperationalStore()}, raise_on_error=False)
    assert not result.success
    (failure,) = [event for event in result.all_events if event.is_step_failure]
    assert "ALGOR_MASTER_KEY_PREVIOUS" in failure.step_failure_data.error.message
    with engine.connect() as conn:
        assert conn.execute(sa.select(tenant_keys)).all() == before
