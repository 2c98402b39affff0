"""Telegram connector and webhook helpers, against the provider sandbox over real loopback HTTP."""

from __future__ import annotations

import asyncio
import re
import socket
import time
import uuid
from datetime import UTC, datetime

import httpx
import pytest

from resources.channels import OutboundMessage, SendResult, TelegramConnector
from resources.channels import telegram as tg
from resources.channels.base import Attachment
from sandbox.config import SandboxConfig, TelegramBot
from sandbox.outcomes import outcome_for
from sandbox.server import running_sandbox

TOKEN = "123456:sandbox-token"
LIMITED = "222222:rate-limited"
UNHOOKED = "333333:no-webhook-yet"
SECRET = "tg-secret_1"

# Reference payloads (shared/reference/provider-protocols.md §1d).
START = {"update_id": 900000001, "message": {"message_id": 10, "from": {"id": 123456789, "is_bot": False, "first_name": "Иван", "language_code": "ru"}, "chat": {"id": 123456789, "first_name": "Иван", "type": "private"}, "date": 1717000000, "text": "/start promo42", "entities": [{"offset": 0, "length": 6, "type": "bot_command"}]}}  # noqa: E501
STOP = {"update_id": 900000002, "message": {"message_id": 11, "from": {"id": 123456789, "is_bot": False, "first_name": "Иван"}, "chat": {"id": 123456789, "type": "private"}, "date": 1717000100, "text": "/stop", "entities": [{"offset": 0, "length": 5, "type": "bot_command"}]}}  # noqa: E501
PRESS = {"update_id": 900000003, "callback_query": {"id": "4382bfdwdsb323b2d9", "from": {"id": 123456789, "is_bot": False, "first_name": "Иван"}, "message": {"message_id": 4711, "chat": {"id": 123456789, "type": "private"}, "date": 1717000000, "text": "Подписаться?"}, "chat_instance": "-8123456789012345678", "data": "sub:yes"}}  # noqa: E501
KICKED = {"update_id": 900000004, "my_chat_member": {"chat": {"id": 123456789, "type": "private"}, "from": {"id": 123456789, "is_bot": False, "first_name": "Иван"}, "date": 1717000200, "old_chat_member": {"user": {"id": 777, "is_bot": True, "first_name": "Bot"}, "status": "member"}, "new_chat_member": {"user": {"id": 777, "is_bot": True, "first_name": "Bot"}, "status": "kicked", "until_date": 0}}}  # noqa: E501


def chat_with(outcome: str, skip: int = 0) -> str:
    """A chat id whose deterministic sandbox outcome is `outcome` (the `skip`-th such id)."""
    matches = (str(n) for n in range(100_000, 200_000) if outcome_for("telegram", str(n)) == outcome)
    for _ in range(skip):
        next(matches)
    return next(matches)


def message(
    chat: str, text: str = "Привет", buttons: tuple[tuple[str, str], ...] = (), attachments: tuple[Attachment, ...] = ()
) -> OutboundMessage:
    return OutboundMessage(
        send_id=str(uuid.uuid4()), tenant="t1", campaign="c1", channel="telegram", address=chat, text=text,
        buttons=buttons, attachments=attachments,
    )


def send(
    base_url: str, msg: OutboundMessage, token: str = TOKEN, parse_mode: str | None = None, **client_options: object
) -> SendResult:
    async def go() -> SendResult:
        async with httpx.AsyncClient(**client_options) as client:
            return await TelegramConnector(base_url, token, parse_mode=parse_mode).send(client, msg)

    return asyncio.run(go())


def received(base_url: str, chat: str) -> dict:
    """The sandbox's record of the last message to `chat`."""
    messages = httpx.get(f"{base_url}/_sandbox/messages", params={"provider": "telegram"}).json()["messages"]
    return [m for m in messages if m["recipient"] == chat][-1]


PHOTO = Attachment("photo", "https://cdn.example.ru/promo/banner.jpg")
PDF = Attachment("document", "https://cdn.example.ru/promo/price-list.pdf", filename="price-list.pdf")




@pytest.fixture(scope="module")
def sandbox(receiver):
    config = SandboxConfig(
        telegram=[
            TelegramBot(token=TOKEN, webhook_url=f"{receiver[1]}/tg", secret_token=SECRET),
            TelegramBot(token=LIMITED, rate_limit_per_s=1),
            TelegramBot(token=UNHOOKED),
        ],
        callback_delay_s=0.01,
        callback_backoff_s=0.01,
    )
    with running_sandbox(config) as url:
        yield url


def test_send_succeeds_with_chat_scoped_provider_id(sandbox):
    chat = chat_with("deliver")
    result = send(sandbox, message(chat, "Скидка 10%"))
    assert result.ok and result.error_class is None
    provider_chat, message_id = result.provider_message_id.split(":")
    assert provider_chat == chat and message_id.isdigit()
    received = httpx.get(f"{sandbox}/_sandbox/messages", params={"provider": "telegram"}).json()["messages"]
    assert {"recipient": chat, "text": "Скидка 10%", "provider_message_id": result.provider_message_id}.items() <= next(
        m for m in received if m["recipient"] == chat
    ).items()


def test_blocked_chat_is_unreachable_and_sends_no_callback(sandbox, recorder):
    chat = chat_with("blocked")
    result = send(sandbox, message(chat, buttons=(("Да", "sub:yes"),)))
    assert (result.ok, result.error_class) == (False, "unreachable")
    assert result.error == "Forbidden: bot was blocked by the user"
    time.sleep(0.2)  # well past callback_delay_s: anything queued would have arrived
    assert not [r for r in recorder.received("/tg") if str(r.body["callback_query"]["from"]["id"]) == chat]


def test_unknown_chat_is_unreachable(sandbox):
    """A chat Telegram does not know (here an @username: the sandbox has no public channels) answers
    400 "chat not found"; the connector reports it unreachable, which suppresses the channel."""
    result = send(sandbox, message("@no_such_channel", "Привет"))
    assert (result.ok, result.error_class, result.error) == (False, "unreachable", "Bad Request: chat not found")


@pytest.mark.parametrize(
    ("token", "text", "error"),
    [
        ("999:unknown", "hi", "Unauthorized"),
        (TOKEN, "", "message text is empty"),  # refused by validate, before any call
        (TOKEN, "x" * 4097, "message text is 4097 characters, Telegram allows 4096"),
    ],
)
def test_our_mistakes_are_rejected(sandbox, token, text, error):
    result = send(sandbox, message(chat_with("deliver"), text), token=token)
    assert (result.ok, result.error_class, result.error) == (False, "rejected", error)


def test_rate_limit_answers_429_with_retry_after(sandbox):
    first = send(sandbox, message(chat_with("deliver")), token=LIMITED)
    second = send(sandbox, message(chat_with("deliver", skip=1)), token=LIMITED)
    assert first.ok
    assert (second.error_class, second.retry_after) == ("rate_limited", 1.0)
    assert second.error == "Too Many Requests: retry after 1"


def test_provider_5xx_is_transient(sandbox):
    result = send(sandbox, message(chat_with("deliver")), headers={"X-Sandbox-Fault": "502"})
    assert (result.error_class, result.error) == ("transient", "Bad Gateway")


def test_timeout_is_transient(sandbox):
    result = send(sandbox, message(chat_with("deliver")), headers={"X-Sandbox-Delay": "0.5"}, timeout=0.1)
    assert result.error_class == "transient" and "Timeout" in result.error


def test_connection_refused_is_transient():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    result = send(f"http://127.0.0.1:{port}", message("1"))
    assert result.error_class == "transient" and "ConnectError" in result.error


def test_button_press_callback_verifies_and_parses(sandbox, recorder):
    chat = chat_with("click")
    result = send(sandbox, message(chat, "Подписаться?", buttons=(("Да", "sub:yes"), ("Нет", "sub:no"))))
    assert result.ok
    [update] = recorder.wait_for("/tg", 1, where=lambda body: str(body["callback_query"]["from"]["id"]) == chat)
    assert tg.verify_webhook(update.headers, SECRET)
    assert not tg.verify_webhook(update.headers, "someone-else")
    [event] = tg.parse_update(update.body)
    assert event.kind == "clicked" and event.reason == "sub:yes"
    assert event.provider_message_id == result.provider_message_id
    assert event.event_key == f"update:{update.body['update_id']}" and event.address == chat


def test_set_webhook_overrides_config(sandbox, receiver):
    recorder, receiver_url = receiver
    answer = httpx.post(
        f"{sandbox}/bot{UNHOOKED}/setWebhook", json={"url": f"{receiver_url}/tg2", "secret_token": "fresh_secret"}
    )
    assert answer.json() == {"ok": True, "result": True, "description": "Webhook was set"}
    chat = chat_with("click")
    assert send(sandbox, message(chat), token=UNHOOKED).ok
    [update] = recorder.wait_for("/tg2", 1)
    assert update.body["callback_query"]["data"] == "open"  # no buttons: the sandbox presses "open"
    assert tg.verify_webhook(update.headers, "fresh_secret")


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"X-Telegram-Bot-Api-Secret-Token": SECRET}, True),
        ({"x-telegram-bot-api-secret-token": SECRET}, True),
        ({"X-Telegram-Bot-Api-Secret-Token": SECRET + "x"}, False),
        ({"X-Telegram-Bot-Api-Secret-Token": ""}, False),
        ({}, False),
    ],
)
def test_verify_webhook(headers, expected):
    assert tg.verify_webhook(headers, SECRET) is expected


def test_verify_webhook_refuses_with_no_configured_secret():
    assert not tg.verify_webhook({"X-Telegram-Bot-Api-Secret-Token": ""}, "")


def test_parse_reference_updates():
    received = datetime(2026, 1, 2, tzinfo=UTC)
    events = [tg.parse_update(update, received_at=received)[0] for update in (START, STOP, PRESS, KICKED)]
    assert [(e.event_key, e.kind, e.address) for e in events] == [
        ("update:900000001", "opt_in", "123456789"),
        ("update:900000002", "opt_out", "123456789"),
        ("update:900000003", "clicked", "123456789"),
        ("update:900000004", "opt_out", "123456789"),
    ]
    assert events[0].occurred_at == datetime.fromtimestamp(1717000000, tz=UTC)
    assert events[0].ref == "promo42"  # the deep-link payload of "/start promo42"
    assert tg.parse_update({**START, "message": {**START["message"], "text": "/start"}})[0].ref is None
    assert events[2].provider_message_id == "123456789:4711" and events[2].reason == "sub:yes"
    assert events[2].occurred_at == received  # a button press carries no date of its own
    assert events[3].reason == "status:kicked"


def test_parse_update_tolerates_and_ignores_the_rest():
    unblocked = {**KICKED, "update_id": 5, "my_chat_member": {**KICKED["my_chat_member"], "new_chat_member": {"status": "member"}}}
    assert tg.parse_update(unblocked)[0].kind == "unblocked"  # asks for no messages: no grant (docs/architecture.md)
    chatter = {"update_id": 6, "message": {**STOP["message"], "text": "привет"}, "brand_new_field": {"x": 1}}
    edited = {"update_id": 7, "edited_message": STOP["message"]}
    assert [(e.kind, e.reason) for e in tg.parse_update(chatter) + tg.parse_update(edited)] == [
        ("ignored", "message"),
        ("ignored", "edited_message"),
    ]
    with_bot_name = {"update_id": 8, "message": {**STOP["message"], "text": "/stop@SandboxBot"}}
    assert tg.parse_update(with_bot_name)[0].kind == "opt_out"


def test_update_without_id_is_refused():
    with pytest.raises(ValueError):
        tg.parse_update({"message": STOP["message"]})


@pytest.mark.parametrize(
    ("status", "body", "error_class", "retry_after"),
    [
        (429, {"ok": False, "error_code": 429, "description": "Too Many Requests: retry after 35"}, "rate_limited", 35.0),
        (429, {"ok": False, "description": "Too Many Requests"}, "rate_limited", None),
        (403, {"ok": False, "description": "Forbidden: user is deactivated"}, "unreachable", None),
        (403, {"ok": False, "description": "Forbidden: bot can't initiate conversation with a user"}, "unreachable", None),
        (400, {"ok": False, "description": "USER_IS_BLOCKED"}, "unreachable", None),
        (400, {"ok": False, "description": "Bad Request: chat not found"}, "unreachable", None),
        (400, {"ok": False, "description": "Bad Request: can't parse entities"}, "rejected", None),
        (404, {"ok": False, "description": "Not Found"}, "rejected", None),
        (502, {}, "transient", None),
    ],
)
def test_classify_provider_answers(status, body, error_class, retry_after):
    result = tg.classify(status, body)
    assert (result.ok, result.error_class, result.retry_after) == (False, error_class, retry_after)


# --- rich messages: parse_mode, media, chat actions -------------------------------------------------


def test_html_parse_mode_is_passed_and_counted_without_markup(sandbox):
    chat = chat_with("deliver", skip=2)
    text = "<b>Скидка</b> &amp; " + "x" * 4080  # 4100 characters on the wire, over the limit…
    assert len(text) == 4100 and tg.visible_length(text, "HTML") == 4089  # …but only "Скидка & xx…" counts
    result = send(sandbox, message(chat, text), parse_mode="HTML")
    assert result.ok
    record = received(sandbox, chat)
    assert (record["method"], record["parse_mode"], record["text"]) == ("sendMessage", "HTML", text)


def test_markdown_v2_mistakes_come_back_rejected(sandbox):
    chat = chat_with("deliver", skip=3)
    result = send(sandbox, message(chat, "Скидка 10%!"), parse_mode="MarkdownV2")
    assert result.error_class == "rejected" and result.error.startswith("Bad Request: can't parse entities")
    assert send(sandbox, message(chat, tg.escape_markdown_v2("Скидка 10%!")), parse_mode="MarkdownV2").ok


def test_photo_goes_out_with_send_photo_and_the_text_as_caption(sandbox, recorder):
    chat = chat_with("click", skip=1)
    msg = message(chat, "Новая коллекция", buttons=(("Смотреть", "view:1"),), attachments=(PHOTO,))
    assert TelegramConnector(sandbox, TOKEN).payload(msg) == {
        "chat_id": int(chat),
        "photo": PHOTO.url,
        "caption": "Новая коллекция",
        "reply_markup": {"inline_keyboard": [[{"text": "Смотреть", "callback_data": "view:1"}]]},
    }
    result = send(sandbox, msg)
    assert result.ok and result.provider_message_id.startswith(f"{chat}:")
    record = received(sandbox, chat)
    assert (record["method"], record["media"], record["text"]) == ("sendPhoto", PHOTO.url, "Новая коллекция")
    [update] = recorder.wait_for("/tg", 1, where=lambda body: str(body["callback_query"]["from"]["id"]) == chat)
    pressed = update.body["callback_query"]
    assert pressed["data"] == "view:1" and pressed["message"]["caption"] == "Новая коллекция"
    assert pressed["message"]["photo"][-1]["file_id"]  # Telegram answers with the PhotoSize list
    assert tg.parse_update(update.body)[0].provider_message_id == result.provider_message_id


def test_document_goes_out_with_send_document(sandbox):
    chat = chat_with("deliver", skip=4)
    result = send(sandbox, message(chat, "", attachments=(Attachment("document", PDF.url, caption="Прайс"),)))
    assert result.ok
    record = received(sandbox, chat)
    assert (record["method"], record["media"], record["text"]) == ("sendDocument", PDF.url, "Прайс")


def test_a_file_id_the_sandbox_issued_can_be_sent_again(sandbox):
    chat = chat_with("deliver", skip=5)
    first = httpx.post(f"{sandbox}/bot{TOKEN}/sendPhoto", json={"chat_id": chat, "photo": PHOTO.url}).json()
    file_id = first["result"]["photo"][-1]["file_id"]
    assert send(sandbox, message(chat, "Ещё раз", attachments=(Attachment("photo", file_id),))).ok
    wrong = send(sandbox, message(chat, "", attachments=(Attachment("photo", "AgACAgIAAxno-such-file"),)))
    assert (wrong.error_class, wrong.error) == ("rejected", "Bad Request: wrong file identifier/HTTP URL specified")


@pytest.mark.parametrize(
    ("method", "body", "description"),
    [
        ("sendPhoto", {"photo": "ftp://cdn.example.ru/a.jpg"}, "Bad Request: wrong file identifier/HTTP URL specified"),
        ("sendDocument", {"document": "https://cdn.example.ru/a.txt"}, "Bad Request: wrong file identifier/HTTP URL specified"),
        ("sendPhoto", {}, "Bad Request: there is no photo in the request"),
        ("sendPhoto", {"photo": PHOTO.url, "caption": "я" * 1025}, "Bad Request: message caption is too long"),
        ("sendMessage", {"text": "<b>hi", "parse_mode": "HTML"},
         'Bad Request: can\'t parse entities: Can\'t find end tag corresponding to start tag "b"'),
        ("sendMessage", {"text": "hi", "parse_mode": "html5"}, "Bad Request: unsupported parse_mode"),
        ("sendMessage", {"text": "hi", "reply_markup": {"inline_keyboard": [[{"text": "x", "callback_data": "я" * 33}]]}},
         "Bad Request: BUTTON_DATA_INVALID"),
        ("sendChatAction", {"action": "dancing"}, "Bad Request: wrong parameter action in request"),
    ],
)
def test_sandbox_refuses_media_and_markup_like_telegram(sandbox, method, body, description):
    answer = httpx.post(f"{sandbox}/bot{TOKEN}/{method}", json={"chat_id": chat_with("deliver"), **body})
    assert (answer.status_code, answer.json()) == (400, {"ok": False, "error_code": 400, "description": description})
    assert tg.classify(answer.status_code, answer.json()).error_class == "rejected"


def test_chat_action(sandbox):
    async def go(chat: str, action: str = "typing") -> SendResult:
        async with httpx.AsyncClient() as client:
            return await TelegramConnector(sandbox, TOKEN).send_chat_action(client, chat, action)

    assert asyncio.run(go(chat_with("deliver"))) == SendResult(ok=True)
    assert asyncio.run(go(chat_with("deliver"), "upload_document")).ok
    blocked = asyncio.run(go(chat_with("blocked")))
    assert (blocked.error_class, blocked.error) == ("unreachable", "Forbidden: bot was blocked by the user")
    with pytest.raises(ValueError):
        asyncio.run(go(chat_with("deliver"), "dancing"))


@pytest.mark.parametrize(
    ("msg", "error"),
    [
        (message("1", attachments=(PHOTO, PDF)), "at most one attachment per message, got 2"),
        (message("1", attachments=(Attachment("video", "https://cdn.example.ru/v.mp4"),)), "attachment kind 'video' is not supported"),
        (message("1", attachments=(Attachment("audio", "https://cdn.example.ru/a.mp3"),)), "attachment kind 'audio' is not supported"),
        (message("1", attachments=(Attachment("photo", "http://cdn.example.ru/a.jpg"),)), "photo URL must be an absolute https:// URL"),
        (message("1", attachments=(Attachment("document", "https://cdn.example.ru/a.docx"),)), "only for .pdf, .zip and .gif"),
        (message("1", "я" * 1025, attachments=(PHOTO,)), "caption is 1025 characters, Telegram allows 1024"),
        (message("1", "   "), "message text is empty"),
        (message("1", "x" * 4097), "message text is 4097 characters"),
        (message("1", buttons=(("Да", "я" * 33),)), "callback_data must be 1-64 bytes"),
        (message("1", buttons=(("Да", ""),)), "callback_data must be 1-64 bytes"),
    ],
)
def test_validate_refuses_what_telegram_would(msg, error):
    with pytest.raises(ValueError, match=re.escape(error)):
        TelegramConnector("http://127.0.0.1:9", TOKEN).validate(msg)
    # send() refuses the same message without a call (nothing listens on port 9: a call would be a ConnectError)
    result = send("http://127.0.0.1:9", msg)
    assert result.error_class == "rejected" and error in result.error


def test_validate_accepts_a_caption_of_1024_and_a_file_id():
    connector = TelegramConnector("http://127.0.0.1:9", TOKEN)
    connector.validate(message("1", "я" * 1024, attachments=(PHOTO,)))
    connector.validate(message("1", "", attachments=(Attachment("document", "BQACAgIAAxkBAAIBQ2Zx"),)))
    with pytest.raises(ValueError):
        TelegramConnector("http://127.0.0.1:9", TOKEN, parse_mode="Markdown")
