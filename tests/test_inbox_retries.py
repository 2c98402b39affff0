"""A callback that cannot be applied yet is retried with backoff, then dead-lettered (a failing
asset check with the reason), and an operator re-drives it from a job's config."""

from __future__ import annotations

import datetime as dt
import json

import dagster as dg
import sqlalchemy as sa

from definitions import defs
from gateway.inbox import store_callbacks
from orchestrator_assets.deliveries.retries import MAX_ATTEMPTS
from resources.opstore import OperationalStore
from resources.opstore_schema import webhook_inbox as inbox
from sensors.inbox import webhook_inbox_sensor

UNKNOWN = {"signature": {}, "event-data": {"id": "ev-x", "event": "delivered", "timestamp": 1717000000, "message": {"headers": {"message-id": "nobody@mg"}}}}


def tick(instance, cursor):
    result = webhook_inbox_sensor(dg.build_sensor_context(instance=instance, cursor=cursor, resources={"opstore": OperationalStore()}))
    return ([], cursor) if isinstance(result, dg.SkipReason) else (result.run_requests, result.cursor)


def run(instance, request):
    return defs.resolve_job_def("delivery_processing_job").execute_in_process(
        instance=instance, partition_key=request.partition_key, run_config=request.run_config
    )


def test_unknown_message_is_retried_then_dead_lettered_then_redriven(algor_home, instance):
    store = OperationalStore()
    store.migrate()
    engine = store.engine()
    store_callbacks(engine, "demo", "mailgun", [("ev-x", UNKNOWN)])

    requests, cursor = tick(instance, None)
    result = run(instance, requests[0])
    assert result.success
    with engine.connect() as conn:
        row = conn.execute(sa.select(inbox)).one()
    assert row.processed_at is None and row.attempts == 1 and "unknown message" in row.error and row.next_attempt_at is not None

    for attempt in range(2, MAX_ATTEMPTS + 1):  # let each backoff expire and let the sensor retry
        with engine.begin() as conn:
            conn.execute(sa.update(inbox).values(next_attempt_at=dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)))
        requests, cursor = tick(instance, cursor)
        assert [r.run_key.split(":")[0] for r in requests] == ["inbox-retry"]
        result = run(instance, requests[0])
    with engine.connect() as conn:
        row = conn.execute(sa.select(inbox)).one()
    assert row.attempts == MAX_ATTEMPTS and row.dead_lettered_at is not None
    (check,) = result.get_asset_check_evaluations()
    assert not check.passed and check.metadata["dead_letters"].value == 1
    assert tick(instance, cursor)[0] == []  # dead letters are not retried on their own

    redriven = defs.resolve_job_def("redrive_dead_letters_job").execute_in_process(
        instance=instance, run_config={"ops": {"redrive_dead_letters": {"config": {"inbox_ids": [row.id]}}}}
    )
    assert redriven.output_for_node("redrive_dead_letters") == 1
    requests, _ = tick(instance, cursor)
    assert len(requests) == 1 and json.dumps(requests[0].run_config).count('"to_id": 1') == 1
