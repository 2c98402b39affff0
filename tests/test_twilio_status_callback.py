"""Twilio delivery receipts come back to the right tenant: every send carries StatusCallback = that
tenant's hook on the public gateway URL, the sandbox posts the signed statuses there (and nowhere
else: the account has no default), and the gateway verifies and stores them under that tenant."""

from __future__ import annotations

import asyncio
import time
import uuid

import httpx
import pytest
import sqlalchemy as sa

from gateway.app import create_app
from policies.tenants import Tenant
from resources.channels.base import OutboundMessage
from resources.connectors import ChannelConnectors, sandbox_accounts
from resources.event_keys import stored_event_key
from resources.opstore import engine_for
from resources.opstore_schema import webhook_inbox
from resources.settings import get_settings
from sandbox.config import SandboxConfig
from sandbox.outcomes import outcome_for
from sandbox.server import run_uvicorn_in_thread, running_sandbox


def tenant(name: str, sid_digit: str) -> Tenant:
    prefix = f"T_{name.upper()}"
    return Tenant.model_validate(
        {
            "name": name,
            "operator_legal_entity": f"{name} Ltd",
            "timezone": "Europe/Moscow",
            "country": "RU",
            "accounts": {
                "twilio": {
                    "account_sid": "AC" + sid_digit * 32,
                    "auth_token_env": f"{prefix}_TW_TOKEN",
                    "sms_sender": "+15005550006",
                    "whatsapp_sender": "+14155238886",
                }
            },
        }
    )


TENANTS = {"north": tenant("north", "1"), "south": tenant("south", "2")}


def delivered_number(skip: int) -> str:
    numbers = (f"+7916{n:07d}" for n in range(1, 100_000) if outcome_for("twilio", f"+7916{n:07d}") == "deliver")
    for _ in range(skip):
        next(numbers)
    return next(numbers)


@pytest.fixture
def stack(algor_home, monkeypatch):
    with run_uvicorn_in_thread(create_app(tenants=TENANTS)) as gateway_url:
        monkeypatch.setenv("ALGOR_GATEWAY_URL", gateway_url)
        with running_sandbox(SandboxConfig.model_validate(sandbox_accounts(TENANTS, gateway_url))) as sandbox_url:
            yield gateway_url, sandbox_url


def send(sandbox_url: str, tenant_id: str, channel: str, number: str) -> str:
    connector = ChannelConnectors(base_url=sandbox_url).connector(TENANTS[tenant_id], channel, tenant_id)
    message = OutboundMessage(send_id=str(uuid.uuid4()), tenant=tenant_id, campaign="c", channel=channel, address=number, text="Скидки")

    async def go():
        async with httpx.AsyncClient(timeout=10) as client:
            return await connector.send(client, message)

    result = asyncio.run(go())
    assert result.ok, result
    return result.provider_message_id


def test_each_send_names_its_tenants_gateway_hook_and_the_statuses_come_back_there(stack):
    gateway_url, sandbox_url = stack
    sids = {
        ("north", "whatsapp"): send(sandbox_url, "north", "whatsapp", delivered_number(0)),
        ("north", "sms"): send(sandbox_url, "north", "sms", delivered_number(1)),
        ("south", "whatsapp"): send(sandbox_url, "south", "whatsapp", delivered_number(2)),
    }
    recorded = httpx.get(f"{sandbox_url}/_sandbox/messages", params={"provider": "twilio"}).json()["messages"]
    assert {(m["provider_message_id"], m["status_callback"]) for m in recorded} == {
        (sid, f"{gateway_url}/hooks/{tenant_id}/twilio") for (tenant_id, _), sid in sids.items()
    }

    deadline = time.monotonic() + 30
    while (callbacks := httpx.get(f"{sandbox_url}/_sandbox/stats").json()["callbacks"])["pending"]:
        assert time.monotonic() < deadline, callbacks
        time.sleep(0.1)
    assert callbacks["failed"] == 0 and callbacks["delivered"] == 6  # sent + delivered per message, every signature verified
    with engine_for(get_settings().database_url).connect() as conn:
        stored = conn.execute(sa.select(webhook_inbox.c.tenant, webhook_inbox.c.provider, webhook_inbox.c.event_key)).all()
    assert sorted(stored) == sorted((tenant_id, "twilio", stored_event_key(tenant_id, "twilio", f"{sid}:{status}")) for (tenant_id, _), sid in sids.items() for status in ("sent", "delivered"))
