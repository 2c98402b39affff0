"""VK button presses are answered (messages.sendMessageEventAnswer): the gateway answers a press
once it is stored, by an API call with the community token, in the background; a re-delivered
press is neither answered nor counted twice, and a failed answer is tried again while the press is
fresh (a refusal is final). The sandbox takes the answer the way VK does: once per press of its
own community, error 100 for anything else, and counts it in its stats."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import shutil
import time
import uuid
from urllib.parse import parse_qsl

import httpx
import pytest
import sqlalchemy as sa
import yaml
import sealed
from flow import process_inbox
from test_gateway_providers import TENANT
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.app import create_app
from gateway.button_answers import ButtonAnswers
from policies import loader
from policies.loader import load_tenants
from resources.channels import OutboundMessage, vk
from resources.channels.vk import VkConnector
from resources.connectors import sandbox_accounts
from resources.opstore import engine_for
from resources.inbox_payloads import open_payload
from resources.opstore_schema import deliveries, sends, webhook_inbox
from resources.settings import get_settings
from resources.warehouse import Warehouse
from sandbox import vk as sandbox_vk
from sandbox.config import SandboxConfig, VkGroup
from sandbox.outcomes import outcome_for
from sandbox.server import run_uvicorn_in_thread, running_sandbox

GROUP, OTHER_GROUP = 7007, 7008
TOKEN_ENV, SECRET_ENV, CODE_ENV = "ALGOR_TEST_ACME_VK_TOKEN", "ALGOR_TEST_ACME_VK_SECRET", "ALGOR_TEST_ACME_VK_CODE"
TOKEN, OTHER_TOKEN = "vk1.a.answers", "vk1.a.other-community"
NOW = dt.datetime.now(dt.UTC)


def clicking_peer(skip: int = 0) -> str:
    """A VK peer the sandbox answers with a press of the message's first button."""
    return [str(n) for n in range(500_000, 600_000) if outcome_for("vk", str(n)) == "click"][skip]


def wait_until(condition, what: str, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)
    return value


def presses(sandbox_url: str) -> list[dict]:
    return httpx.get(f"{sandbox_url}/_sandbox/vk/message_events").json()["message_events"]


def vk_stats(sandbox_url: str) -> dict:
    return httpx.get(f"{sandbox_url}/_sandbox/stats").json()["providers"]["vk"]


def send_with_button(sandbox_url: str, group: int, token: str, peer: str, send_id: str, dedup_id: int = 1) -> None:
    """One message with a callback button; ``dedup_id`` is its random_id (a repeat sends nothing)."""
    message = OutboundMessage(
        send_id=send_id, tenant="acme", campaign="autumn", channel="vk", address=peer, text="Скидки?", buttons=(("Хочу", "want"),), dedup_id=dedup_id
    )

    async def go():
        async with httpx.AsyncClient(timeout=10) as client:
            return await VkConnector(sandbox_url, group, token).send(client, message)

    assert asyncio.run(go()).ok


# --- end to end: sandbox → gateway → answer → delivery processing --------------------------------


@pytest.fixture
def stack(algor_home, tmp_path, monkeypatch):
    """The shipped config with a VK community for acme; gateway and sandbox on loopback, the
    sandbox's community posting to the gateway and the gateway answering presses at the sandbox."""
    config = tmp_path / "config"
    shutil.copytree(loader.DEFAULT_CONFIG_DIR, config)
    tenants_file = yaml.safe_load((config / "tenants.yaml").read_text(encoding="utf-8"))
    tenants_file["tenants"]["acme"]["accounts"]["vk"] = {
        "group_id": GROUP, "access_token_env": TOKEN_ENV, "callback_secret_env": SECRET_ENV, "confirmation_code_env": CODE_ENV
    }
    (config / "tenants.yaml").write_text(yaml.safe_dump(tenants_file, allow_unicode=True, sort_keys=False), encoding="utf-8")
    monkeypatch.setattr(loader, "DEFAULT_CONFIG_DIR", config)
    tenants = load_tenants().tenants
    app = create_app(tenants=tenants)
    with run_uvicorn_in_thread(app) as gateway_url:
        monkeypatch.setenv("ALGOR_GATEWAY_URL", gateway_url)
        with running_sandbox(SandboxConfig.model_validate(sandbox_accounts(tenants, gateway_url))) as sandbox_url:
            monkeypatch.setenv("ALGOR_SANDBOX_URL", sandbox_url)  # where the gateway makes its VK calls
            yield app, gateway_url, sandbox_url


def seed_send(peer: str) -> str:
    """A contact with that VK id and a sent VK message to it, as a send run leaves them."""
    send_id = str(uuid.uuid4())
    with engine_for(get_settings().database_url).begin() as conn:
        contact_id = sealed.add_contact(conn, "acme", "vk-1", NOW, vk_user_id=int(peer))
        conn.execute(
            sa.insert(sends).values(
                send_id=send_id, tenant="acme", campaign="autumn", step="main", contact_id=contact_id, channel="vk", provider="vk",
                address=sealed.sealed_address(conn, "acme", contact_id, peer), status="sent", run_id="r", provider_message_id="1", dedup_id=1, claimed_at=NOW, finished_at=NOW,
            )
        )
    return send_id


def test_a_press_is_answered_once_and_counted_once_even_when_re_delivered(stack, instance):
    app, gateway_url, sandbox_url = stack
    peer = clicking_peer()
    send_id = seed_send(peer)
    send_with_button(sandbox_url, GROUP, get_settings().secret(TOKEN_ENV), peer, send_id)

    [press] = wait_until(lambda: [p for p in presses(sandbox_url) if p["answer"] is not None], "the press to be answered")
    answers = app.state.button_answers
    wait_until(lambda: answers.in_flight == 0, "the gateway's answer to finish")
    assert (press["group_id"], press["user_id"], press["peer_id"]) == (GROUP, int(peer), int(peer))
    assert press["answer"] == {"event_data": None} and press["refused_answers"] == 0
    assert vk_stats(sandbox_url)["button_answers"] == 1

    # VK re-delivers the same event (our `ok` got lost, say): stored once, so not answered again.
    with engine_for(get_settings().database_url).connect() as conn:
        [stored] = conn.execute(sa.select(webhook_inbox).where(webhook_inbox.c.provider == "vk")).all()
    replay = httpx.post(f"{gateway_url}/hooks/acme/vk", json=open_payload(stored.tenant, stored.provider, stored.event_key, stored.payload), headers={"X-Retry-Counter": "1"})
    assert (replay.status_code, replay.text) == (200, "ok")
    wait_until(lambda: answers.in_flight == 0, "any answer the replay started to finish")
    [press] = presses(sandbox_url)
    assert press["refused_answers"] == 0  # the gateway did not even try: the sandbox would have refused it
    assert vk_stats(sandbox_url)["button_answers"] == 1

    requests, _ = process_inbox(instance)
    assert [r.partition_key for r in requests] == ["acme"]
    with engine_for(get_settings().database_url).connect() as conn:
        assert conn.execute(sa.select(deliveries.c.status).where(deliveries.c.send_id == send_id)).scalar_one() == "clicked"
    with Warehouse().client() as client:
        clicks = client.query("select count() from algor.events final where send_id = {s:String} and event_type = 'clicked'", parameters={"s": send_id})
    assert clicks.result_rows == [(1,)]


# --- the sandbox's messages.sendMessageEventAnswer ---------------------------------------------------


@pytest.fixture
def sandbox(receiver):
    recorder, url = receiver
    recorder.answer_with("/vk-answers", "ok")
    config = SandboxConfig(
        vk=[
            VkGroup(group_id=GROUP, access_token=TOKEN, secret="s", webhook_url=f"{url}/vk-answers"),
            VkGroup(group_id=OTHER_GROUP, access_token=OTHER_TOKEN),
        ],
        callback_delay_s=0.01,
    )
    with running_sandbox(config) as base:
        yield base, recorder


def answer(base: str, token: str | None = TOKEN, **params) -> dict:
    form = {"v": "5.199", **({"access_token": token} if token else {}), **params}
    response = httpx.post(f"{base}/method/{vk.ANSWER_METHOD}", data={k: v for k, v in form.items() if v is not None})
    assert response.status_code == 200  # VK answers errors with HTTP 200 too
    return response.json()


def error_of(body: dict) -> tuple[int, str]:
    assert "access_token" not in {p["key"] for p in body["error"]["request_params"]}  # echoed without the token
    return body["error"]["error_code"], body["error"]["error_msg"]


def test_sandbox_takes_one_answer_per_press_of_its_own_community(sandbox, monkeypatch):
    base, recorder = sandbox
    peer = clicking_peer(skip=1)
    send_with_button(base, GROUP, TOKEN, peer, str(uuid.uuid4()))
    [event] = recorder.wait_for("/vk-answers", 1, where=lambda body: body["object"].get("user_id") == int(peer))
    press = vk.press_answer(event.body)
    assert press == {"event_id": event.body["object"]["event_id"], "user_id": peer, "peer_id": peer}
    assert press["event_id"] != event.body["event_id"]  # the press's id, not the Callback API delivery's
    invalid = "One of the parameters specified was missing or invalid: "
    snackbar = json.dumps({"type": "show_snackbar", "text": "Готово"}, ensure_ascii=False)

    assert error_of(answer(base, None, **press))[0] == 5
    assert error_of(answer(base, "vk1.a.nobody", **press))[0] == 5
    assert error_of(answer(base, **press, v=""))[0] == 8
    assert error_of(answer(base, **{**press, "user_id": None})) == (100, invalid + "user_id is a required parameter")
    assert error_of(answer(base, **{**press, "peer_id": "abc"})) == (100, invalid + "peer_id not integer")
    assert error_of(answer(base, **press, event_data='{"type": "explode"}')) == (100, invalid + "event_data is invalid")
    assert error_of(answer(base, **press, event_data=json.dumps({"type": "show_snackbar", "text": "x" * 91}))) == (100, invalid + "event_data.text is invalid")
    spent = (100, invalid + "event_id is invalid, expired or already answered")
    assert error_of(answer(base, **{**press, "event_id": "no-such-press"})) == spent
    assert error_of(answer(base, OTHER_TOKEN, **press)) == spent  # another community's token
    assert error_of(answer(base, **{**press, "user_id": "1", "peer_id": "1"})) == spent  # someone else's press
    assert vk_stats(base)["button_answers"] == 0

    assert answer(base, **press, event_data=snackbar) == {"response": 1}
    assert error_of(answer(base, **press)) == spent  # a press is answered once
    [listed] = [p for p in presses(base) if p["event_id"] == press["event_id"]]
    assert listed["answer"] == {"event_data": {"type": "show_snackbar", "text": "Готово"}}
    assert listed["refused_answers"] == 3  # the other community's, the wrong user's and the second answer
    assert vk_stats(base)["button_answers"] == 1

    # A press is good for about a minute.
    monkeypatch.setattr(sandbox_vk, "PRESS_TTL_S", 0.0)
    late_peer = clicking_peer(skip=2)
    send_with_button(base, GROUP, TOKEN, late_peer, str(uuid.uuid4()), dedup_id=2)
    [late] = recorder.wait_for("/vk-answers", 1, where=lambda body: body["object"].get("user_id") == int(late_peer))
    assert error_of(answer(base, **vk.press_answer(late.body))) == spent


def test_only_button_presses_ask_for_an_answer():
    press = {"type": "message_event", "event_id": "e" * 40, "group_id": GROUP, "object": {"event_id": "3159dc190b1g", "user_id": 5, "peer_id": 5}}
    assert vk.press_answer(press) == {"event_id": "3159dc190b1g", "user_id": "5", "peer_id": "5"}
    assert vk.press_answer({**press, "type": "message_new"}) is None
    assert vk.press_answer({**press, "object": {"user_id": 5, "peer_id": 5}}) is None
    assert vk.press_answer({**press, "object": {"event_id": "x", "user_id": "5", "peer_id": 5}}) is None


# --- the gateway's answerer against a VK API that fails --------------------------------------------


class ScriptedVkApi:
    """A VK API on loopback answering sendMessageEventAnswer calls from a script, then `{"response": 1}`."""

    def __init__(self, *answers: tuple[int, str]):
        self.calls: list[dict] = []
        self._answers = list(answers)
        self.app = Starlette(routes=[Route("/method/{method}", self._handle, methods=["POST"])])

    async def _handle(self, request: Request) -> Response:
        self.calls.append({"method": request.path_params["method"], **dict(parse_qsl((await request.body()).decode()))})
        status, body = self._answers.pop(0) if self._answers else (200, '{"response": 1}')
        return Response(body, status_code=status, media_type="application/json")


@pytest.mark.parametrize(
    ("script", "calls", "outcome"),
    [
        pytest.param([(503, "Service Unavailable")], 2, "answered", id="a front-end failure is retried"),
        pytest.param([(200, '{"error": {"error_code": 10, "error_msg": "Internal server error"}}')] * 3, 3, "failed", id="at most three tries"),
        pytest.param([(200, '{"error": {"error_code": 100, "error_msg": "One of the parameters specified was missing or invalid"}}')], 1, "refused", id="a refusal is final"),
    ],
)
def test_the_gateway_retries_a_failed_answer_while_the_press_is_fresh(algor_home, monkeypatch, script, calls, outcome):
    api = ScriptedVkApi(*script)
    press = {"event_id": "3159dc190b1g", "user_id": "5", "peer_id": "5"}
    logged = []
    monkeypatch.setattr("gateway.button_answers.log", _Recorder(logged))
    monkeypatch.setattr("gateway.button_answers.RETRY_WAIT_S", 0.01)
    with run_uvicorn_in_thread(api.app) as url:
        monkeypatch.setenv("ALGOR_SANDBOX_URL", url)
        answers = ButtonAnswers({"every": TENANT})  # a tenant with a VK community

        async def answer() -> None:
            assert answers.submit("every", press)
            while answers.in_flight:
                await asyncio.sleep(0.01)
            await answers.aclose()

        asyncio.run(answer())
    assert len(api.calls) == calls
    assert {(c["method"], c["event_id"], c["user_id"], c["peer_id"], c["access_token"], c["v"]) for c in api.calls} == {
        (vk.ANSWER_METHOD, "3159dc190b1g", "5", "5", get_settings().secret("T_VK_TOKEN"), vk.API_VERSION)
    }
    [(event, fields)] = logged
    assert (event, fields["outcome"], fields["attempts"], fields["tenant"]) == ("vk_button_answer", outcome, calls, "every")


class _Recorder:
    """Stands in for the structlog logger: keeps (event, fields) of every line."""

    def __init__(self, lines: list):
        self.lines = lines

    def __getattr__(self, level: str):
        return lambda event, **fields: self.lines.append((event, fields))
