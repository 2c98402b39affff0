"""The provider sandbox held against the providers' own client libraries, over real loopback HTTP.

One test per provider: the library, pointed at the sandbox through its own base-URL setting, sends
successfully, gets the provider's error answers in the shapes it knows how to read, and (where the
library ships one) checks the sandbox's webhooks with its own verifier or parser. The libraries are
test dependencies only (`[project.optional-dependencies] dev`); the product never imports them.
360dialog and SMS.ru publish no Python client; their wire is covered by the connector tests.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any
from urllib.error import HTTPError
from urllib.parse import quote
from urllib.request import urlopen

import mailgun.client
import mailgun.security
import pytest
import python_http_client.exceptions
import requests
import sendgrid
import telegram
import telegram.error
import twilio.base.exceptions
import twilio.request_validator
import twilio.rest
import vk_api
import vk_api.exceptions
from sendgrid.helpers.eventwebhook import EventWebhook
from sendgrid.helpers.mail import Mail
from whatsapp_api_client_python import API as green_api

from sandbox.config import (
    GreenApiInstance,
    MailgunDomain,
    SandboxConfig,
    SendGridAccount,
    SmscAccount,
    TelegramBot,
    TwilioAccount,
    VkGroup,
)
from sandbox.outcomes import outcome_for
from sandbox.server import running_sandbox

TG_TOKEN, TG_LIMITED, TG_SECRET = "4242:client-libraries", "4343:limited", "client_lib_secret"
TW_SID, TW_TOKEN, TW_SENDER = "AC" + "c" * 32, "tw-client-token", "+14155238886"
SG_KEY = "SG.client-libraries"
VK_GROUP, VK_TOKEN = 3003, "vk1.a.client-libraries"
MG_DOMAIN, MG_KEY, MG_SIGNING = "mg.client.example", "key-client-libraries", "client-signing-key"
GA_ID, GA_TOKEN = 7103000777, "ga-client-token"
SMSC_LOGIN, SMSC_PASSWORD = "client-libs", "smsc-client-password"


def recipient(provider: str, outcome: str, template: str = "+7916{:07d}") -> str:
    """The first address of `template`'s shape whose sandbox outcome at `provider` is `outcome`."""
    return next(template.format(n) for n in range(1, 100_000) if outcome_for(provider, template.format(n)) == outcome)


@pytest.fixture(scope="module")
def sandbox(receiver):
    hook = receiver[1]
    config = SandboxConfig(
        telegram=[TelegramBot(token=TG_TOKEN), TelegramBot(token=TG_LIMITED, rate_limit_per_s=1)],
        twilio=[TwilioAccount(account_sid=TW_SID, auth_token=TW_TOKEN)],
        sendgrid=[SendGridAccount(api_key=SG_KEY, webhook_url=f"{hook}/sg")],
        vk=[VkGroup(group_id=VK_GROUP, access_token=VK_TOKEN)],
        mailgun=[MailgunDomain(domain=MG_DOMAIN, api_key=MG_KEY, signing_key=MG_SIGNING, webhook_url=f"{hook}/mg")],
        greenapi=[GreenApiInstance(id_instance=GA_ID, api_token=GA_TOKEN)],
        smsc=[SmscAccount(login=SMSC_LOGIN, password=SMSC_PASSWORD)],
        callback_delay_s=0.01,
        callback_max_attempts=2,
        callback_backoff_s=0.01,
    )
    with running_sandbox(config) as url:
        yield url


def test_telegram_through_python_telegram_bot(sandbox, receiver):
    recorder, hook = receiver
    clicker, blocked = recipient("telegram", "click", "{}"), recipient("telegram", "blocked", "{}")

    async def drive() -> dict[str, Any]:
        seen: dict[str, Any] = {}
        async with telegram.Bot(TG_TOKEN, base_url=f"{sandbox}/bot") as bot:
            seen["me"] = await bot.get_me()
            seen["set"] = await bot.set_webhook(f"{hook}/tg-lib", secret_token=TG_SECRET, allowed_updates=["message", "callback_query"])
            seen["info"] = await bot.get_webhook_info()
            keyboard = telegram.InlineKeyboardMarkup([[telegram.InlineKeyboardButton("Да", callback_data="sub:yes")]])
            seen["sent"] = await bot.send_message(int(clicker), "Подписаться?", reply_markup=keyboard)
            [post] = await asyncio.to_thread(recorder.wait_for, "/tg-lib", 1)
            seen["post"] = post
            seen["update"] = telegram.Update.de_json(post.body, bot)
            seen["answered"] = await bot.answer_callback_query(seen["update"].callback_query.id, text="Готово")
            for name, call in [
                ("blocked", bot.send_message(int(blocked), "x")),
                ("unknown_chat", bot.send_message("@no_such_channel", "x")),
                ("empty_text", bot.send_message(int(clicker), "")),
            ]:
                with pytest.raises(telegram.error.TelegramError) as caught:
                    await call
                seen[name] = caught.value
            # A receiver that fails: getWebhookInfo reports it in Telegram's words.
            recorder.fail_next("/tg-lib", 500, 500)
            await bot.send_message(int(recipient("telegram", "click", "1{}")), "x")
            deadline = time.monotonic() + 5
            while (info := await bot.get_webhook_info()).pending_update_count and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            seen["failing"] = info
            seen["deleted"] = await bot.delete_webhook(drop_pending_updates=True)
            seen["after"] = await bot.get_webhook_info()
        with pytest.raises(telegram.error.InvalidToken) as caught:  # the Bot checks its token on entering
            async with telegram.Bot("1:not-a-bot", base_url=f"{sandbox}/bot"):
                pass
        seen["stranger"] = caught.value
        async with telegram.Bot(TG_LIMITED, base_url=f"{sandbox}/bot") as limited:
            await limited.send_message(int(recipient("telegram", "deliver", "{}")), "x")
            with pytest.raises(telegram.error.RetryAfter) as caught:
                await limited.send_message(int(recipient("telegram", "deliver", "{}")), "y")
            seen["limited"] = caught.value
        return seen

    seen = asyncio.run(drive())
    assert seen["me"].id == 4242 and seen["me"].is_bot and seen["set"] is True
    assert (seen["info"].url, seen["info"].allowed_updates, seen["info"].pending_update_count) == (
        f"{hook}/tg-lib", ("message", "callback_query"), 0)
    assert (seen["sent"].chat.id, seen["sent"].text) == (int(clicker), "Подписаться?")
    assert seen["post"].headers["x-telegram-bot-api-secret-token"] == TG_SECRET
    query = seen["update"].callback_query
    assert (query.data, query.message.message_id, query.from_user.id) == ("sub:yes", seen["sent"].message_id, int(clicker))
    assert seen["answered"] is True
    assert isinstance(seen["blocked"], telegram.error.Forbidden) and seen["blocked"].message == "Forbidden: bot was blocked by the user"
    assert isinstance(seen["unknown_chat"], telegram.error.BadRequest) and seen["unknown_chat"].message == "Chat not found"
    assert isinstance(seen["empty_text"], telegram.error.BadRequest) and seen["empty_text"].message == "Message text is empty"
    assert seen["failing"].last_error_message == "Wrong response from the webhook: 500 Internal Server Error"
    assert abs(seen["failing"].last_error_date.timestamp() - time.time()) < 30
    assert seen["deleted"] is True and (seen["after"].url, seen["after"].pending_update_count) == ("", 0)
    assert isinstance(seen["stranger"], telegram.error.InvalidToken)
    assert seen["limited"].retry_after == 1  # seconds, from parameters.retry_after


def test_twilio_through_the_twilio_sdk(sandbox, receiver):
    recorder, hook = receiver
    client = twilio.rest.Client(TW_SID, TW_TOKEN)
    client.api.base_url = sandbox  # the SDK's per-domain base URL
    to = recipient("twilio", "deliver")
    message = client.messages.create(to=f"whatsapp:{to}", from_=f"whatsapp:{TW_SENDER}", body="Привет", status_callback=f"{hook}/tw-lib")
    assert message.sid.startswith("SM") and message.status == "queued" and message.to == f"whatsapp:{to}"
    callbacks = recorder.wait_for("/tw-lib", 2, where=lambda body: body["MessageSid"] == message.sid)
    assert [c.body["MessageStatus"] for c in callbacks] == ["sent", "delivered"]
    validator = twilio.request_validator.RequestValidator(TW_TOKEN)
    assert all(validator.validate(f"{hook}/tw-lib", c.body, c.headers["x-twilio-signature"]) for c in callbacks)
    assert not validator.validate(f"{hook}/tw-lib", {**callbacks[0].body, "MessageStatus": "read"}, callbacks[0].headers["x-twilio-signature"])

    with pytest.raises(twilio.base.exceptions.TwilioRestException) as opted_out:
        client.messages.create(to=recipient("twilio", "opted_out"), from_=TW_SENDER, body="x")
    assert (opted_out.value.status, opted_out.value.code) == (400, 21610)
    with pytest.raises(twilio.base.exceptions.TwilioRestException) as bad_to:
        client.messages.create(to="89161234567", from_=TW_SENDER, body="x")
    assert (bad_to.value.status, bad_to.value.code) == (400, 21211)
    stranger = twilio.rest.Client(TW_SID, "wrong-token")
    stranger.api.base_url = sandbox
    with pytest.raises(twilio.base.exceptions.TwilioRestException) as unauthorised:
        stranger.messages.create(to=to, from_=TW_SENDER, body="x")
    assert (unauthorised.value.status, unauthorised.value.code) == (401, 20003)


def test_sendgrid_through_the_sendgrid_sdk(sandbox, receiver):
    recorder, _ = receiver
    client = sendgrid.SendGridAPIClient(SG_KEY, host=sandbox)
    send_id = str(uuid.uuid4())
    mail = Mail(from_email="shop@client.example", to_emails="deliver+lib@example.ru", subject="Скидки", plain_text_content="Привет")
    mail.custom_arg = sendgrid.helpers.mail.CustomArg("send_id", send_id)
    answer = client.send(mail)
    assert answer.status_code == 202 and answer.headers["X-Message-Id"]

    signed = client.client.user.webhooks.event.settings.signed.get()
    public_key = EventWebhook().convert_public_key_to_ecdsa(signed.to_dict["public_key"])
    [post] = recorder.wait_for("/sg", 1, where=lambda events: any(event.get("send_id") == send_id for event in events))
    assert [event["event"] for event in post.body] == ["processed", "delivered"]
    timestamp, signature = post.headers["x-twilio-email-event-webhook-timestamp"], post.headers["x-twilio-email-event-webhook-signature"]
    assert EventWebhook().verify_signature(post.raw.decode(), signature, timestamp, public_key)
    assert not EventWebhook().verify_signature(post.raw.decode().replace("delivered", "bounce"), signature, timestamp, public_key)

    with pytest.raises(python_http_client.exceptions.BadRequestsError) as invalid:
        client.send(Mail(from_email="shop@client.example", to_emails="deliver+lib@example.ru"))  # no subject, no content
    assert {error["field"] for error in invalid.value.to_dict["errors"]} == {"subject", "content"}
    with pytest.raises(python_http_client.exceptions.UnauthorizedError) as unauthorised:
        sendgrid.SendGridAPIClient("SG.wrong", host=sandbox).send(mail)
    assert unauthorised.value.to_dict["errors"][0]["message"] == "The provided authorization grant is invalid, expired, or revoked"


class _ToSandbox(requests.adapters.HTTPAdapter):
    """vk_api hard-codes https://api.vk.ru and takes a requests.Session as its one hook: this adapter,
    mounted on that host, sends the same request to the sandbox instead."""

    def __init__(self, base_url: str):
        super().__init__()
        self._base_url = base_url

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
        request.url = self._base_url + str(request.url).removeprefix("https://api.vk.ru")
        return super().send(request, **kwargs)


def vk_session(sandbox: str, token: str = VK_TOKEN) -> vk_api.VkApi:
    http = requests.Session()
    http.mount("https://api.vk.ru/", _ToSandbox(sandbox))
    return vk_api.VkApi(token=token, api_version="5.199", session=http)


def test_vk_through_vk_api(sandbox):
    vk = vk_session(sandbox).get_api()
    peer = int(recipient("vk", "deliver", "{}"))
    message_id = vk.messages.send(peer_id=peer, random_id=7001, message="Привет")
    assert isinstance(message_id, int) and message_id > 0
    assert vk.messages.send(peer_id=peer, random_id=7001, message="Привет") == message_id  # VK keeps random_id

    errors = {}
    for name, call in [
        ("blocked", lambda: vk.messages.send(peer_id=int(recipient("vk", "blocked", "{}")), random_id=7002, message="x")),
        ("no_random_id", lambda: vk.messages.send(peer_id=peer, message="x")),
        ("unknown_method", lambda: vk.wall.post(message="x")),
        ("bad_token", lambda: vk_session(sandbox, "vk1.a.wrong").get_api().messages.send(peer_id=peer, random_id=1, message="x")),
    ]:
        with pytest.raises(vk_api.exceptions.ApiError) as caught:
            call()
        errors[name] = caught.value
    assert {name: error.code for name, error in errors.items()} == {"blocked": 901, "no_random_id": 100, "unknown_method": 3, "bad_token": 5}
    assert errors["blocked"].error["error_msg"] == "Can't send messages for users without permission"
    assert {"key": "peer_id", "value": str(peer)} in errors["no_random_id"].error["request_params"]


def test_mailgun_through_the_mailgun_sdk(sandbox, receiver):
    recorder, _ = receiver
    send_id = str(uuid.uuid4())
    with mailgun.client.Client(auth=("api", MG_KEY), api_url=sandbox) as client:
        form = {"from": f"shop@{MG_DOMAIN}", "to": "deliver+lib@example.ru", "subject": "Скидки", "text": "Привет", "v:send_id": send_id}
        queued = client.messages.create(data=form, domain=MG_DOMAIN)
        missing = client.messages.create(data={k: v for k, v in form.items() if k != "subject"}, domain=MG_DOMAIN)
        unknown = client.messages.create(data=form, domain="other.example")
    with mailgun.client.Client(auth=("api", "key-wrong"), api_url=sandbox) as stranger:
        forbidden = stranger.messages.create(data=form, domain=MG_DOMAIN)
    assert queued.status_code == 200 and queued.json()["message"] == "Queued. Thank you."
    assert queued.json()["id"].endswith(f"@{MG_DOMAIN}>")
    assert (missing.status_code, missing.json()) == (400, {"message": "subject parameter is missing"})
    assert (unknown.status_code, unknown.json()) == (404, {"message": "Domain not found: other.example"})
    assert (forbidden.status_code, forbidden.text) == (401, "Forbidden")

    [event] = recorder.wait_for("/mg", 1, where=lambda body: body["event-data"]["user-variables"].get("send_id") == send_id)
    signature = event.body["signature"]
    assert mailgun.security.SecurityGuard.verify_webhook(MG_SIGNING, signature["token"], signature["timestamp"], signature["signature"])
    assert not mailgun.security.SecurityGuard.verify_webhook("other-key", signature["token"], signature["timestamp"], signature["signature"])
    assert event.body["event-data"]["message"]["headers"]["message-id"] == queued.json()["id"].strip("<>")


def test_greenapi_through_its_python_client(sandbox):
    client = green_api.GreenAPI(str(GA_ID), GA_TOKEN, host=sandbox, media=sandbox)
    state = client.account.getStateInstance()
    assert (state.code, state.data) == (200, {"stateInstance": "authorized"})
    chat = recipient("greenapi", "deliver").lstrip("+") + "@c.us"
    text = client.sending.sendMessage(chat, "Привет")
    assert text.code == 200 and text.data["idMessage"].startswith("3EB0")
    file = client.sending.sendFileByUrl(chat, "https://cdn.example.ru/price.pdf", "price.pdf", "Прайс")
    assert file.code == 200 and file.data["idMessage"] != text.data["idMessage"]
    invalid = client.sending.sendMessage("not-a-chat", "x")
    assert invalid.code == 400 and json.loads(invalid.error)["message"].startswith("Validation failed")
    stranger = green_api.GreenAPI(str(GA_ID), "wrong-token", host=sandbox, media=sandbox).sending.sendMessage(chat, "x")
    assert stranger.code == 401


def smsc_command(sandbox: str, command: str, arguments: str) -> list[str]:
    """One call the way SMSC's published smsc_api.py makes it: GET /sys/<command>.php with login, psw,
    fmt=1 and charset=utf-8 first, then the command's own arguments; the answer split on commas."""
    url = f"{sandbox}/sys/{command}.php?login={quote(SMSC_LOGIN)}&psw={quote(SMSC_PASSWORD)}&fmt=1&charset=utf-8&{arguments}"
    try:
        return urlopen(url, timeout=5).read().decode().split(",")
    except HTTPError as exc:  # SMSC answers 200 either way: another status is the sandbox's failure
        raise AssertionError(f"HTTP {exc.code} for {command}") from exc


def test_smsc_through_the_request_shapes_of_smsc_api_py(sandbox):
    """SMSC publishes its client modules (smsc_api.py, …) on its website, not on PyPI, so this test
    sends the exact requests smsc_api.py's send_sms and get_status send (send: cost=3, phones, mes,
    translit=0, id=0 by default; status: phone, id, all=0) and reads the answers as it does:
    (id, cnt, cost, balance) or (id, -error) for a send, (status, time, err) for a status."""
    phone = recipient("smsc", "expired").lstrip("+")
    message_id, parts, cost, balance = smsc_command(sandbox, "send", f"cost=3&phones={phone}&mes={quote('Привет, мир')}&translit=0&id=0")
    assert int(message_id) > 0 and parts == "1" and float(cost) > 0 and float(balance) > 0
    status, changed_at, err = smsc_command(sandbox, "status", f"phone={phone}&id={message_id}&all=0")
    assert (status, err) == ("3", "6") and abs(int(changed_at) - time.time()) < 30

    no_route = recipient("smsc", "no_route").lstrip("+")
    assert smsc_command(sandbox, "send", f"cost=3&phones={no_route}&mes=x&translit=0&id=4711") == ["4711", "-8"]
    refused_id, code = smsc_command(sandbox, "send", "cost=3&phones=123&mes=x&translit=0&id=0")
    assert int(refused_id) > 0 and code == "-7"  # errors about the message name it
    assert smsc_command(sandbox, "send", f"cost=3&phones={phone}&mes=&translit=0&id=0") == ["0", "-1"]
    assert smsc_command(sandbox, "status", f"phone={phone}&id=999999&all=0")[0] == "-3"
    with_wrong_password = f"{sandbox}/sys/send.php?login={SMSC_LOGIN}&psw=wrong&fmt=1&charset=utf-8&cost=3&phones={phone}&mes=x&translit=0&id=0"
    assert urlopen(with_wrong_password, timeout=5).read().decode() == "0,-2"
