"""Recipient policies end to end, on real Dagster runs against the provider sandbox: a local-time
schedule defers contacts whose clock has not come and the deferred-campaign sensor sends them once;
a frequency cap holds across two campaigns and a contact whose template cannot be rendered is
excluded alone (on PostgreSQL; the others on SQLite); the fallback sensor moves a bounced e-mail on to Telegram once."""

from __future__ import annotations

import datetime as dt
import shutil
import time
from zoneinfo import ZoneInfo

import dagster as dg
import pytest
import sqlalchemy as sa
import yaml
from consents import record
from flow import metadata, process_inbox, running_stack
from sealed import add_contact

from definitions import defs
from pg import create_database, drop_database
from policies import loader
from policies.loader import load_bundle
from resources.opstore import OperationalStore
from resources.opstore_schema import campaign_wakeups
from sandbox.outcomes import outcome_for
from sensors.campaigns import CAMPAIGN_OP, MESSAGES, SCHEDULED_SELECTION, SENDS_ASSET
from sensors.deferred import deferred_campaign_sensor, deferred_run_requests
from sensors.fallback import campaign_fallback_sensor

SEGMENT = {"name": "testgrad", "description": "Жители Тестограда", "rule": {"field": "city", "op": "eq", "value": "Тестоград"}}
PAST = "2026-11-20T09:00:00+03:00"


def telegram(text: str) -> dict:
    return {"channel": "telegram", "text": text}


MARKING = {"advertiser": "ООО «Ромашка», ИНН 7701234567", "erid": "2VtzqvYkmGf"}  # 38-FZ: advertising does not start without it


def campaign(name: str, channels: list[dict], schedule: dict | None = None, **extra) -> dict:
    marking = {} if extra.get("purpose") == "transactional" else {"advertising": MARKING}
    return {"name": name, "tenant": "demo", "segment": "testgrad", "schedule": schedule or {"start_at": PAST}, "channels": channels, **marking, **extra}


@pytest.fixture
def configure(algor_home, tmp_path, monkeypatch):
    """Write these campaigns (and a telegram cap of one a day for demo) into a copy of the config."""

    shipped = loader.DEFAULT_CONFIG_DIR

    def write(*campaigns: dict) -> None:
        config = shutil.copytree(shipped, tmp_path / "config", dirs_exist_ok=True)
        segments = yaml.safe_load((config / "segments.yaml").read_text(encoding="utf-8"))
        segments["segments"]["demo"].append(SEGMENT)
        policy = yaml.safe_load((config / "policy.yaml").read_text(encoding="utf-8"))
        policy["recipients"]["tenants"]["demo"]["frequency_caps"] = [{"channels": ["telegram"], "max": 1, "period": "24h"}]
        for name, data in (("segments.yaml", segments), ("policy.yaml", policy), ("campaigns.yaml", {"campaigns": list(campaigns)})):
            (config / name).write_text(yaml.safe_dump(data, allow_unicode=True, sort_keys=False), encoding="utf-8")
        monkeypatch.setattr(loader, "DEFAULT_CONFIG_DIR", config)

    return write


def chats(outcome: str, count: int, start: int = 700_000) -> list[int]:
    """Private chat ids the sandbox treats with ``outcome``."""
    found = (n for n in range(start, start + 10_000) if outcome_for("telegram", str(n)) == outcome)
    return [next(found) for _ in range(count)]


def add_people(people: list[dict], channels: tuple[str, ...] = ("telegram",)) -> list[int]:
    """Contacts of the test segment with advertising consent on ``channels``; their ids."""
    now = dt.datetime.now(dt.UTC)
    OperationalStore().migrate()
    with OperationalStore().engine().begin() as conn:
        ids = [add_contact(conn, "demo", f"p{i}", now, city="Тестоград", **person) for i, person in enumerate(people)]
        for contact_id in ids:
            for channel in channels:
                record(conn, "demo", contact_id, channel, "grant", now - dt.timedelta(days=1))
    return ids


def run(
    instance: dg.DagsterInstance, campaign_name: str | None = None, selection: list[dg.AssetKey] = list(SCHEDULED_SELECTION), request: dg.RunRequest | None = None
) -> dg.ExecuteInProcessResult:
    """A campaign run as the schedule sensor requests it (segment → messages → sends), or a sensor's request."""
    if request is None:
        request = dg.RunRequest(partition_key="demo", asset_selection=selection, run_config={"ops": {CAMPAIGN_OP: {"config": {"campaign": campaign_name}}}})
    result = defs.resolve_job_def("campaign_pipeline_job").execute_in_process(
        instance=instance, partition_key=request.partition_key, run_config=request.run_config, asset_selection=request.asset_selection, tags=request.tags
    )
    assert result.success
    return result


def sensor_context(instance: dg.DagsterInstance, cursor: str | None = None) -> dg.SensorEvaluationContext:
    return dg.build_sensor_context(instance=instance, cursor=cursor, resources={"opstore": OperationalStore()})


def received(stack, provider: str = "telegram") -> list[str]:
    return sorted(message["recipient"] for message in stack.sandbox_messages(provider))


def test_local_time_schedule_sends_each_zone_at_its_own_hour_and_the_sensor_sends_the_deferred_once(configure, instance, monkeypatch):
    moscow = ZoneInfo("Europe/Moscow")

    def evening_news(due: dt.datetime) -> dict:
        return campaign("evening_news", [telegram("Вечерние новости Тестограда")], {"local_time": due.strftime("%H:%M:%S"), "date": due.date().isoformat()})

    configure(evening_news(dt.datetime.now(moscow) + dt.timedelta(days=1)))
    east, moscow_chat, no_zone, west = chats("deliver", 4)
    add_people([{"telegram_chat_id": east, "timezone": "Asia/Vladivostok"}, {"telegram_chat_id": moscow_chat, "timezone": "Europe/Moscow"},
                {"telegram_chat_id": no_zone}, {"telegram_chat_id": west, "timezone": "America/New_York"}])
    engine = OperationalStore().engine()
    with running_stack(monkeypatch) as stack:
        run(instance, "evening_news", [SCHEDULED_SELECTION[0]])  # the segment, before the clock starts
        # Five seconds from now on Moscow's clocks: Vladivostok's showed it 7 hours ago, New York's will in 8 hours.
        due = (dt.datetime.now(dt.UTC) + dt.timedelta(seconds=5)).astimezone(moscow).replace(microsecond=0)
        configure(evening_news(due))
        first = run(instance, "evening_news", [MESSAGES, SENDS_ASSET])
        messages = metadata(first, "campaigns/campaign_messages")
        assert messages["deferred"] == 3, "the run started too late for the test: the contacts due in 5 s were due already"
        assert metadata(first, "sends/campaign_sends")["sent"] == 1
        assert "| evening_news | telegram | local_time |" in messages["exclusions"]
        assert received(stack) == [str(east)]
        with engine.connect() as conn:
            (wakeup,) = conn.execute(sa.select(campaign_wakeups)).all()
            assert deferred_run_requests(conn, load_bundle().campaigns, due - dt.timedelta(seconds=1)) == []  # not before its time
        assert (wakeup.deferred, wakeup.reasons) == (3, "local_time")
        assert wakeup.wake_at.replace(tzinfo=dt.UTC) == due  # the contact without a zone keeps the tenant's (Moscow)

        time.sleep(max(0.0, (due - dt.datetime.now(dt.UTC)).total_seconds()) + 0.2)
        tick = deferred_campaign_sensor(sensor_context(instance))
        (request,) = tick.run_requests
        assert request.run_key == f"deferred:demo:evening_news:{due.astimezone(dt.UTC).isoformat()}"
        later = run(instance, request=request)
        sent = metadata(later, "sends/campaign_sends")
        assert (sent["sent"], sent["skipped_already_sent"]) == (2, 1)
        assert received(stack) == sorted(str(chat) for chat in (east, moscow_chat, no_zone))  # each once; New York still waits
        with engine.connect() as conn:
            (wakeup,) = conn.execute(sa.select(campaign_wakeups)).all()
        new_york = dt.datetime.combine(due.date(), due.time(), tzinfo=ZoneInfo("America/New_York"))
        assert (wakeup.deferred, wakeup.wake_at.replace(tzinfo=dt.UTC)) == (1, new_york)  # the next zone's turn
        assert deferred_campaign_sensor(sensor_context(instance, tick.cursor)).run_requests == []


@pytest.fixture
def postgres_store(configure, monkeypatch):
    """The operational store on a fresh PostgreSQL database (the other tests keep SQLite's)."""
    url = create_database("algor_policies")
    monkeypatch.setenv("ALGOR_DATABASE_URL", url)
    monkeypatch.setenv("ALGOR_ALLOW_SANDBOX_WITH", "ALGOR_DATABASE_URL")  # PostgreSQL with the provider sandbox, on purpose
    yield url
    OperationalStore().engine().dispose()
    drop_database(url)


def test_on_postgres_a_cap_holds_across_two_campaigns_and_a_render_failure_excludes_only_that_contact(postgres_store, configure, instance, monkeypatch):
    configure(
        campaign("digest_a", [telegram("{{ contact.first_name }}, дайджест недели")]),  # no default: a nameless contact cannot get it
        campaign("digest_b", [telegram("{{ contact.first_name | default('Друзья') }}, скидки недели")]),
    )
    anna, boris, nameless = chats("deliver", 3, start=710_000)
    add_people([{"telegram_chat_id": anna, "first_name": "Анна"}, {"telegram_chat_id": boris, "first_name": "Борис"}, {"telegram_chat_id": nameless}])
    with running_stack(monkeypatch) as stack:
        first = run(instance, "digest_a")
        messages = metadata(first, "campaigns/campaign_messages")
        assert (messages["messages"], metadata(first, "sends/campaign_sends")["sent"]) == (2, 2)
        assert "| digest_a | telegram | render_failed | text: contact.first_name is not set for this contact" in messages["exclusions"]

        second = run(instance, "digest_b")
        messages = metadata(second, "campaigns/campaign_messages")
        assert "| digest_b | telegram | frequency_cap |  | 2 |" in messages["exclusions"]  # Anna and Boris had digest_a today
        assert (messages["excluded"], metadata(second, "sends/campaign_sends")["sent"]) == (2, 1)
        assert received(stack) == sorted(str(chat) for chat in (anna, boris, nameless))  # one message each
        texts = {m["recipient"]: m["text"] for m in stack.sandbox_messages("telegram")}
        assert texts[str(nameless)].startswith("Друзья, скидки недели")


def test_the_fallback_sensor_sends_a_bounced_email_on_telegram_once(configure, instance, monkeypatch):
    email = {"channel": "email", "subject": "Заказ", "text": "Ваш заказ готов. Отписаться: {{ unsubscribe_url }}"}
    configure(campaign("order_ready", [email, telegram("Ваш заказ готов")], fallback={"undelivered_after_minutes": 60}))
    bounced_chat, reached_chat = chats("deliver", 2, start=720_000)
    add_people([{"email": "bounce-1@example.ru", "telegram_chat_id": bounced_chat}, {"email": "deliver-1@example.ru", "telegram_chat_id": reached_chat}],
               channels=("email", "telegram"))
    with running_stack(monkeypatch) as stack:
        first = run(instance, "order_ready")
        assert metadata(first, "sends/campaign_sends")["sent"] == 2  # one channel each: e-mail first
        assert campaign_fallback_sensor(sensor_context(instance)).run_requests == []  # nothing has stopped counting yet
        stack.wait_for_callbacks()
        process_inbox(instance)  # the bounce and the delivery arrive

        tick = campaign_fallback_sensor(sensor_context(instance))
        (request,) = tick.run_requests
        assert request.run_key.startswith("fallback:demo:order_ready:")
        assert request.asset_selection == [MESSAGES, SENDS_ASSET]
        moved = run(instance, request=request)
        assert metadata(moved, "sends/campaign_sends")["sent"] == 1
        assert "| order_ready | — | fallback_waiting |  | 1 |" in metadata(moved, "campaigns/campaign_messages")["exclusions"]  # reached by e-mail
        assert received(stack) == [str(bounced_chat)]
        assert campaign_fallback_sensor(sensor_context(instance, tick.cursor)).run_requests == []
