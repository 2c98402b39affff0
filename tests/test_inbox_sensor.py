"""The inbox sensor: one run per tenant per new id range, a cursor that moves, nothing requested twice."""

from __future__ import annotations

import json

import dagster as dg

from gateway.inbox import store_callbacks
from resources.opstore import OperationalStore
from sensors.inbox import DELIVERY_OP, webhook_inbox_sensor


def evaluate(instance, cursor):
    context = dg.build_sensor_context(instance=instance, cursor=cursor, resources={"opstore": OperationalStore()})
    return webhook_inbox_sensor(context)


def test_sensor_requests_each_new_range_once_per_tenant(algor_home, instance):
    store = OperationalStore()
    store.migrate()
    engine = store.engine()
    assert isinstance(evaluate(instance, None), dg.SkipReason)

    for n in range(3):
        store_callbacks(engine, "demo", "telegram", [(f"update:{n}", {"update_id": n})])
    store_callbacks(engine, "acme", "mailgun", [("ev-1", {})])
    first = evaluate(instance, None)
    by_tenant = {request.partition_key: request for request in first.run_requests}
    assert set(by_tenant) == {"demo", "acme"}
    assert by_tenant["demo"].run_key == "inbox:demo:1-3"
    assert by_tenant["demo"].run_config["ops"][DELIVERY_OP]["config"] == {"from_id": 1, "to_id": 3}
    assert by_tenant["acme"].run_key == "inbox:acme:4-4"
    assert json.loads(first.cursor) == {"acme": 4, "demo": 3}

    # Nothing new: skip, even though the rows are still unprocessed (their runs are in flight).
    assert isinstance(evaluate(instance, first.cursor), dg.SkipReason)

    # A duplicate delivery of a stored event adds nothing; a new one yields only the new range.
    assert store_callbacks(engine, "demo", "telegram", [("update:2", {})]) == 0
    store_callbacks(engine, "demo", "telegram", [("update:9", {})])
    second = evaluate(instance, first.cursor)
    assert [request.run_key for request in second.run_requests] == ["inbox:demo:5-5"]
    assert json.loads(second.cursor) == {"acme": 4, "demo": 5}


def test_rows_left_behind_the_cursor_get_a_sweep_run_once_they_are_late(algor_home, instance):
    """A row that committed after a higher id was handed out (concurrent gateway workers on
    PostgreSQL), or whose run died, is unprocessed behind the cursor: it must not be stranded."""
    import datetime as dt

    from sensors.inbox import LATE_AFTER, inbox_run_requests

    store = OperationalStore()
    store.migrate()
    engine = store.engine()
    for n in range(3):
        store_callbacks(engine, "demo", "telegram", [(f"update:{n}", {"update_id": n})])
    now = dt.datetime.now(dt.UTC)
    with engine.connect() as conn:
        requests, cursor = inbox_run_requests(conn, {}, now)
        assert [r.run_key for r in requests] == ["inbox:demo:1-3"]
        # Just handed out: its run is expected to take them, so no sweep yet.
        assert inbox_run_requests(conn, cursor, now)[0] == []
        # Still untouched once late: one sweep run over exactly those rows.
        late, _ = inbox_run_requests(conn, cursor, now + LATE_AFTER + dt.timedelta(seconds=1))
    assert [r.run_key for r in late] == ["inbox-late:demo:1-3"]
    assert late[0].run_config["ops"][DELIVERY_OP]["config"] == {"from_id": 1, "to_id": 3}
