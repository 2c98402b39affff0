"""Triggers beyond the messengers: a custom event posted to the gateway (over real HTTP: auth,
limits, idempotency) becomes a trigger occurrence and a warehouse conversion; a committed contact
import starts its import_finished campaigns once."""

from __future__ import annotations

import datetime as dt
import json

import httpx
import pytest
import sqlalchemy as sa
from standardwebhooks import Webhook

from flow import process_inbox
from import_commit_support import commit, rows
from policies.campaigns import Campaign
from resources.custom_events import events_secret_env
from resources.opstore import OperationalStore, migrate
from resources.settings import get_settings
from resources.opstore_schema import contacts, trigger_events
from resources.standard_webhooks import signing_secret
from resources.warehouse import Warehouse
from sensors.import_triggers import import_trigger_requests
from sensors.triggers import trigger_run_requests


def campaign(name: str, tenant: str, trigger: dict) -> Campaign:
    return Campaign.model_validate({"name": name, "tenant": tenant, "trigger": trigger, "channels": [{"channel": "telegram", "text": "hi"}]})


def post(gateway: str, tenant: str, body: dict | bytes, secret_tenant: str | None = None) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    signer = Webhook(signing_secret(events_secret_env(secret_tenant or tenant)))
    now = dt.datetime.now(dt.UTC)
    headers = {"webhook-id": "msg-1", "webhook-timestamp": str(int(now.timestamp())), "webhook-signature": signer.sign("msg-1", now, content.decode())}
    return httpx.post(f"{gateway}/v1/events/{tenant}", content=content, headers=headers | {"content-type": "application/json"})


def test_posted_custom_event_is_authenticated_deduplicated_and_fires_its_campaign_once(gateway, instance):
    now = dt.datetime.now(dt.UTC)
    with OperationalStore().engine().begin() as conn:
        contact_id = conn.execute(sa.insert(contacts).values(tenant="demo", external_id="crm-42", created_at=now, updated_at=now).returning(contacts.c.id)).scalar_one()
    event = {"name": "cart_abandoned", "external_id": "crm-42", "occurred_at": now.isoformat(), "properties": {"cart": 3}, "conversion": True, "idempotency_key": "evt-1"}

    assert httpx.post(f"{gateway}/v1/events/demo", json=event).status_code == 401  # unsigned
    assert post(gateway, "demo", event, secret_tenant="acme").status_code == 401  # another tenant's secret
    assert post(gateway, "nobody", event).status_code == 404
    assert post(gateway, "demo", {**event, "properties": {"x": "y" * 20_000}}).status_code == 413
    invalid = post(gateway, "demo", {**event, "contact_id": 7})
    assert invalid.status_code == 422 and "exactly one of `contact_id` or `external_id`" in invalid.json()["detail"]
    first = post(gateway, "demo", event)
    assert (first.status_code, first.json()) == (202, {"status": "accepted"})
    again = post(gateway, "demo", {**event, "properties": {}})  # a retry: same idempotency key
    assert (again.status_code, again.json()) == (200, {"status": "duplicate"})

    process_inbox(instance)  # the delivery-processing run the inbox sensor launches
    engine = OperationalStore().engine()
    listening = campaign("cart_reminder", "demo", {"event": "custom", "name": "cart_abandoned"})
    other = campaign("wishlist", "demo", {"event": "custom", "name": "wishlist_added"})
    with engine.connect() as conn:
        assert conn.execute(sa.select(trigger_events.c.event, trigger_events.c.contact_id)).all() == [("custom:cart_abandoned", contact_id)]
        (request,), cursor = trigger_run_requests(conn, {"demo": {c.name: c for c in (listening, other)}}, {}, dt.datetime.now(dt.UTC))
        assert trigger_run_requests(conn, {"demo": {listening.name: listening}}, cursor, dt.datetime.now(dt.UTC))[0] == []
    assert request.tags["algor/campaign"] == "cart_reminder"
    assert request.run_config["ops"]["campaigns__campaign_messages"]["config"]["contact_ids"] == [contact_id]
    with Warehouse().client() as client:
        conversions = client.query("select contact_id, reason from algor.events where event_type = 'conversion'").result_rows
    assert conversions == [(contact_id, "cart_abandoned")]


def test_custom_trigger_needs_its_name():
    with pytest.raises(ValueError, match="`name`"):
        campaign("x", "demo", {"event": "custom"})


def test_contacts_an_import_created_or_changed_get_the_import_finished_campaign_once(algor_home):
    migrate(get_settings().database_url)
    engine = OperationalStore().engine()
    now = dt.datetime.now(dt.UTC)
    first = commit(engine, rows({"external_id": "a1", "email": "a1@example.de"}, {"external_id": "a2", "email": "a2@example.de"}), now=now)
    welcome = campaign("welcome_import", "acme", {"event": "import_finished"})
    campaigns = {"acme": {welcome.name: welcome}}
    with engine.connect() as conn:
        (request,), cursor = import_trigger_requests(conn, campaigns, {}, now)
        assert import_trigger_requests(conn, campaigns, cursor, now) == ([], cursor)  # once
        ids = dict(conn.execute(sa.select(contacts.c.external_id, contacts.c.id).where(contacts.c.tenant == "acme")).all())
    assert request.run_key == f"import:acme:welcome_import:{first.import_id}:{ids['a1']}-{ids['a2']}"
    assert request.run_config["ops"]["campaigns__campaign_messages"]["config"]["contact_ids"] == [ids["a1"], ids["a2"]]
    # A second import changes a1 and leaves a2 as it was: only a1 is "imported" by it.
    commit(engine, rows({"external_id": "a1", "email": "a1@example.de", "city": "Berlin"}, {"external_id": "a2", "email": "a2@example.de"}), now=now)
    with engine.connect() as conn:
        (second,), _ = import_trigger_requests(conn, campaigns, cursor, now)
        assert import_trigger_requests(conn, campaigns, {}, now + dt.timedelta(hours=2))[0] == []  # too late for max_delay_minutes
    assert second.run_config["ops"]["campaigns__campaign_messages"]["config"]["contact_ids"] == [ids["a1"]]
