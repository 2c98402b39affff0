"""Every provider end to end over real HTTP: our connector sends to the sandbox, the sandbox calls
back signed exactly as that provider signs, and the gateway verifies and stores each event once.
Forged posts to the same endpoints are refused and never stored."""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid

import httpx
import pytest
import sqlalchemy as sa

from gateway.app import create_app
from policies.channels import Channel
from policies.tenants import Tenant
from resources.channels.base import OutboundMessage
from resources.connectors import ChannelConnectors, sandbox_accounts
from resources.opstore import engine_for
from resources.opstore_schema import webhook_inbox
from resources.settings import get_settings
from sandbox.config import SandboxConfig
from sandbox.outcomes import outcome_for
from sandbox.server import run_uvicorn_in_thread, running_sandbox

TENANT = Tenant.model_validate(
    {
        "name": "Every provider",
        "operator_legal_entity": "ООО «Все каналы»",
        "timezone": "Europe/Moscow",
        "country": "RU",
        "accounts": {
            "telegram": {"bot_token_env": "T_TG_TOKEN", "webhook_secret_env": "T_TG_SECRET"},
            "sendgrid": {"api_key_env": "T_SG_KEY", "webhook_public_key_env": "T_SG_PUBLIC_KEY", "sender": "shop@example.com"},
            "mailgun": {"domain": "mg.every.example.com", "api_key_env": "T_MG_KEY", "signing_key_env": "T_MG_SIGN", "sender": "shop@mg.every.example.com"},
            "vk": {"group_id": 4242, "access_token_env": "T_VK_TOKEN", "callback_secret_env": "T_VK_SECRET", "confirmation_code_env": "T_VK_CODE"},
            "smsc": {"login": "every", "password_env": "T_SMSC_PASSWORD"},
            "smsru": {"api_id_env": "T_SMSRU_API_ID", "callback_secret_env": "T_SMSRU_PATH"},
            "twilio": {"account_sid": "AC" + "1" * 32, "auth_token_env": "T_TW_TOKEN", "sms_sender": "+15005550006", "whatsapp_sender": "+14155238886"},
            "d360": {"api_key_env": "T_D360_KEY", "webhook_secret_env": "T_D360_SECRET"},
            "greenapi": {"id_instance": 7103000001, "api_token_env": "T_GREEN_TOKEN", "webhook_token_env": "T_GREEN_HOOK"},
        },
    }
)

# (channel, provider, address kind, outcome that produces callbacks)
CASES = [
    (Channel.TELEGRAM, "telegram", "chat", "click"),
    (Channel.EMAIL, "mailgun", "email", "click"),
    (Channel.EMAIL, "sendgrid", "email", "click"),
    (Channel.VK, "vk", "chat", "click"),
    (Channel.SMS, "smsc", "phone", "deliver"),
    (Channel.SMS, "smsru", "phone", "deliver"),
    (Channel.WHATSAPP, "twilio", "phone", "deliver"),
    (Channel.WHATSAPP, "d360", "phone", "deliver"),
    (Channel.WHATSAPP, "greenapi", "phone", "deliver"),
]


def recipient(provider: str, kind: str, outcome: str) -> str:
    """The first address whose deterministic sandbox outcome is ``outcome``."""
    for n in itertools.count(1):
        address = {"chat": str(100000 + n), "email": f"{outcome}+{n}@every.example.com", "phone": f"+7916{n:07d}"}[kind]
        if outcome_for(provider, address) == outcome:
            return address
    raise AssertionError("unreachable")


def send(connector, address: str, channel: Channel) -> str:
    message = OutboundMessage(
        send_id=str(uuid.uuid4()),
        tenant="every",
        campaign="c",
        channel=str(channel),
        address=address,
        text="Скидки",
        subject="Скидки" if channel is Channel.EMAIL else None,
        buttons=(("Хочу", "want"),) if channel in (Channel.TELEGRAM, Channel.VK) else (),
        unsubscribe_url="https://example.com/u/1" if channel is Channel.EMAIL else None,
        dedup_id=1,  # what the send ledger allocates (VK random_id); other connectors ignore it
    )

    async def go():
        async with httpx.AsyncClient(timeout=10) as client:
            return await connector.send(client, message)

    result = asyncio.run(go())
    assert result.ok, (connector.provider, result)
    return message.send_id


@pytest.fixture
def stack(algor_home, monkeypatch):
    with run_uvicorn_in_thread(create_app(tenants={"every": TENANT})) as gateway_url:
        monkeypatch.setenv("ALGOR_GATEWAY_URL", gateway_url)
        accounts = sandbox_accounts({"every": TENANT}, gateway_url)
        with running_sandbox(SandboxConfig.model_validate(accounts)) as sandbox_url:
            yield gateway_url, sandbox_url


def inbox() -> list:
    with engine_for(get_settings().database_url).connect() as conn:
        return conn.execute(sa.select(webhook_inbox.c.provider, webhook_inbox.c.event_key)).all()


def test_every_provider_callbacks_verify_and_are_stored_once(stack):
    gateway_url, sandbox_url = stack
    for channel, provider, kind, outcome in CASES:
        tenant = Tenant.model_validate({**TENANT.model_dump(), "accounts": {**TENANT.accounts.model_dump(), "channel_providers": {channel: provider}}})
        connector = ChannelConnectors(base_url=sandbox_url).connector(tenant, channel, "every")
        assert connector.provider == provider
        send(connector, recipient(provider, kind, outcome), channel)
    deadline = time.monotonic() + 30
    while (stats := httpx.get(f"{sandbox_url}/_sandbox/stats").json()["callbacks"])["pending"]:
        assert time.monotonic() < deadline, stats
        time.sleep(0.1)
    assert stats["failed"] == 0, stats  # the gateway accepted every signed callback
    rows = inbox()
    assert {provider for provider, _ in rows} == {provider for _, provider, _, _ in CASES}
    assert len(rows) == len(set(rows))


@pytest.mark.parametrize("provider", [case[1] for case in CASES])
def test_forged_callbacks_are_refused_and_not_stored(stack, provider):
    gateway_url, _ = stack
    url = f"{gateway_url}/hooks/every/{provider}"
    if provider == "smsru":
        url += "/not-the-secret"
    forms = {"smsc", "smsru", "twilio"}
    body = {"id": "1", "phone": "79160000001", "status": "1", "md5": "0" * 32, "MessageSid": "SM1", "MessageStatus": "delivered", "data[0]": "sms_status\n1\n103"}
    if provider in forms:
        response = httpx.post(url, data=body, headers={"X-Twilio-Signature": "forged"})
    else:
        payload = {"update_id": 1, "event_id": "e1", "secret": "forged", "group_id": 4242, "type": "message_new"}
        if provider == "mailgun":
            payload = {"signature": {"timestamp": str(int(time.time())), "token": "t", "signature": "00"}, "event-data": {"id": "e1"}}
        if provider == "sendgrid":
            payload = [{"sg_event_id": "e1", "event": "delivered"}]
        headers = {
            "X-Telegram-Bot-Api-Secret-Token": "forged",
            "Authorization": "Bearer forged",
            "X-Algor-Webhook-Secret": "forged",
            "X-Twilio-Email-Event-Webhook-Signature": "MEUCIQ==",
            "X-Twilio-Email-Event-Webhook-Timestamp": str(int(time.time())),
        }
        response = httpx.post(url, json=payload, headers=headers)
    assert 400 <= response.status_code < 500, (provider, response.status_code, response.text)
    assert inbox() == []
