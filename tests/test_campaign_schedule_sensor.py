"""The campaign schedule sensor: due campaigns start once, not-yet-due ones wait, run keys are stable,
and the run it requests is one a real instance executes."""

from __future__ import annotations

import datetime as dt
import json

import dagster as dg

from definitions import defs
from policies.loader import load_bundle
from resources.opstore import OperationalStore
from sensors.campaigns import CAMPAIGN_OP, campaign_schedule_sensor, due_campaign_requests

BLACK_FRIDAY_START = dt.datetime(2026, 11, 20, 6, 0, tzinfo=dt.UTC)  # 09:00+03:00 in campaigns.yaml
BLACK_FRIDAY_KEY = "campaign:demo:black_friday_2026:2026-11-20T09:00:00+03:00"
SPRING_SALE_KEY = "campaign:acme:spring_sale_2026:2026-03-02T10:00:00+01:00"


def test_only_campaigns_whose_start_has_come_are_requested_and_never_trigger_campaigns():
    campaigns = load_bundle().campaigns
    before, _ = due_campaign_requests(campaigns, [], BLACK_FRIDAY_START - dt.timedelta(seconds=1))
    assert [r.run_key for r in before] == [SPRING_SALE_KEY]  # black friday is not due yet
    at_start, cursor = due_campaign_requests(campaigns, [], BLACK_FRIDAY_START)
    assert sorted(r.run_key for r in at_start) == [SPRING_SALE_KEY, BLACK_FRIDAY_KEY]
    assert all("telegram_welcome" not in key for key in cursor)  # a trigger campaign has no start time
    request = next(r for r in at_start if r.run_key == BLACK_FRIDAY_KEY)
    assert request.partition_key == "demo"
    assert request.run_config == {"ops": {CAMPAIGN_OP: {"config": {"campaign": "black_friday_2026"}}}}
    # Segments are rebuilt and the campaign sent; contacts are not re-imported by a scheduled start.
    assert {key.to_user_string() for key in request.asset_selection} == {"segments/segment_members", "campaigns/campaign_messages", "sends/campaign_sends"}


def test_run_keys_are_stable_and_a_requested_campaign_is_not_requested_again():
    campaigns = load_bundle().campaigns
    later = BLACK_FRIDAY_START + dt.timedelta(days=3)
    first, cursor = due_campaign_requests(campaigns, [], BLACK_FRIDAY_START)
    again, _ = due_campaign_requests(campaigns, [], later)  # a tick evaluated again without its cursor
    assert [r.run_key for r in again] == [r.run_key for r in first]
    assert due_campaign_requests(campaigns, cursor, later) == ([], cursor)


def test_sensor_ticks_on_a_real_instance_request_each_due_campaign_once(algor_home, instance):
    context = dg.build_sensor_context(instance=instance, resources={"opstore": OperationalStore()})
    first = campaign_schedule_sensor(context)
    keys = {r.run_key for r in first.run_requests}
    assert {BLACK_FRIDAY_KEY, SPRING_SALE_KEY} <= keys  # both start times have passed (now ≥ 2026-11-30)
    second = campaign_schedule_sensor(dg.build_sensor_context(instance=instance, cursor=first.cursor, resources={"opstore": OperationalStore()}))
    assert second.run_requests == [] and second.skip_reason
    assert set(json.loads(second.cursor)) == keys


def test_the_requested_run_executes_the_selected_campaign_only(algor_home, instance):
    (request,) = [r for r in due_campaign_requests(load_bundle().campaigns, [], BLACK_FRIDAY_START)[0] if r.partition_key == "demo"]
    result = defs.resolve_job_def("campaign_pipeline_job").execute_in_process(
        instance=instance, partition_key=request.partition_key, run_config=request.run_config, asset_selection=request.asset_selection, tags=request.tags
    )
    assert result.success
    materialized = {e.materialization.asset_key.to_user_string() for e in result.get_asset_materialization_events()}
    assert materialized == {"segments/segment_members", "campaigns/campaign_messages", "sends/campaign_sends"}
