"""The data subject's rights after a real campaign, on SQLite and on PostgreSQL: the database files
hold no plaintext personal data, an export holds all of it, and an erasure leaves none of it
readable while the campaign's totals stay as they were.

One demo flow per store (import of the shipped sample, the campaign over the provider sandbox,
callbacks, reports) serves the tests of this module in order: the export test reads, the
erasure test erases.
"""

from __future__ import annotations

import base64
import contextlib
import csv
import json
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import pytest
import sqlalchemy as sa

from definitions import defs
from flow import build_reports, funnel_rows, process_inbox, run_pipeline, running_stack
from gateway.inbox import store_callbacks
from orchestrator_assets.contact_export import UNREADABLE
from orchestrator_assets.contact_pii import read_contacts
from orchestrator_assets.imports.sample_contacts import SAMPLE_PATH
from pg import create_database, drop_database
from resources.opstore import OperationalStore
from resources.opstore_schema import audit_log, contacts, metadata, sends, webhook_inbox
from resources.pii import PiiKeyError, tenant_cipher
from resources.settings import get_settings
from resources.warehouse import EVENTS_TABLE, Warehouse

TENANT = "demo"
PII_FIELDS = ("first_name", "last_name", "email", "phone", "telegram_chat_id", "vk_user_id")
PRODUCTION_INSTANCE_YAML = Path(__file__).resolve().parents[1] / "deploy" / "production" / "dagster.yaml"


@dataclass
class Deployment:
    store: str  # sqlite | postgresql
    instance: dg.DagsterInstance
    home: Path
    url: str


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def after_demo(request, tmp_path_factory):
    """The demo flow, run once per store; yields the deployment it leaves."""
    root = tmp_path_factory.mktemp(request.param)
    with pytest.MonkeyPatch.context() as monkeypatch, contextlib.ExitStack() as cleanup:
        for name in ("ALGOR_ENV", "ALGOR_DATABASE_URL", "ALGOR_WAREHOUSE_DSN", "ALGOR_MASTER_KEY", "ALGOR_MASTER_KEY_PREVIOUS", "ALGOR_ALLOW_SANDBOX_WITH"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("ALGOR_HOME", str(root / "algor"))
        if request.param == "postgresql":
            store_url, dagster_url = create_database("algor_store"), create_database("algor_dagster")
            for url in (store_url, dagster_url):
                cleanup.callback(drop_database, url)  # last: after the instance and the engine let go
            monkeypatch.setenv("ALGOR_DATABASE_URL", store_url)
            monkeypatch.setenv("ALGOR_ALLOW_SANDBOX_WITH", "ALGOR_DATABASE_URL")
            monkeypatch.setenv("ALGOR_DAGSTER_PG_URL", dagster_url.replace("postgresql+psycopg://", "postgresql+psycopg2://"))
            (root / "dagster_home").mkdir()
            shutil.copy(PRODUCTION_INSTANCE_YAML, root / "dagster_home" / "dagster.yaml")
            instance = dg.DagsterInstance.from_config(str(root / "dagster_home"))
            cleanup.callback(instance.dispose)
        else:
            (root / "dagster_home").mkdir()
            instance = cleanup.enter_context(dg.instance_for_test(temp_dir=str(root / "dagster_home"), overrides={"concurrency": {"pools": {"default_limit": 1}}}))
        cleanup.callback(lambda: OperationalStore().engine().dispose())
        with running_stack(monkeypatch) as stack:
            run_pipeline(instance, TENANT)
            stack.wait_for_callbacks()
            _store_callbacks_naming_a_phone()
            process_inbox(instance)
        build_reports(instance)
        yield Deployment(request.param, instance, root / "algor", get_settings().database_url)


def _engine() -> sa.Engine:
    return OperationalStore().engine()


def _wamid(digits: str) -> str:
    """A WhatsApp message id as Meta makes them: base64 of a record holding the recipient's phone."""
    return "wamid." + base64.b64encode(b"\x18\x0b" + digits.encode() + b"\x15\x02\x00\x11\x18\x129A3CA5B3D4CD6E67E7").decode()


def _store_callbacks_naming_a_phone() -> None:
    """Callbacks whose event ids spell an emailed contact's phone without "+", stored by the
    gateway's write path: SMSC's status ("<id>:<digits>:<status>") and incoming "stop"
    ("in:<id>:<digits>": a consent withdrawal citing it), a 360dialog status ("<wamid>:<status>"),
    and a Mailgun event about the contact's send whose id holds the phone, so a warehouse event is
    made from it. The demo sends no SMS or WhatsApp: the SMSC status and the wamid find no send."""
    with _engine().connect() as conn:
        cipher = tenant_cipher(conn, TENANT)
        emailed = conn.execute(sa.select(sends.c.contact_id, sends.c.send_id).where(sends.c.tenant == TENANT, sends.c.channel == "email")).all()
        people = read_contacts(conn, cipher, [contact_id for contact_id, _ in emailed])
    send_id, digits = next((send_id, people[contact_id]["phone"].lstrip("+")) for contact_id, send_id in emailed if people[contact_id].get("phone"))
    status = {"statuses": [{"id": _wamid(digits), "status": "delivered", "timestamp": str(int(time.time())), "recipient_id": digits}]}
    mailgun = {"event-data": {"id": f"ev-{digits}", "event": "delivered", "timestamp": time.time(), "user-variables": {"send_id": send_id}}}
    store_callbacks(_engine(), TENANT, "smsc", [(f"900001:{digits}:1", {"id": "900001", "phone": digits, "status": "1"})])
    store_callbacks(_engine(), TENANT, "smsc", [(f"in:900002:{digits}", {"id": "900002", "phone": digits, "mes": "stop"})])
    store_callbacks(_engine(), TENANT, "d360", [(f"{_wamid(digits)}:delivered", {"entry": [{"changes": [{"value": status}]}]})])
    store_callbacks(_engine(), TENANT, "mailgun", [(f"ev-{digits}", mailgun)])


def _database_bytes(deployment: Deployment) -> bytes:
    """What someone who copies the store gets: the SQLite file and its WAL, or a pg_dump."""
    if deployment.store == "sqlite":
        path = Path(deployment.url.split("///", 1)[1])
        return b"".join(p.read_bytes() for p in path.parent.glob(path.name + "*"))
    libpq_url = deployment.url.replace("postgresql+psycopg://", "postgresql://")
    return subprocess.run(["pg_dump", "--no-owner", libpq_url], check=True, capture_output=True, timeout=120).stdout


def _sample_values() -> set[str]:
    """The sample's phones, e-mails, names and chat ids, as written and as stored (normalised)."""
    with SAMPLE_PATH.open(encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    with _engine().connect() as conn:
        cipher = tenant_cipher(conn, TENANT)
        ids = conn.execute(sa.select(contacts.c.id).where(contacts.c.tenant == TENANT)).scalars().all()
        stored = read_contacts(conn, cipher, ids).values()
    values = {row[field] for row in rows for field in ("first_name", "last_name", "email", "phone", "telegram_chat_id")}
    values |= {str(fields[field]) for fields in stored for field in PII_FIELDS if fields.get(field) is not None}
    # 8 bytes at least: a shorter value turns up by chance in megabytes of ciphertext.
    return {value for value in values if len(value.strip().encode()) >= 8}


def _without_plus(values: set[str]) -> set[str]:
    """Phones also as SMSC and WhatsApp spell them: digits without "+", and inside a wamid."""
    digits = {value.lstrip("+") for value in values if value.startswith("+")}
    return digits | {_wamid(value) for value in digits}


def test_database_files_hold_no_plaintext_personal_data(after_demo):
    known = _sample_values()
    known |= _without_plus(known)
    assert len(known) > 2000
    data = _database_bytes(after_demo)
    leaked = sorted(value for value in known if value.encode() in data)
    assert leaked == [], f"{len(leaked)} sample values in plaintext, e.g. {leaked[:5]} in {_columns_holding(leaked[:20])}"


def test_provider_message_ids_hold_no_plaintext_personal_data(after_demo):
    """Telegram's ids are "<chat id>:<message id>", SMSC's "<id>:<phone digits>": the ledger keeps
    the person's part as a blind index (orchestrator_assets/provider_ids.py), phones without "+" too."""
    known = _sample_values()
    known |= _without_plus(known)
    with _engine().connect() as conn:
        ids = [row.provider_message_id for row in conn.execute(sa.select(sends.c.provider_message_id).where(sends.c.provider_message_id.is_not(None)))]
    assert any(value.startswith("tg:") for value in ids)  # the demo sends over Telegram: the check has something to check
    text = "\n".join(ids)
    assert sorted(value for value in known if value in text) == []


def test_callback_event_keys_hold_no_plaintext_personal_data(after_demo):
    """SMSC's event ids spell the phone, 360dialog's hold a wamid: the inbox keeps every event id as
    its keyed hash (resources/event_keys.py), and so do the warehouse events made from them (and the
    tenants' webhook event ids, which are derived from the warehouse's)."""
    known = _sample_values()
    known |= _without_plus(known)
    with _engine().connect() as conn:
        inbox = conn.execute(sa.select(webhook_inbox.c.provider, webhook_inbox.c.event_key).where(webhook_inbox.c.tenant == TENANT)).all()
    with Warehouse().client() as client:
        result = client.query(f"select event_id from {EVENTS_TABLE} where tenant = '{TENANT}' and startsWith(event_id, 'mailgun:')")
        event_ids = [row["event_id"] for row in result.named_results()]
    assert {"smsc", "d360", "mailgun"} <= {provider for provider, _ in inbox} and event_ids  # something to check
    text = "\n".join([key for _, key in inbox] + event_ids)
    assert sorted(value for value in known if value in text) == []


def _columns_holding(values: list[str]) -> list[str]:
    """Where in the store's text columns the values are (what a failure has to say)."""
    found = set()
    with _engine().connect() as conn:
        for table in metadata.sorted_tables:
            for column in (c for c in table.c if isinstance(c.type, sa.String | sa.Text)):
                for value in values:
                    if conn.execute(sa.select(sa.func.count()).where(column.contains(value, autoescape=True))).scalar_one():
                        found.add(f"{table.name}.{column.name}")
    return sorted(found)


def _sent_contacts(conn: sa.Connection, channel: str, count: int) -> list[tuple[int, str]]:
    query = (
        sa.select(contacts.c.id, contacts.c.external_id)
        .join(sends, sends.c.contact_id == contacts.c.id)
        .where(contacts.c.tenant == TENANT, sends.c.channel == channel, sends.c.status == "sent")
        .order_by(contacts.c.id)
        .limit(count)
    )
    return [tuple(row) for row in conn.execute(query)]


def test_export_holds_everything_about_one_contact_and_run_metadata_none_of_it(after_demo):
    with _engine().connect() as conn:
        ((contact_id, external_id),) = _sent_contacts(conn, "email", 1)
        fields = read_contacts(conn, tenant_cipher(conn, TENANT), [contact_id])[contact_id]
    result = defs.resolve_job_def("contact_export_job").execute_in_process(
        instance=after_demo.instance,
        partition_key=TENANT,
        run_config={"ops": {"export_contact": {"config": {"external_id": external_id, "operator": "dpo@shop.example"}}}},
    )
    assert result.success
    path = after_demo.home / "exports" / TENANT / f"{external_id}.json"
    assert os.stat(path).st_mode & 0o777 == 0o600
    document = json.loads(path.read_text(encoding="utf-8"))
    assert document["contact"]["personal_data"] == {k: v for k, v in fields.items() if v is not None}
    assert {send["address"] for send in document["sends"] if send["channel"] == "email"} == {fields["email"]}
    assert len(document["deliveries"]) >= 1 and {d["send_id"] for d in document["deliveries"]} <= {s["send_id"] for s in document["sends"]}
    assert document["segment_members"] and document["consent_events"]
    assert "data_key" not in document["contact"] and "email_bidx" not in document["contact"]
    # The run says where the file is, and nothing personal.
    output_metadata = {k: str(v.value) for event in result.all_events if event.is_successful_output for k, v in event.step_output_data.metadata.items()}
    assert output_metadata["export"] == str(path)
    shown = json.dumps(output_metadata, ensure_ascii=False)
    assert not any(str(value) in shown for value in fields.values() if value)
    with _engine().connect() as conn:
        audit = conn.execute(sa.select(audit_log).where(audit_log.c.action == "contact.export")).one()
    assert json.loads(audit.params)["contact_id"] == contact_id and audit.actor == "dpo@shop.example"


def _sealed_blobs(conn: sa.Connection, contact_id: int) -> list[tuple[str, bytes]]:
    """Every sealed value stored about the contact, in every table that names contacts."""
    blobs = []
    for table in metadata.sorted_tables:
        if "contact_id" not in table.c or table is contacts:
            continue
        for column in (c for c in table.c if isinstance(c.type, sa.LargeBinary)):
            query = sa.select(column).where(table.c.contact_id == contact_id, column.is_not(None))
            blobs += [(f"{table.name}.{column.name}", bytes(blob)) for blob in conn.execute(query).scalars()]
    return blobs


def test_erasure_leaves_nothing_readable_and_the_funnel_as_it_was(after_demo):
    funnel_before = funnel_rows()
    with _engine().connect() as conn:
        victims = _sent_contacts(conn, "email", 2) + _sent_contacts(conn, "telegram", 2)
        cipher = tenant_cipher(conn, TENANT)
        keys = dict(conn.execute(sa.select(contacts.c.id, contacts.c.data_key).where(contacts.c.id.in_([c for c, _ in victims]))).all())
        blobs = {contact_id: _sealed_blobs(conn, contact_id) for contact_id, _ in victims}
    assert all(blobs.values())  # their send addresses (and consent evidence) are sealed with their keys …
    assert all(cipher.open(keys[c], blob) for c, found in blobs.items() for _, blob in found)  # … and open before
    external_ids = [external_id for _, external_id in victims]

    def erase(ids: list[str]) -> dg.ExecuteInProcessResult:
        config = {"external_ids": ids, "operator": "dpo@shop.example", "reason": "letter of 2026-12-01 (152-FZ art. 21)"}
        return defs.resolve_job_def("contact_erasure_job").execute_in_process(
            instance=after_demo.instance, partition_key=TENANT, run_config={"ops": {"erase_contacts": {"config": config}}}, raise_on_error=False
        )

    refused = erase([external_ids[0], "no-such-contact"])  # a typo erases nothing
    assert not refused.success
    with _engine().connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).where(contacts.c.erased_at.is_not(None))).scalar_one() == 0

    assert erase(external_ids).success
    with _engine().connect() as conn:
        erased = conn.execute(sa.select(contacts).where(contacts.c.id.in_(keys))).mappings().all()
        remaining_keys = [bytes(k) for k in conn.execute(sa.select(contacts.c.data_key).where(contacts.c.data_key.is_not(None))).scalars()]
        cipher = tenant_cipher(conn, TENANT)
        assert read_contacts(conn, cipher, keys) == dict.fromkeys(keys, {})
        assert {row["id"]: _sealed_blobs(conn, row["id"]) for row in erased} == blobs  # the proofs stay, as they were …
        audit = conn.execute(sa.select(audit_log.c.params).where(audit_log.c.action == "contact.erase")).scalars().all()
    for row in erased:
        assert row["erased_at"] is not None and row["external_id"] in external_ids
        assert all(row[column] is None for column in ("data_key", "pii", "email_bidx", "phone_bidx", "telegram_bidx", "city"))
    for _, found in blobs.items():  # … and no key left in the store opens any of them
        for _, blob in found:
            for wrapped in remaining_keys:
                with pytest.raises(PiiKeyError):
                    cipher.open(wrapped, blob)
    assert sorted(json.loads(params)["external_id"] for params in audit) == sorted(external_ids)

    # Dagster's stored outputs lost their rows too.
    messages = defs.load_asset_value(["campaigns", "campaign_messages"], partition_key=TENANT, instance=after_demo.instance)
    assert not set(messages["contact_id"]) & set(keys)
    rows = defs.load_asset_value(["imports", "contact_import_rows"], partition_key=TENANT, instance=after_demo.instance)
    assert not set(rows["external_id"]) & set(external_ids)

    # The funnel counts them as before.
    build_reports(after_demo.instance)
    assert funnel_rows() == funnel_before

    # Asked again: done already, nothing more recorded; their export says what is left.
    assert erase(external_ids[:1]).success
    with _engine().connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).where(audit_log.c.action == "contact.erase")).scalar_one() == len(external_ids)
    assert defs.resolve_job_def("contact_export_job").execute_in_process(
        instance=after_demo.instance,
        partition_key=TENANT,
        run_config={"ops": {"export_contact": {"config": {"external_id": external_ids[0], "operator": "dpo@shop.example"}}}},
    ).success
    document = json.loads((after_demo.home / "exports" / TENANT / f"{external_ids[0]}.json").read_text(encoding="utf-8"))
    assert document["contact"]["personal_data"] == {} and document["contact"]["erased_at"]
    assert {send["address"] for send in document["sends"]} == {UNREADABLE}
    assert "contact.erase" in [row["action"] for row in document["audit_log"]]
