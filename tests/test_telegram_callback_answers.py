"""Button presses are answered (answerCallbackQuery): the gateway puts the call in its webhook answer,
and the sandbox executes it from there or takes it as an API call, once per query."""

from __future__ import annotations

import asyncio
import uuid

import httpx
import pytest

from gateway.app import create_app
from policies.loader import load_tenants
from resources.channels import OutboundMessage, TelegramConnector
from resources.settings import get_settings
from sandbox.config import SandboxConfig, TelegramBot
from sandbox.outcomes import outcome_for
from sandbox.server import run_uvicorn_in_thread, running_sandbox
from sandbox.telegram import QUERY_INVALID

TOKEN, OTHER = "424242:answers-bot", "434343:other-bot"


@pytest.fixture
def gateway(algor_home):
    with run_uvicorn_in_thread(create_app()) as url:
        yield url


def test_gateway_answers_a_button_press_in_its_webhook_answer_and_nothing_else(gateway):
    secret = get_settings().secret(load_tenants().tenants["demo"].accounts.telegram.webhook_secret_env)
    headers = {"X-Telegram-Bot-Api-Secret-Token": secret}
    press = {"update_id": 501, "callback_query": {"id": "4382bfdwdsb323b2d9", "from": {"id": 7}, "data": "bf2026:want"}}
    answer = httpx.post(f"{gateway}/hooks/demo/telegram", json=press, headers=headers)
    assert answer.status_code == 200
    assert answer.json() == {"method": "answerCallbackQuery", "callback_query_id": "4382bfdwdsb323b2d9"}
    start = {"update_id": 502, "message": {"message_id": 1, "chat": {"id": 7, "type": "private"}, "date": 1, "text": "/start"}}
    plain = httpx.post(f"{gateway}/hooks/demo/telegram", json=start, headers=headers)
    assert (plain.status_code, plain.content) == (200, b"")


def test_sandbox_takes_answer_callback_query_once_per_query_of_its_own_bot(receiver):
    recorder, receiver_url = receiver
    chat = next(str(n) for n in range(300_000, 400_000) if outcome_for("telegram", str(n)) == "click")
    config = SandboxConfig(telegram=[TelegramBot(token=TOKEN, webhook_url=f"{receiver_url}/answers"), TelegramBot(token=OTHER)])
    with running_sandbox(config) as sandbox:
        message = OutboundMessage(
            send_id=str(uuid.uuid4()), tenant="t", campaign="c", channel="telegram", address=chat, text="Скидки?", buttons=(("Да", "yes"),)
        )

        async def send() -> bool:
            async with httpx.AsyncClient() as client:
                return (await TelegramConnector(sandbox, TOKEN).send(client, message)).ok

        assert asyncio.run(send())
        [update] = recorder.wait_for("/answers", 1, where=lambda body: str(body["callback_query"]["from"]["id"]) == chat)
        query_id = update.body["callback_query"]["id"]

        def answer(token: str, query: str) -> httpx.Response:
            return httpx.post(f"{sandbox}/bot{token}/answerCallbackQuery", json={"callback_query_id": query, "text": "Готово"})

        assert answer(OTHER, query_id).json() == {"ok": False, "error_code": 400, "description": QUERY_INVALID}
        assert answer(TOKEN, "no-such-query").status_code == 400
        assert answer(TOKEN, query_id).json() == {"ok": True, "result": True}
        assert answer(TOKEN, query_id).status_code == 400  # a query is answered once
        listed = httpx.get(f"{sandbox}/_sandbox/telegram/callback_queries").json()["callback_queries"]
        assert listed == [{"id": query_id, "chat": chat, "data": "yes", "answer": {"via": "api", "text": "Готово", "show_alert": False}}]
