"""The webhook gateway over real HTTP: bad input gets a clear 4xx, the store being down a 503."""

from __future__ import annotations

import time

import httpx
import pytest
import sqlalchemy as sa

from gateway.app import create_app
from pg import create_database, drop_database
from policies.loader import load_tenants
from resources.channels.mailgun import sign
from resources.links import sign_unsubscribe
from resources.opstore import engine_for
from resources.opstore_schema import webhook_inbox
from resources.settings import get_settings
from sandbox.server import run_uvicorn_in_thread


@pytest.fixture
def gateway(algor_home):
    with run_uvicorn_in_thread(create_app()) as url:
        yield url


def inbox_rows() -> list:
    with engine_for(get_settings().database_url).connect() as conn:
        return conn.execute(sa.select(webhook_inbox).order_by(webhook_inbox.c.id)).all()


def mailgun_payload(event_id: str, key: str | None = None, age_s: int = 0) -> dict:
    key = key or get_settings().secret(load_tenants().tenants["demo"].accounts.mailgun.signing_key_env)
    timestamp, token = str(int(time.time()) - age_s), f"token-{event_id}-{age_s}"
    return {
        "signature": {"timestamp": timestamp, "token": token, "signature": sign(key, timestamp, token)},
        "event-data": {"id": event_id, "event": "delivered", "timestamp": time.time(), "recipient": "a@example.ru"},
    }


def test_bad_requests_get_clear_4xx_and_never_reach_the_inbox(gateway):
    hook = f"{gateway}/hooks/demo/mailgun"
    assert httpx.post(f"{gateway}/hooks/nobody/mailgun", json=mailgun_payload("e1")).status_code == 404
    assert httpx.post(hook, content=b"{not json", headers={"content-type": "application/json"}).status_code == 400
    assert httpx.post(hook, json=[1, 2]).status_code == 400
    assert httpx.post(hook, content=b"x" * 1_100_000).status_code == 413
    assert httpx.post(hook, json=mailgun_payload("e2", age_s=3600)).status_code == 406  # stale timestamp
    assert httpx.post(hook, json=mailgun_payload("e3", key="wrong")).status_code == 406
    assert inbox_rows() == []


def test_replayed_signature_for_another_event_is_refused(gateway):
    hook = f"{gateway}/hooks/demo/mailgun"
    genuine = mailgun_payload("e1")
    assert httpx.post(hook, json=genuine).status_code == 200
    assert httpx.post(hook, json=genuine).status_code == 200  # provider retry of the same event
    replay = {**genuine, "event-data": {**genuine["event-data"], "id": "e-forged"}}
    assert httpx.post(hook, json=replay).status_code == 406
    assert [row.event_key for row in inbox_rows()] == ["e1"]


def test_unsubscribe_get_changes_nothing_post_records_once_tampered_is_404(gateway):
    token = sign_unsubscribe("demo", 42, "black_friday_2026")
    page = httpx.get(f"{gateway}/unsubscribe/demo/{token}")
    assert page.status_code == 200 and "<form" in page.text
    assert inbox_rows() == []
    assert httpx.get(f"{gateway}/unsubscribe/demo/{token[:-2]}xx").status_code == 404
    assert httpx.post(f"{gateway}/unsubscribe/acme/{token}").status_code == 404  # another tenant's link
    for _ in range(2):
        response = httpx.post(f"{gateway}/unsubscribe/demo/{token}", content=b"List-Unsubscribe=One-Click")
        assert response.status_code == 200
    (row,) = inbox_rows()
    assert (row.tenant, row.provider, row.event_key) == ("demo", "unsubscribe", "42:black_friday_2026")
    assert '"method": "one-click"' in row.payload


def test_store_down_means_503_so_the_provider_retries(algor_home):
    url = create_database()
    app = create_app(database_url=url)
    drop_database(url)  # the store disappears while the gateway runs
    engine_for(url).dispose()
    with run_uvicorn_in_thread(app) as gateway:
        assert httpx.post(f"{gateway}/hooks/demo/mailgun", json=mailgun_payload("e1")).status_code == 503
        assert httpx.get(f"{gateway}/ready").status_code == 503
        assert httpx.get(f"{gateway}/health").status_code == 200
