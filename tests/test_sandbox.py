"""The provider sandbox itself: outcome table, wire answers, callbacks and retries, inspection, CLI."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
from collections import Counter

import httpx
import pytest

from resources.channels import mailgun as mg
from resources.channels import telegram as tg
from resources.settings import REPO_ROOT
from sandbox.config import MailgunDomain, SandboxConfig, TelegramBot
from sandbox.outcomes import bucket, outcome_for
from sandbox.server import running_sandbox

TOKEN, SECRET = "42:sandbox", "sbx-secret"
DOMAIN, API_KEY, SIGNING_KEY = "mg.example.ru", "key-1", "signing-1"
MAX_ATTEMPTS = 3


def with_bucket(value: int, template: str) -> str:
    return next(template.format(n) for n in range(100_000) if bucket(template.format(n)) == value)


def chat_with(outcome: str) -> str:
    return next(str(n) for n in range(1, 100_000) if outcome_for("telegram", str(n)) == outcome)


def mail_form(to: str, **extra: str) -> dict[str, str]:
    return {"from": "shop@mg.example.ru", "to": to, "subject": "Hi", "text": "Hello", **extra}




@pytest.fixture(scope="module")
def sandbox(receiver):
    config = SandboxConfig(
        telegram=[TelegramBot(token=TOKEN, webhook_url=f"{receiver[1]}/tg", secret_token=SECRET)],
        mailgun=[MailgunDomain(domain=DOMAIN, api_key=API_KEY, signing_key=SIGNING_KEY, webhook_url=f"{receiver[1]}/mg")],
        callback_delay_s=0.01,
        callback_max_attempts=MAX_ATTEMPTS,
        callback_backoff_s=0.01,
    )
    with running_sandbox(config) as url:
        httpx.post(f"{url}/_sandbox/reset")
        yield url


@pytest.fixture
def client(sandbox):
    with httpx.Client(base_url=sandbox) as client:
        client.post("/_sandbox/reset")
        yield client


def wait_until_settled(client: httpx.Client, timeout: float = 5.0) -> dict:
    """Stats once no callback is pending."""
    deadline = time.monotonic() + timeout
    while (stats := client.get("/_sandbox/stats").json())["callbacks"]["pending"] and time.monotonic() < deadline:
        time.sleep(0.02)
    return stats


# --- outcomes ---------------------------------------------------------------------------------


def test_bucket_is_the_documented_hash():
    address = "ivan@example.ru"
    assert bucket(address) == int(hashlib.sha256(address.encode()).hexdigest()[:8], 16) % 100


@pytest.mark.parametrize(
    ("value", "email_outcome", "telegram_outcome"),
    [(0, "bounce", "blocked"), (2, "bounce", "blocked"), (3, "bounce", "click"), (4, "complain", "click"),
     (5, "complain", "click"), (6, "click", "click"), (24, "click", "click"), (25, "click", "deliver"),
     (29, "click", "deliver"), (30, "deliver", "deliver"), (99, "deliver", "deliver")],
)
def test_outcome_table_boundaries(value, email_outcome, telegram_outcome):
    assert outcome_for("mailgun", with_bucket(value, "user{}@example.ru")) == email_outcome
    assert outcome_for("telegram", with_bucket(value, "{}")) == telegram_outcome


def test_local_part_overrides_the_bucket():
    for outcome in ("bounce", "complain", "click", "deliver"):
        assert {outcome_for("mailgun", f"{outcome}+{n}@x.ru") for n in range(50)} == {outcome}
    assert outcome_for("mailgun", "Bounce.Me@x.ru") == "bounce"


def test_outcome_shares_follow_the_table():
    shares = Counter(outcome_for("mailgun", f"user{n}@example.ru") for n in range(20_000))
    assert abs(shares["bounce"] / 20_000 - 0.04) < 0.01 and abs(shares["deliver"] / 20_000 - 0.70) < 0.02


def test_unknown_provider_is_an_error():
    with pytest.raises(ValueError):
        outcome_for("no-such-provider", "1")


# --- config -----------------------------------------------------------------------------------


def test_config_loads_from_yaml_and_json(tmp_path):
    data = {"telegram": [{"token": TOKEN, "rate_limit_per_s": 30}], "mailgun": [{"domain": DOMAIN, "api_key": "k", "signing_key": "s"}]}
    (tmp_path / "c.json").write_text(json.dumps(data))
    (tmp_path / "c.yaml").write_text(f"telegram:\n  - token: '{TOKEN}'\n    rate_limit_per_s: 30\nmailgun:\n  - domain: {DOMAIN}\n    api_key: k\n    signing_key: s\n")
    assert SandboxConfig.from_file(tmp_path / "c.json") == SandboxConfig.from_file(tmp_path / "c.yaml") == SandboxConfig(**data)
    (tmp_path / "typo.yaml").write_text("callback_max_attempt: 3\n")
    with pytest.raises(ValueError):
        SandboxConfig.from_file(tmp_path / "typo.yaml")


# --- Telegram wire --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("token", "body", "status", "description"),
    [
        ("1:nope", {"chat_id": 1, "text": "x"}, 401, "Unauthorized"),
        (TOKEN, {"text": "x"}, 400, "Bad Request: chat_id is empty"),
        (TOKEN, {"chat_id": 1}, 400, "Bad Request: message text is empty"),
        (TOKEN, {"chat_id": 1, "text": "я" * 4097}, 400, "Bad Request: message is too long"),
    ],
)
def test_telegram_error_answers(client, token, body, status, description):
    answer = client.post(f"/bot{token}/sendMessage", json=body)
    assert answer.status_code == status
    assert answer.json() == {"ok": False, "error_code": status, "description": description}


def test_telegram_accepts_form_encoding_and_echoes_the_message(client):
    chat = chat_with("deliver")
    markup = json.dumps({"inline_keyboard": [[{"text": "Да", "callback_data": "sub:yes"}]]})
    answer = client.post(f"/bot{TOKEN}/sendMessage", data={"chat_id": chat, "text": "Привет", "reply_markup": markup}).json()
    assert answer["ok"] and answer["result"]["chat"]["id"] == int(chat) and answer["result"]["text"] == "Привет"
    assert answer["result"]["reply_markup"]["inline_keyboard"][0][0]["callback_data"] == "sub:yes"


def test_telegram_get_me_and_set_webhook_validation(client):
    me = client.get(f"/bot{TOKEN}/getMe").json()
    assert me["ok"] and me["result"]["id"] == 42 and me["result"]["is_bot"]
    bad = client.post(f"/bot{TOKEN}/setWebhook", json={"url": "http://127.0.0.1/x", "secret_token": "no spaces"})
    assert bad.status_code == 400
    assert client.post(f"/bot{TOKEN}/nosuchMethod").status_code == 404


# --- Mailgun wire ---------------------------------------------------------------------------------


def test_mailgun_answers(client):
    forbidden = client.post(f"/v3/{DOMAIN}/messages", auth=("api", "wrong"), data=mail_form("a@x.ru"))
    assert (forbidden.status_code, forbidden.text) == (401, "Forbidden")
    unknown = client.post("/v3/other.ru/messages", auth=("api", API_KEY), data=mail_form("a@x.ru"))
    assert (unknown.status_code, unknown.json()) == (404, {"message": "Domain not found: other.ru"})
    for missing, message in [("from", "from parameter is missing"), ("to", "to parameter is missing"),
                             ("subject", "subject parameter is missing")]:
        form = {k: v for k, v in mail_form("a@x.ru").items() if k != missing}
        answer = client.post(f"/v3/{DOMAIN}/messages", auth=("api", API_KEY), data=form)
        assert (answer.status_code, answer.json()) == (400, {"message": message})
    queued = client.post(f"/v3/{DOMAIN}/messages", auth=("api", API_KEY), data=mail_form("deliver@x.ru")).json()
    assert queued["message"] == "Queued. Thank you."
    assert queued["id"].startswith("<") and queued["id"].endswith(f"@{DOMAIN}>")


def test_mailgun_sends_one_event_chain_per_recipient(client, receiver):
    recorder, _ = receiver
    form = mail_form("Иван <deliver+multi@x.ru>, bounce+multi@x.ru", **{"v:send_id": "multi-1"})
    assert client.post(f"/v3/{DOMAIN}/messages", auth=("api", API_KEY), data=form).is_success
    bodies = [r.body["event-data"] for r in recorder.wait_for("/mg", 2, where=lambda b: b["event-data"]["user-variables"] == {"send_id": "multi-1"})]
    assert sorted((e["recipient"], e["event"]) for e in bodies) == [("bounce+multi@x.ru", "failed"), ("deliver+multi@x.ru", "delivered")]


# --- callbacks, retries, inspection ----------------------------------------------------------------


def test_callback_retried_until_the_receiver_accepts(client, receiver):
    recorder, _ = receiver
    recorder.fail_next("/mg", 500, 503)
    form = mail_form("deliver+retry@x.ru", **{"v:send_id": "retry-1"})
    client.post(f"/v3/{DOMAIN}/messages", auth=("api", API_KEY), data=form)
    recorder.wait_for("/mg", 1, where=lambda b: b["event-data"]["user-variables"] == {"send_id": "retry-1"})
    attempts = [r for r in recorder.received("/mg") if r.body["event-data"]["user-variables"] == {"send_id": "retry-1"}]
    assert [a.status for a in attempts] == [500, 503, 200]
    assert len({a.body["signature"]["token"] for a in attempts}) == 3  # re-signed on every attempt
    assert all(mg.verify_webhook(a.body, SIGNING_KEY, now=time.time()) for a in attempts)
    assert wait_until_settled(client)["callbacks"] == {"queued": 1, "delivered": 1, "failed": 0, "pending": 0}


def test_callback_gives_up_after_max_attempts_and_406_stops_mailgun(client, receiver):
    recorder, _ = receiver
    recorder.fail_next("/tg", *[500] * MAX_ATTEMPTS)
    client.post(f"/bot{TOKEN}/sendMessage", json={"chat_id": chat_with("click"), "text": "x"})
    assert wait_until_settled(client)["callbacks"]["failed"] == 1
    recorder.fail_next("/mg", 406)
    client.post(f"/v3/{DOMAIN}/messages", auth=("api", API_KEY), data=mail_form("deliver+406@x.ru"))
    assert wait_until_settled(client)["callbacks"] == {"queued": 2, "delivered": 0, "failed": 2, "pending": 0}
    assert [r.status for r in recorder.received("/mg") if r.body["event-data"]["recipient"] == "deliver+406@x.ru"] == [406]


def test_telegram_callback_carries_the_secret_header(client, receiver):
    recorder, _ = receiver
    chat = chat_with("click")
    sent = client.post(f"/bot{TOKEN}/sendMessage", json={"chat_id": int(chat), "text": "x"}).json()["result"]
    [update] = recorder.wait_for("/tg", 1, where=lambda b: b["callback_query"]["message"]["message_id"] == sent["message_id"])
    assert update.headers["x-telegram-bot-api-secret-token"] == SECRET and tg.verify_webhook(update.headers, SECRET)


def test_stats_messages_and_reset(client):
    client.post(f"/bot{TOKEN}/sendMessage", json={"chat_id": chat_with("blocked"), "text": "x"})
    client.post(f"/bot{TOKEN}/sendMessage", json={"chat_id": chat_with("deliver"), "text": "x"})
    client.post(f"/bot{TOKEN}/sendMessage", json={"chat_id": 1})
    client.post(f"/v3/{DOMAIN}/messages", auth=("api", API_KEY), data=mail_form("complain@x.ru", **{"v:send_id": "s-1"}))
    stats = wait_until_settled(client)
    assert {name: stats["providers"][name] for name in ("telegram", "mailgun")} == {
        "telegram": {"accepted": 1, "refused": 2, "limit_violations": 0, "button_answers": 0, "outcomes": {"blocked": 1, "deliver": 1}},
        "mailgun": {"accepted": 1, "refused": 0, "limit_violations": 0, "button_answers": 0, "outcomes": {"complain": 1}},
    }
    assert stats["callbacks"] == {"queued": 2, "delivered": 2, "failed": 0, "pending": 0}
    [mail] = client.get("/_sandbox/messages", params={"provider": "mailgun"}).json()["messages"]
    assert (mail["recipient"], mail["outcome"], mail["send_id"], mail["account"]) == ("complain@x.ru", "complain", "s-1", DOMAIN)
    assert len(client.get("/_sandbox/messages", params={"provider": "telegram"}).json()["messages"]) == 2
    client.post("/_sandbox/reset")
    assert client.get("/_sandbox/messages").json() == {"messages": []}
    assert client.get("/_sandbox/stats").json()["providers"]["mailgun"] == {"accepted": 0, "refused": 0, "limit_violations": 0, "button_answers": 0, "outcomes": {}}


def test_fault_rate_answers_provider_shaped_503():
    config = SandboxConfig(telegram=[TelegramBot(token=TOKEN)], fault_rate=1.0)
    with running_sandbox(config) as url:
        answer = httpx.post(f"{url}/bot{TOKEN}/sendMessage", json={"chat_id": 1, "text": "x"})
    assert answer.status_code == 503 and answer.json()["description"] == "Service Unavailable"


def test_cli_starts_and_announces_its_url(tmp_path):
    (tmp_path / "sandbox.yaml").write_text(f"telegram:\n  - token: '{TOKEN}'\n")
    command = [sys.executable, "-m", "sandbox", "--config", str(tmp_path / "sandbox.yaml"), "--port", "0"]
    process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True)
    try:
        line = process.stdout.readline().strip()
        assert line.startswith("provider sandbox listening on http://127.0.0.1:")
        url = line.rsplit(" ", 1)[-1]
        assert httpx.get(f"{url}/bot{TOKEN}/getMe").json()["ok"]
    finally:
        process.terminate()
        process.wait(timeout=10)
