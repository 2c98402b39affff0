"""The segment_members asset on a real instance (SQLite store, chDB warehouse): counts, masked
samples, who entered and left; the segment_entered trigger's run requests; the live count job and
CLI, which write nothing."""

from __future__ import annotations

import datetime as dt
import json

import dagster as dg
import pytest
import sqlalchemy as sa
import sealed
from flow import metadata

from definitions import defs
from orchestrator_assets.segment_count import main as live_count_cli
from orchestrator_assets.segments import segment_members
from policies.campaigns import Campaign
from resources import warehouse as wh
from resources.opstore import OperationalStore, engine_for, migrate
from resources.opstore_schema import contacts, metadata as schema, segment_events
from resources.settings import get_settings
from resources.warehouse import Warehouse
from sensors.segment_triggers import segment_entered_requests

TENANT = "demo"
SEGMENT = "moscow_spb_ru"  # city in (Москва, Санкт-Петербург), ru or a Telegram chat, no complaint in 180 days
WELCOME = Campaign.model_validate({
    "name": "moscow_welcome", "tenant": TENANT, "trigger": {"event": "segment_entered", "segment": SEGMENT},
    "channels": [{"channel": "telegram", "text": "Добро пожаловать"}],
})  # fmt: skip


def complaint(contact_id: int, event_id: str) -> list:
    row = {"tenant": TENANT, "event_id": event_id, "event_type": wh.COMPLAINED, "send_id": "s", "campaign": "black_friday_2026", "channel": "email",
           "provider": "mailgun", "contact_id": contact_id, "provider_message_id": "", "reason": "", "occurred_at": dt.datetime.now(dt.UTC)}  # fmt: skip
    return [row[column] for column in wh.EVENT_COLUMNS]


def materialize(instance: dg.DagsterInstance) -> dict:
    result = dg.materialize([segment_members], partition_key=TENANT, instance=instance, resources={"opstore": OperationalStore(), "warehouse": Warehouse()})
    return metadata(result, "segments/segment_members")


@pytest.fixture
def people(algor_home) -> dict[str, int]:
    engine = engine_for(get_settings().database_url)
    migrate(get_settings().database_url)
    now = dt.datetime.now(dt.UTC)
    with engine.begin() as conn:
        return {
            "anna": sealed.add_contact(conn, TENANT, "anna", now, city="Москва", language="ru", email="anna.k@mail.ru", first_name="Анна"),
            "boris": sealed.add_contact(conn, TENANT, "boris", now, city="Санкт-Петербург", language="ru", phone="+79161234567"),
            "vera": sealed.add_contact(conn, TENANT, "vera", now, city="Казань", language="ru", email="vera@example.com"),
        }


def test_members_change_is_counted_recorded_and_triggers_once(people, instance):
    first = materialize(instance)
    assert (first[f"members_{SEGMENT}"], first[f"entered_{SEGMENT}"], first[f"left_{SEGMENT}"]) == (2, 2, 0)
    sample = first[f"sample_{SEGMENT}"]
    assert "a***@mail.ru" in sample and "А***" in sample and "+7 916 ***-**-67" in sample
    assert "anna.k" not in sample and "Анна" not in sample and "1234567" not in sample

    Warehouse().append_events([complaint(people["anna"], "c1"), complaint(people["anna"], "c1")])  # a complaint, appended twice
    engine = engine_for(get_settings().database_url)
    with engine.begin() as conn:
        conn.execute(sa.update(contacts).where(contacts.c.id == people["vera"]).values(city="Москва"))
    second = materialize(instance)
    assert (second[f"members_{SEGMENT}"], second[f"entered_{SEGMENT}"], second[f"left_{SEGMENT}"]) == (2, 1, 1)
    assert (second["members_everyone_with_email"], second["entered_everyone_with_email"], second["left_everyone_with_email"]) == (2, 0, 0)

    with engine.connect() as conn:
        changes = conn.execute(sa.select(segment_events.c.contact_id, segment_events.c.change).where(segment_events.c.segment == SEGMENT).order_by(segment_events.c.id)).all()
        assert [tuple(row) for row in changes] == [(people["anna"], "entered"), (people["boris"], "entered"), (people["vera"], "entered"), (people["anna"], "left")]
        now = dt.datetime.now(dt.UTC)
        requests, cursor = segment_entered_requests(conn, {TENANT: {WELCOME.name: WELCOME}}, {}, now)
        again, _ = segment_entered_requests(conn, {TENANT: {WELCOME.name: WELCOME}}, {}, now)
        later, _ = segment_entered_requests(conn, {TENANT: {WELCOME.name: WELCOME}}, cursor, now)
        stale, _ = segment_entered_requests(conn, {TENANT: {WELCOME.name: WELCOME}}, {}, now + dt.timedelta(hours=2))
    [request] = requests
    assert request.run_config["ops"]["campaigns__campaign_messages"]["config"]["contact_ids"] == sorted(people.values())
    assert request.tags["algor/segment"] == SEGMENT and [r.run_key for r in again] == [request.run_key]  # the same tick twice: one run
    assert later == [] and stale == []  # nothing new past the cursor; entries older than max_delay_minutes are skipped


def _row_counts(engine: sa.Engine) -> dict[str, int]:
    with engine.connect() as conn:
        return {table.name: conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one() for table in schema.sorted_tables}


def test_live_count_job_and_cli_answer_and_write_nothing(people, instance, capsys):
    engine = engine_for(get_settings().database_url)
    before = _row_counts(engine)
    rule = "{all: [{field: city, op: in, value: [Москва, Казань]}, {not: {behaviour: {event: clicked, at_least: 2}}}]}"
    result = defs.resolve_job_def("segment_live_count_job").execute_in_process(
        run_config={"ops": {"count_segment_rule": {"config": {"tenant": TENANT, "rule": rule}}}}, instance=instance
    )
    assert result.success and result.output_for_node("count_segment_rule") == 2
    [output] = [event for event in result.all_node_events if event.event_type_value == "STEP_OUTPUT"]
    shown = output.event_specific_data.metadata
    assert shown["count"].value == 2 and "a***@mail.ru" in shown["sample"].value and "anna.k" not in shown["sample"].value
    assert _row_counts(engine) == before  # nor tenant keys, nor members, nor events

    assert live_count_cli(["--tenant", TENANT, "--segment", SEGMENT]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["count"] == 2
    assert live_count_cli(["--tenant", TENANT, "--rule", "{field: city, op: regex, value: '('}"]) == 2
    assert "rule: value: regex '(' does not compile" in capsys.readouterr().err
    assert _row_counts(engine) == before
