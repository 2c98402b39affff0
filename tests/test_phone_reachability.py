"""contacts/phone_reachability: SMSC HLR lookups of contacts' phones, through a real Dagster
instance, against the provider sandbox and the webhook gateway over loopback HTTP.

Numbers are picked by their deterministic sandbox outcome (docs/provider-sandbox.md, SMS table):
deliver → live, undeliverable/stoplist → dead, expired → offline (settles nothing), no_route →
SMSC refuses the lookup with error 8 (dead).
"""

from __future__ import annotations

import datetime as dt
import json
import time

import httpx
import pytest
import sqlalchemy as sa
from flow import process_inbox

import sealed
from definitions import defs
from orchestrator_assets.consent_ledger import consent_state
from gateway.app import create_app
from orchestrator_assets.contact_pii import blind_index, contact_columns
from policies.loader import load_tenants
from resources.channels import smsc
from resources.connectors import sandbox_accounts
from resources.opstore import OperationalStore
from resources.opstore_schema import (
    consent_events,
    contacts,
    phone_reachability,
    webhook_inbox,
)
from resources.pii import tenant_cipher
from resources.settings import get_settings
from sandbox.config import SandboxConfig
from sandbox.outcomes import outcome_for
from sandbox.server import run_uvicorn_in_thread, running_sandbox
from consents import record

OP = "contacts__phone_reachability"
SANDBOX_LIMIT_PER_S = 2


def phone_with(outcome: str, skip: int = 0) -> str:
    matches = (f"+7916{n:07d}" for n in range(1_000_000) if outcome_for("smsc", f"7916{n:07d}") == outcome)
    for _ in range(skip):
        next(matches)
    return next(matches)


# contact id -> (phone, SMS consent); ids in the order the lookups are made (never checked: by id).
PEOPLE = {
    1: (phone_with("deliver"), "granted"),
    2: (phone_with("undeliverable"), "granted"),
    3: (phone_with("expired"), "granted"),
    4: (phone_with("no_route"), "granted"),
    5: (phone_with("stoplist"), "granted"),
    6: (phone_with("deliver", skip=1), "granted"),
    7: (phone_with("deliver", skip=2), "withdrawn"),  # may not get SMS: not worth a paid lookup
    8: (phone_with("deliver", skip=3), None),  # no SMS consent at all
    9: (None, "granted"),  # no phone
}


@pytest.fixture
def stack(algor_home, monkeypatch):
    tenants = load_tenants().tenants
    with run_uvicorn_in_thread(create_app()) as gateway_url:
        monkeypatch.setenv("ALGOR_GATEWAY_URL", gateway_url)
        accounts = sandbox_accounts(tenants, gateway_url)
        for account in accounts["smsc"]:
            account["rate_limit_per_s"] = SANDBOX_LIMIT_PER_S
        with running_sandbox(SandboxConfig.model_validate(accounts)) as sandbox_url:
            monkeypatch.setenv("ALGOR_SANDBOX_URL", sandbox_url)
            yield sandbox_url, gateway_url


@pytest.fixture
def engine(stack):
    engine = OperationalStore().engine()
    now = dt.datetime.now(dt.UTC)
    with engine.begin() as conn:
        for cid, (phone, _) in PEOPLE.items():
            sealed.add_contact(conn, "acme", f"c{cid}", now, contact_id=cid, phone=phone)
        sealed.add_contact(conn, "demo", "d1", now, contact_id=100, phone=phone_with("undeliverable", skip=1))
        granted = [(cid, status) for cid, (_, status) in PEOPLE.items() if status] + [(100, "granted")]
        for cid, status in granted:
            record(conn, "demo" if cid == 100 else "acme", cid, "sms", "grant" if status == "granted" else "withdraw", now - dt.timedelta(days=1))
    return engine


def look_up(instance, tenant: str = "acme", raise_on_error: bool = True, **config):
    job = defs.resolve_job_def("phone_reachability_job")
    return job.execute_in_process(instance=instance, partition_key=tenant, run_config={"ops": {OP: {"config": config}}}, raise_on_error=raise_on_error)


def materialized(result) -> dict:
    [event] = result.get_asset_materialization_events()
    return {key: value.value for key, value in event.materialization.metadata.items()}


def hlr_requests(sandbox_url: str) -> list[dict]:
    messages = httpx.get(f"{sandbox_url}/_sandbox/messages", params={"provider": "smsc"}).json()["messages"]
    return [m for m in messages if m["hlr"]]


def phone_index(engine, phone: str) -> str:
    with engine.connect() as conn:
        return blind_index(tenant_cipher(conn, "acme"), "phone", phone)


def reachability(engine) -> dict[int, sa.Row]:
    with engine.connect() as conn:
        return {row.contact_id: row for row in conn.execute(sa.select(phone_reachability))}


def sms_consents(engine) -> dict[int, sa.Row]:
    """Per contact, the SMS advertising decision in force: status and the event it rests on."""
    state = consent_state(dt.datetime.now(dt.UTC))
    status = sa.case((state.c.action == "grant", "granted"), else_="withdrawn").label("status")
    query = (
        sa.select(state.c.contact_id, status, consent_events.c.origin, consent_events.c.detail, consent_events.c.source_ref)
        .join(consent_events, consent_events.c.id == state.c.event_id)
        .where(state.c.channel == "sms", state.c.purpose == "advertising")
    )
    with engine.connect() as conn:
        return {row.contact_id: row for row in conn.execute(query)}


def test_hlr_lookups_record_reachability_suppress_dead_numbers_and_skip_recent_ones(engine, stack, instance):
    sandbox_url, _ = stack
    started = time.monotonic()
    first = materialized(look_up(instance, max_lookups=4, lookups_per_second=SANDBOX_LIMIT_PER_S))
    elapsed = time.monotonic() - started
    assert (first["due"], first["looked_up"], first["left_for_later"]) == (6, 4, 2)  # granted SMS consent and a phone: 1-6
    stats = httpx.get(f"{sandbox_url}/_sandbox/stats").json()["providers"]["smsc"]
    assert stats["limit_violations"] == 0 and elapsed >= 1.0  # 4 lookups at 2/s, each counted until its answer

    # Each run paces itself; the provider's window still holds the first run's last lookups.
    time.sleep(1.0 / SANDBOX_LIMIT_PER_S * 2)
    second = materialized(look_up(instance, max_lookups=50, lookups_per_second=SANDBOX_LIMIT_PER_S))
    assert (second["due"], second["looked_up"]) == (2, 2)  # 1-4 were checked moments ago: skipped
    assert sorted(m["recipient"] for m in hlr_requests(sandbox_url)) == sorted(PEOPLE[cid][0].lstrip("+") for cid in range(1, 7))
    assert first["unreachable"] + second["unreachable"] == 3 and first["sms_consents_withdrawn"] + second["sms_consents_withdrawn"] == 3

    rows = reachability(engine)
    assert {cid: row.reachable for cid, row in rows.items()} == {1: True, 2: False, 3: None, 4: False, 5: False, 6: True}
    # The phone and SMSC's lookup id ("<id>:<phone digits>") are kept as blind indexes only.
    assert json.loads(rows[1].network)["imsi"] and rows[1].lookup_bidx and rows[1].phone_bidx == phone_index(engine, PEOPLE[1][0])
    assert rows[2].reason == "status 20 (cannot deliver), err 1 (subscriber does not exist)"
    assert rows[3].reason == "status 20 (cannot deliver), err 6 (subscriber offline)"
    assert rows[4].reason.startswith("HLR request refused: 8") and rows[4].lookup_bidx is None

    # Dead numbers lose their SMS consent, with the lookup as evidence, exactly like an
    # "unreachable" send answer; live and offline ones keep it; other tenants are untouched.
    after = sms_consents(engine)
    assert {cid for cid, row in after.items() if row.status == "withdrawn"} == {2, 4, 5, 7}
    assert {after[cid].origin for cid in (2, 4, 5)} == {"smsc:hlr"}
    assert json.loads(after[2].detail)["reason"] == rows[2].reason and after[2].source_ref.startswith("hlr:")
    assert PEOPLE[2][0].lstrip("+") not in after[2].source_ref + after[2].detail  # the phone is sealed identity evidence only
    assert after[100].status == "granted"
    with engine.connect() as conn:
        facts = conn.execute(sa.select(consent_events.c.contact_id, consent_events.c.purpose).where(consent_events.c.origin == "smsc:hlr")).all()
    assert sorted(facts) == [(cid, purpose) for cid in (2, 4, 5) for purpose in ("advertising", "transactional")]  # nothing reaches a dead number

    # SMSC also posts each lookup's result as a status callback: the gateway stores it and delivery
    # processing recognises it as an HLR result (not a status of an unknown message to retry).
    deadline = time.monotonic() + 30
    while httpx.get(f"{sandbox_url}/_sandbox/stats").json()["callbacks"]["pending"]:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    requests, _ = process_inbox(instance)
    assert [r.partition_key for r in requests] == ["acme"]
    with engine.connect() as conn:
        inbox = conn.execute(sa.select(webhook_inbox.c.processed_at, webhook_inbox.c.error, webhook_inbox.c.attempts)).all()
    assert len(inbox) == 5 and all(row.processed_at is not None and row.error is None and row.attempts == 0 for row in inbox)

    # A contact whose phone changed is due again at once; nobody else is.
    with engine.begin() as conn:
        cipher = tenant_cipher(conn, "acme")
        key = conn.execute(sa.select(contacts.c.data_key).where(contacts.c.id == 6)).scalar_one()
        conn.execute(sa.update(contacts).where(contacts.c.id == 6).values(contact_columns(cipher, key, {"phone": phone_with("undeliverable", skip=2)})))
    third = materialized(look_up(instance, max_lookups=50, lookups_per_second=SANDBOX_LIMIT_PER_S))
    assert (third["due"], third["looked_up"], third["unreachable"]) == (1, 1, 1)
    assert reachability(engine)[6].reachable is False and sms_consents(engine)[6].status == "withdrawn"


def test_tenant_without_smsc_is_not_looked_up_and_a_refused_account_records_nothing(engine, stack, instance, monkeypatch):
    sandbox_url, _ = stack
    demo = look_up(instance, tenant="demo")
    assert demo.success and demo.get_asset_materialization_events() == []  # demo has no SMSC account
    assert hlr_requests(sandbox_url) == []

    monkeypatch.setenv("ALGOR_ACME_SMSC_PASSWORD", "not-the-password")  # SMSC answers error 2 to every lookup
    refused = look_up(instance, raise_on_error=False, max_lookups=3, lookups_per_second=50)
    assert not refused.success
    [failure] = [e for e in refused.all_events if e.event_type_value == "STEP_FAILURE"]
    assert "none of 3 HLR lookups reached the network (first: HLR request refused: 2: authorise error)" in str(failure.event_specific_data.error)
    assert reachability(engine) == {} and sms_consents(engine)[2].status == "granted"


def test_a_status_callback_settles_a_lookup_that_polling_left_pending(engine, stack, instance):
    _, gateway_url = stack
    digits = PEOPLE[1][0].lstrip("+")
    with engine.begin() as conn:  # SMSC had no answer yet while we polled
        conn.execute(
            sa.insert(phone_reachability).values(
                tenant="acme",
                contact_id=1,
                phone_bidx=phone_index(engine, PEOPLE[1][0]),
                reachable=None,
                reason="status -1 (awaiting send)",
                lookup_bidx=tenant_cipher(conn, "acme").index("hlr_lookup", f"9001:{digits}"),
                checked_at=dt.datetime.now(dt.UTC),
            )
        )
    form = {"id": "9001", "phone": digits, "status": "20", "err": "1", "ts": str(int(time.time()))}
    form["md5"] = smsc.sign(form, get_settings().secret("ALGOR_ACME_SMSC_PASSWORD"))
    assert httpx.post(f"{gateway_url}/hooks/acme/smsc", data=form).status_code == 200
    process_inbox(instance)
    row = reachability(engine)[1]
    assert (row.reachable, row.reason) == (False, "status 20 (cannot deliver), err 1 (subscriber does not exist)")
    consent = sms_consents(engine)[1]
    # SMSC's lookup id holds the phone: the evidence refers to the lookup by SMSC's id only, the phone is sealed.
    assert (consent.status, consent.origin, consent.source_ref) == ("withdrawn", "smsc:hlr", "hlr:9001")
    assert digits not in (consent.detail or "") and digits not in consent.source_ref
