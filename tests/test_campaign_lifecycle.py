"""Campaign lifecycle: cron occurrences and their run keys (no backlog replay), pause / resume /
cancel through the real send path to the provider sandbox (no duplicate), the resume sensor, and
each campaign's own send-summary partition."""

from __future__ import annotations

import asyncio
import datetime as dt
import zoneinfo

import dagster as dg
import pytest
import sqlalchemy as sa
from pydantic import ValidationError

from definitions import defs
from jobs import campaign_pipeline_job
from orchestrator_assets.campaign_control import Action, RefusedChange, change_state, halted_campaigns
from orchestrator_assets.campaign_occurrences import at_occurrence
from orchestrator_assets.sends.assets import HALTED_CAMPAIGNS_TAG, HALTED_TAG
from orchestrator_assets.sends.run import send_messages
from policies.campaign_schedule import Schedule
from policies.campaigns import Campaign
from policies.policy import DispatchPolicy
from resources.channels.telegram import TelegramConnector
from resources.opstore import OperationalStore
from resources.opstore_schema import audit_log, sends
from sandbox.config import SandboxConfig, TelegramBot
from sandbox.server import running_sandbox
from sensors.campaign_resume import resume_run_requests
from sensors.campaign_summary import SENDS_ASSET, campaign_send_summary_job, campaign_send_summary_sensor
from sensors.campaigns import due_campaign_requests
from test_dispatch import TENANT, TOKEN, deliverable_chats, ledger, outgoing, stats  # noqa: F401 (ledger is a fixture)

MOSCOW = zoneinfo.ZoneInfo("Europe/Moscow")
WEEKLY = {"cron": "0 10 * * 1", "timezone": "Europe/Moscow"}  # Mondays 10:00 Moscow time


def weekly_campaign(**schedule) -> Campaign:
    return Campaign.model_validate(
        {"name": "weekly_digest", "tenant": "demo", "segment": "moscow_spb_ru", "schedule": schedule or WEEKLY,
         "channels": [{"channel": "telegram", "text": "Дайджест недели"}]}
    )  # fmt: skip


# --- cron occurrences (pure) ---------------------------------------------------------------------


def test_latest_occurrence_is_read_in_the_schedules_timezone_and_includes_this_minute():
    schedule = Schedule(**WEEKLY)
    monday_10 = dt.datetime(2026, 12, 7, 10, 0, tzinfo=MOSCOW)
    assert schedule.latest_occurrence(monday_10) == monday_10
    assert schedule.latest_occurrence(monday_10 - dt.timedelta(seconds=1)) == monday_10 - dt.timedelta(days=7)
    assert schedule.latest_occurrence(dt.datetime(2026, 12, 7, 7, 0, 30, tzinfo=dt.UTC)) == monday_10  # 10:00:30 in Moscow
    berlin = Schedule(cron="30 2 * * *", timezone="Europe/Berlin")  # 02:30 does not exist on 2026-03-29
    after_gap = berlin.latest_occurrence(dt.datetime(2026, 3, 29, 12, 0, tzinfo=dt.UTC))
    assert after_gap.isoformat() == "2026-03-29T03:00:00+02:00"  # runs once, at the first minute after the gap


@pytest.mark.parametrize(
    ("schedule", "reason"),
    [
        ({"cron": "61 10 * * 1", "timezone": "Europe/Moscow"}, "invalid cron expression '61 10 * * 1'"),
        ({"cron": "0 10 * * 1"}, "needs a `timezone`"),
        ({"cron": "0 10 * * 1", "timezone": "Mars/Olympus"}, "unknown timezone 'Mars/Olympus'"),
        ({"cron": "0 10 * * 1", "timezone": "UTC", "start_at": "2026-12-01T10:00:00+03:00"}, "exactly one of `start_at`"),
    ],
)
def test_bad_schedules_are_refused_with_the_reason(schedule, reason):
    with pytest.raises(ValidationError, match=reason.replace("*", r"\*")):
        weekly_campaign(**schedule)


def test_each_occurrence_has_its_own_step_and_run_key_and_only_the_latest_is_ever_requested():
    campaign = weekly_campaign()
    campaigns = {"demo": {campaign.name: campaign}}
    first_monday = dt.datetime(2026, 12, 7, 10, 5, tzinfo=MOSCOW)
    (request,), cursor = due_campaign_requests(campaigns, [], first_monday)
    assert request.run_key == "campaign:demo:weekly_digest:2026-12-07T10:00:00+03:00"
    occurrence = request.run_config["ops"]["campaigns__campaign_messages"]["config"]["occurrence"]
    assert occurrence == "2026-12-07T10:00+03:00"
    assert at_occurrence(campaign, occurrence, first_monday).step == "main@2026-12-07T10:00+03:00"
    assert due_campaign_requests(campaigns, cursor, first_monday + dt.timedelta(days=3)) == ([], cursor)  # requested once
    # The sensor was off for three weeks: one start (the latest), not three; the cursor stays one key.
    (late,), later_cursor = due_campaign_requests(campaigns, cursor, first_monday + dt.timedelta(days=22))
    assert late.run_key == "campaign:demo:weekly_digest:2026-12-28T10:00:00+03:00"
    assert later_cursor == [late.run_key]
    with pytest.raises(dg.Failure, match="is not an occurrence of cron"):
        at_occurrence(campaign, "2026-12-08T10:00+03:00", first_monday)


def test_a_paused_campaign_is_not_started_until_resumed():
    campaign = weekly_campaign()
    campaigns = {"demo": {campaign.name: campaign}}
    monday = dt.datetime(2026, 12, 7, 10, 5, tzinfo=MOSCOW)
    assert due_campaign_requests(campaigns, [], monday, {"demo": frozenset({"weekly_digest"})}) == ([], [])
    (request,), _ = due_campaign_requests(campaigns, [], monday, {})
    assert request.run_key.endswith("2026-12-07T10:00:00+03:00")


# --- pause / resume / cancel on the real send path -------------------------------------------------


def test_a_campaign_paused_mid_send_resumes_with_every_contact_messaged_exactly_once(ledger):
    chats = deliverable_chats(20)
    policy = DispatchPolicy(max_in_flight_per_account=2)  # claim batches of 4
    batches_seen = 0

    def halted_pausing_at_third_batch(conn: sa.Connection, names: set[str]) -> frozenset[str]:
        nonlocal batches_seen
        batches_seen += 1
        if batches_seen == 3:  # the operator pauses while the campaign is being sent
            with ledger.begin() as operator:
                change_state(operator, TENANT, "promo", Action.PAUSE, actor="anna", reason="typo", now=dt.datetime.now(dt.UTC))
        return halted_campaigns(conn, TENANT, names)

    def send(run_id: str, halted) -> dict:
        async def go():
            return await send_messages(ledger, TENANT, run_id, outgoing(TelegramConnector(url, TOKEN), chats), policy, halted=halted)

        return asyncio.run(go()).totals

    with running_sandbox(SandboxConfig(telegram=[TelegramBot(token=TOKEN)])) as url:
        paused = send("run-1", halted_pausing_at_third_batch)
        assert paused["sent"] == 8 and paused["halted"] == 12  # two batches out, nothing claimed after the pause
        with ledger.begin() as conn:
            change_state(conn, TENANT, "promo", Action.RESUME, actor="anna", reason="fixed", now=dt.datetime.now(dt.UTC))
        resumed = send("run-2", lambda conn, names: halted_campaigns(conn, TENANT, names))
        assert resumed["already_final"] == 8 and resumed["sent"] == 12 and resumed["halted"] == 0
        assert stats(url)["accepted"] == 20  # the provider got each message once
    with ledger.connect() as conn:
        per_contact = conn.execute(sa.select(sends.c.contact_id, sa.func.count()).group_by(sends.c.contact_id)).all()
        actions = conn.execute(sa.select(audit_log.c.action).order_by(audit_log.c.id)).scalars().all()
    assert len(per_contact) == 20 and {count for _, count in per_contact} == {1}
    assert actions == ["campaign.pause", "campaign.resume"]


def test_a_cancelled_campaign_sends_nothing_and_cannot_be_resumed(ledger):
    now = dt.datetime.now(dt.UTC)
    with ledger.begin() as conn:
        change_state(conn, TENANT, "promo", Action.CANCEL, actor="anna", reason="recalled", now=now)
    with running_sandbox(SandboxConfig(telegram=[TelegramBot(token=TOKEN)])) as url:
        items = outgoing(TelegramConnector(url, TOKEN), deliverable_chats(6))
        report = asyncio.run(send_messages(ledger, TENANT, "run-1", items, DispatchPolicy(), halted=lambda conn, names: halted_campaigns(conn, TENANT, names)))
        assert report.totals["halted"] == 6 and report.totals["sent"] == 0 and stats(url)["accepted"] == 0
    with ledger.begin() as conn, pytest.raises(RefusedChange, match="it is cancelled"):
        change_state(conn, TENANT, "promo", Action.RESUME, actor="anna", reason="oops", now=now)


# --- the control job, the resume sensor and the per-campaign summary (real Dagster) ----------------


def test_control_job_resume_sensor_and_campaign_summary_partition(algor_home, instance):
    control = defs.resolve_job_def("campaign_control_job")

    def act(action: str) -> dg.ExecuteInProcessResult:
        config = {"tenant": "demo", "campaign": "black_friday_2026", "action": action, "operator": "anna", "reason": f"{action} test"}
        return control.execute_in_process(run_config={"ops": {"control_campaign": {"config": config}}}, instance=instance, raise_on_error=False)

    assert act("pause").success
    refused = act("pause")
    assert not refused.success and "it is paused" in refused.failure_data_for_node("control_campaign").error.message
    # A run the pause halted (as campaign_sends tags it), then the resume sensor: nothing while paused.
    halted_run = instance.create_run_for_job(
        campaign_pipeline_job.resolve(asset_graph=defs.resolve_asset_graph()), status=dg.DagsterRunStatus.SUCCESS,
        run_config={"ops": {"campaigns__campaign_messages": {"config": {"campaign": "black_friday_2026"}}}},
        tags={"dagster/partition": "demo", "algor/campaign": "black_friday_2026", HALTED_TAG: "true", HALTED_CAMPAIGNS_TAG: "black_friday_2026"},
    )  # fmt: skip
    engine = OperationalStore().engine()
    with engine.connect() as conn:
        assert resume_run_requests(instance, conn, []) == ([], [])
    assert act("resume").success
    with engine.connect() as conn:
        (request,), cursor = resume_run_requests(instance, conn, [])
        assert resume_run_requests(instance, conn, cursor) == ([], cursor)  # resumed once
    assert request.run_key == f"resume:{halted_run.run_id}" and request.partition_key == "demo"
    assert request.run_config == halted_run.run_config and request.tags["algor/resumes"] == halted_run.run_id

    # The campaign's own partition appears once it has sent; its summary shows state and history.
    instance.report_runless_asset_event(
        dg.AssetMaterialization(SENDS_ASSET, partition="demo", metadata={"campaigns": dg.MetadataValue.json(["black_friday_2026"])})
    )
    tick = campaign_send_summary_sensor(dg.build_sensor_context(instance=instance))
    assert [r.partition_key for r in tick.run_requests] == ["demo|black_friday_2026"]
    assert tick.dynamic_partitions_requests[0].partition_keys == ["demo|black_friday_2026"]
    assert campaign_send_summary_sensor(dg.build_sensor_context(instance=instance, cursor=tick.cursor)).run_requests == []
    instance.add_dynamic_partitions("campaigns", ["demo|black_friday_2026"])
    result = defs.resolve_job_def(campaign_send_summary_job.name).execute_in_process(instance=instance, partition_key="demo|black_friday_2026")
    (materialization,) = result.asset_materializations_for_node("sends__campaign_send_summary")
    assert materialization.metadata["state"].value == "active"
    assert "paused → active: resume test" in materialization.metadata["history"].value
    (check,) = result.get_asset_check_evaluations()
    assert check.passed
