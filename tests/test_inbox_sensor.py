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
