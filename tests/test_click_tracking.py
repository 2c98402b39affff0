"""Tracked links: signed per recipient, 302 to the original URL, never an open redirect, scanners
recorded but not counted, and retired keys still honoured after rotation."""

from __future__ import annotations

import httpx
import pytest
import sqlalchemy as sa

from gateway.app import create_app
from resources.callbacks import parse_click
from resources.links import rewrite_links, sign_click, verify_click
from resources.opstore import engine_for
from resources.inbox_payloads import open_payload
from resources.opstore_schema import webhook_inbox
from resources.settings import get_settings
from sandbox.server import run_uvicorn_in_thread

TARGET = "https://shop.example.ru/black-friday?utm_source=email&utm_campaign=bf2026"
BROWSER = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/126.0 Safari/537.36"


@pytest.fixture
def gateway(algor_home):
    with run_uvicorn_in_thread(create_app()) as url:
        yield url


def clicks() -> list[dict]:
    with engine_for(get_settings().database_url).connect() as conn:
        rows = conn.execute(sa.select(webhook_inbox).where(webhook_inbox.c.provider == "clicks")).all()
    return [open_payload(row.tenant, row.provider, row.event_key, row.payload) for row in rows]


def test_click_redirects_records_and_refuses_tampering(gateway):
    token = sign_click("demo", "black_friday_2026", "main", 7, "email", TARGET)
    link = f"{gateway}/c/demo/{token}"
    response = httpx.get(link, headers={"User-Agent": BROWSER})
    assert response.status_code == 302 and response.headers["location"] == TARGET
    assert httpx.head(link, headers={"User-Agent": BROWSER}).status_code == 302
    assert httpx.get(link, headers={"User-Agent": "Barracuda Sentinel (EE)"}).status_code == 302
    assert [c["human"] for c in clicks()] == [True, False, False]
    events = [parse_click(c)[0] for c in clicks()]
    assert [e.kind for e in events] == ["clicked", "ignored", "ignored"]
    assert events[0].ledger_key == ("black_friday_2026", "main", 7, "email")

    body, _, mac = token.rpartition(".")
    forged = sign_click("demo", "x", "main", 7, "email", "https://evil.example")[: -len(mac)] + mac
    for bad in (f"{token[:-3]}abc", forged, "garbage"):
        assert httpx.get(f"{gateway}/c/demo/{bad}").status_code == 404
    assert httpx.get(f"{gateway}/c/acme/{token}").status_code == 404  # another tenant's link
    assert len(clicks()) == 3


def test_key_rotation_keeps_old_links_working_until_the_key_is_dropped(algor_home, monkeypatch):
    monkeypatch.setenv("ALGOR_LINK_SIGNING_KEY", "old-key")
    token = sign_click("demo", "c", "main", 1, "email", TARGET)
    monkeypatch.setenv("ALGOR_LINK_SIGNING_KEY", "new-key")
    assert verify_click("demo", token) is None
    monkeypatch.setenv("ALGOR_LINK_SIGNING_KEYS_RETIRED", "old-key")
    assert verify_click("demo", token)["url"] == TARGET
    assert sign_click("demo", "c", "main", 1, "email", TARGET) != token  # new links use the new key


def test_rewrite_links_keeps_unsubscribe_and_punctuation():
    text = 'Скидки: https://shop.example.ru/bf. <a href="https://a.example/x?p=1&amp;q=2">x</a> Отписка: https://gw/u/1'
    out = rewrite_links(text, lambda url: f"T[{url}]", keep={"https://gw/u/1"})
    assert out == 'Скидки: T[https://shop.example.ru/bf]. <a href="T[https://a.example/x?p=1&q=2]">x</a> Отписка: https://gw/u/1'
