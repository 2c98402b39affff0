"""Trigger campaigns end to end: a signed Telegram /start over real HTTP → gateway → inbox →
delivery processing on a real instance → consent granted with evidence → trigger sensor → the
welcome run → the sandbox got the welcome once; a second /start sends nothing more."""

from __future__ import annotations

import datetime as dt
import itertools
import json
import time

import dagster as dg
import httpx
import pytest
import sqlalchemy as sa
import sealed
from flow import metadata, process_inbox, running_stack

from definitions import defs
from policies.loader import load_bundle, load_tenants
from resources.opstore import OperationalStore
from resources.opstore_schema import consent_events, contacts, deliveries, sends, trigger_events
from consents import consent_status
from resources.settings import get_settings
from sandbox.outcomes import outcome_for
from sensors.campaigns import CAMPAIGN_OP
from sensors.triggers import trigger_campaign_sensor, trigger_run_requests

_update_ids = itertools.count(int(time.time()))


def chat_in_bucket(outcome: str) -> int:
    """A private chat id the sandbox treats with ``outcome`` (``click``: it presses a button)."""
    return next(n for n in range(800_000, 900_000) if outcome_for("telegram", str(n)) == outcome)


def post_start(gateway_url: str, chat: int, when: dt.datetime) -> httpx.Response:
    """A /start update as Telegram posts it: JSON with the bot's secret-token header."""
    secret = get_settings().secret(load_tenants().tenants["demo"].accounts.telegram.webhook_secret_env)
    update = {
        "update_id": next(_update_ids),
        "message": {
            "message_id": 1,
            "from": {"id": chat, "is_bot": False, "first_name": "Ирина"},
            "chat": {"id": chat, "type": "private"},
            "date": int(when.timestamp()),
            "text": "/start",
            "entities": [{"offset": 0, "length": 6, "type": "bot_command"}],
        },
    }
    return httpx.post(f"{gateway_url}/hooks/demo/telegram", json=update, headers={"X-Telegram-Bot-Api-Secret-Token": secret})


def evaluate_trigger_sensor(instance: dg.DagsterInstance, cursor: str | None) -> dg.SensorResult:
    return trigger_campaign_sensor(dg.build_sensor_context(instance=instance, cursor=cursor, resources={"opstore": OperationalStore()}))


def run(instance: dg.DagsterInstance, request: dg.RunRequest) -> dg.ExecuteInProcessResult:
    """Execute a sensor's run request the way the daemon would launch it."""
    result = defs.resolve_job_def("campaign_pipeline_job").execute_in_process(
        instance=instance, partition_key=request.partition_key, run_config=request.run_config, asset_selection=request.asset_selection, tags=request.tags
    )
    assert result.success
    return result


def test_telegram_start_grants_consent_and_sends_the_welcome_exactly_once(algor_home, instance, monkeypatch):
    chat = chat_in_bucket("click")
    engine = OperationalStore().engine()
    with running_stack(monkeypatch) as stack:
        assert post_start(stack.gateway_url, chat, dt.datetime.now(dt.UTC)).status_code == 200
        _, inbox_cursor = process_inbox(instance)

        with engine.connect() as conn:
            (contact,) = sealed.contacts_with(conn, "demo", "telegram_chat_id", chat)
            newcomer = sealed.newcomer_external_id(conn, "demo", "telegram", chat)
            (fact,) = conn.execute(sa.select(consent_events).where(consent_events.c.contact_id == contact.id)).all()
        assert contact.external_id == newcomer
        assert consent_status(engine, contact.id, "telegram") == "granted"
        assert (fact.action, fact.channel, fact.purpose, fact.source_kind) == ("grant", "telegram", "advertising", "bot_command")
        assert json.loads(fact.detail)["reason"] == "command:/start"

        first = evaluate_trigger_sensor(instance, None)
        (request,) = first.run_requests
        assert evaluate_trigger_sensor(instance, None).run_requests[0].run_key == request.run_key  # stable
        assert request.run_key.startswith("trigger:demo:telegram_welcome:") and request.partition_key == "demo"
        assert request.run_config["ops"][CAMPAIGN_OP]["config"] == {"campaign": "telegram_welcome", "contact_ids": [contact.id]}
        sent = metadata(run(instance, request), "sends/campaign_sends")
        assert sent["sent"] == 1

        welcome = [m for m in stack.sandbox_messages("telegram") if m["recipient"] == str(chat)]
        assert len(welcome) == 1 and welcome[0]["text"].startswith("Здравствуйте! Это бот «Ромашки».")

        # The sandbox presses the welcome's button (a "click" chat); the gateway answers the press
        # in its webhook answer, and processing counts the click on the welcome send.
        stack.wait_for_callbacks()
        queries = httpx.get(f"{stack.sandbox_url}/_sandbox/telegram/callback_queries").json()["callback_queries"]
        (query,) = [q for q in queries if q["chat"] == str(chat)]
        assert query["answer"] == {"via": "webhook reply", "text": None, "show_alert": False}
        _, inbox_cursor = process_inbox(instance, inbox_cursor)
        with engine.connect() as conn:
            status = conn.execute(
                sa.select(deliveries.c.status).join(sends).where(sends.c.contact_id == contact.id, sends.c.campaign == "telegram_welcome")
            ).scalar_one()
        assert status == "clicked"

        # A second /start: recorded, the sensor launches a run for it, and the ledger sends nothing.
        assert post_start(stack.gateway_url, chat, dt.datetime.now(dt.UTC) + dt.timedelta(seconds=5)).status_code == 200
        process_inbox(instance, inbox_cursor)
        second = evaluate_trigger_sensor(instance, first.cursor)
        (again,) = second.run_requests
        assert again.run_key != request.run_key
        resent = metadata(run(instance, again), "sends/campaign_sends")
        assert (resent["sent"], resent["skipped_already_sent"]) == (0, 1)
        assert len([m for m in stack.sandbox_messages("telegram") if m["recipient"] == str(chat)]) == 1
        assert evaluate_trigger_sensor(instance, second.cursor).run_requests == []
        with engine.connect() as conn:
            assert conn.execute(sa.select(sa.func.count()).where(trigger_events.c.contact_id == contact.id)).scalar_one() == 2


# --- the sensor's planning step on a real store -------------------------------------------------


@pytest.fixture
def store(algor_home):
    store = OperationalStore()
    store.migrate()
    return store.engine()


def record(engine: sa.Engine, tenant: str, event: str, occurred_at: dt.datetime) -> int:
    with engine.begin() as conn:
        contact_id = conn.execute(
            sa.insert(contacts)
            .values(tenant=tenant, external_id=f"x{next(_update_ids)}", created_at=occurred_at, updated_at=occurred_at)
            .returning(contacts.c.id)
        ).scalar_one()
        conn.execute(
            sa.insert(trigger_events).values(
                tenant=tenant, event=event, contact_id=contact_id, inbox_id=next(_update_ids), occurred_at=occurred_at, recorded_at=occurred_at
            )
        )
    return contact_id


def test_stale_occurrences_and_events_no_campaign_listens_to_start_nothing_but_move_the_cursor(store):
    now = dt.datetime(2026, 11, 30, 12, 0, tzinfo=dt.UTC)
    stale = record(store, "demo", "telegram_start", now - dt.timedelta(minutes=61))  # max_delay_minutes: 60
    fresh = record(store, "demo", "telegram_start", now - dt.timedelta(minutes=59))
    record(store, "demo", "vk_message_allow", now)  # demo has no campaign triggered by it
    record(store, "acme", "telegram_start", now)  # acme has no trigger campaign at all
    with store.connect() as conn:
        requests, cursor = trigger_run_requests(conn, load_bundle().campaigns, {}, now)
        assert trigger_run_requests(conn, load_bundle().campaigns, cursor, now) == ([], cursor)
    (request,) = requests
    assert request.run_config["ops"][CAMPAIGN_OP]["config"]["contact_ids"] == [fresh] != [stale]
    assert request.run_key == "trigger:demo:telegram_welcome:1-3"
    assert cursor == {"demo": 3, "acme": 4}


def test_a_trigger_campaign_never_runs_without_its_contacts(algor_home, instance):
    with pytest.raises(dg.Failure, match="starts on telegram_start"):
        defs.resolve_job_def("campaign_pipeline_job").execute_in_process(
            instance=instance,
            partition_key="demo",
            run_config={"ops": {CAMPAIGN_OP: {"config": {"campaign": "telegram_welcome"}}}},
            asset_selection=[dg.AssetKey(["campaigns", "campaign_messages"])],
        )
