"""The Telegram Bot API as the sandbox speaks it: `/bot<token>/<method>` for getMe, sendMessage,
sendPhoto, sendDocument, sendChatAction and answerCallbackQuery, and setWebhook, deleteWebhook and
getWebhookInfo (`sandbox.telegram_webhook`).

The sandbox's chats are private chats named by their numeric id, and it knows every one of them; a
chat_id that is not a non-zero integer (an @username: it has no public channels) answers 400
"Bad Request: chat not found", as Telegram does for a chat it does not know.

A button press (`callback_query` update) must be answered with answerCallbackQuery, as an API call
or, as Telegram allows, in the body of the webhook's answer (`{"method": "answerCallbackQuery", …}`;
no other method is executed from a webhook answer here). `GET /_sandbox/telegram/callback_queries`
lists the presses and how each was answered.

Error bodies are Telegram's `{"ok": false, "error_code": n, "description": "…"}`. Deliberate
deviations (the webhook's are in `sandbox.telegram_webhook`): media URLs are never fetched (any
http(s) URL with a host "downloads"), and a file_id is accepted when it has the shape of one this
sandbox issues. The parse_mode checks cover the common mistakes (unsupported or unclosed HTML tags,
unescaped MarkdownV2 characters), not Telegram's whole parser.
"""

from __future__ import annotations

import hashlib
import html
import json
import re
import secrets
import time
from typing import Any
from urllib.parse import urlsplit

import httpx
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from sandbox import telegram_webhook
from sandbox.config import TelegramBot
from sandbox.forms import BadRequest, read_params
from sandbox.outcomes import BLOCKED, CLICK, TELEGRAM, outcome_for
from sandbox.state import SandboxState

MAX_TEXT = 4096
MAX_CAPTION = 1024
MAX_CALLBACK_DATA = 64  # bytes
_CHAT_ACTIONS = frozenset({
    "typing", "upload_photo", "record_video", "upload_video", "record_voice", "upload_voice",
    "upload_document", "choose_sticker", "find_location", "record_video_note", "upload_video_note",
})
# Media methods: parameter name, file_id prefix this sandbox issues (the real ids start alike).
_MEDIA = {"sendPhoto": ("photo", "AgACAgIAAx"), "sendDocument": ("document", "BQACAgIAAx")}
_BAD_FILE = "wrong file identifier/HTTP URL specified"
_HTML_TAGS = frozenset({
    "b", "strong", "i", "em", "u", "ins", "s", "strike", "del", "span", "tg-spoiler", "a", "code", "pre",
    "blockquote", "tg-emoji",
})
_HTML_TAG = re.compile(r"<(/?)([^\s>/]*)[^>]*>")
_MD_RESERVED = set(">#+-=|{}.!")
_MD_LINK_TARGET = re.compile(r"\]\((?:[^)\\]|\\.)*\)")  # "](url)": inside, only ")" and "\" are escaped
_MD_CODE = re.compile(r"```.*?```|`[^`]*`", re.DOTALL)  # inside code, only "`" and "\" are escaped


_CHAT_ID = re.compile(r"^-?\d{1,20}$")
QUERY_INVALID = "Bad Request: query is too old and response timeout expired or query ID is invalid"
CHAT_NOT_FOUND = "Bad Request: chat not found"
_WEBHOOK_METHODS = {"setWebhook": telegram_webhook.set_webhook, "deleteWebhook": telegram_webhook.delete_webhook}


def routes() -> list[Route]:
    return [
        Route("/bot{token}/{method}", _dispatch, methods=["GET", "POST"]),
        Route("/_sandbox/telegram/callback_queries", _callback_queries, methods=["GET"]),
    ]


def bot_id(token: str) -> int:
    """Telegram tokens are "<bot id>:<secret>"; for other shapes derive a stable id from the token."""
    prefix = token.split(":", 1)[0]
    return int(prefix) if prefix.isdigit() else int(hashlib.sha256(token.encode()).hexdigest()[:8], 16)


def _error(status: int, description: str, retry_after: int | None = None) -> JSONResponse:
    body: dict[str, Any] = {"ok": False, "error_code": status, "description": description}
    if retry_after is not None:
        body["parameters"] = {"retry_after": retry_after}
    return JSONResponse(body, status_code=status)


def _ok(result: Any, **extra: Any) -> JSONResponse:
    return JSONResponse({"ok": True, "result": result, **extra})


async def _dispatch(request: Request) -> JSONResponse:
    state: SandboxState = request.app.state.sandbox
    token, method = request.path_params["token"], request.path_params["method"]
    bot = next((bot for bot in state.config.telegram if bot.token == token), None)
    if bot is None:
        if method == "sendMessage" or method in _MEDIA:
            state.refuse(TELEGRAM)
        return _error(401, "Unauthorized")
    try:
        params = dict(await read_params(request))
    except BadRequest as exc:
        return _error(400, f"Bad Request: {exc}")
    if method == "getMe":
        ident = bot_id(token)
        return _ok({"id": ident, "is_bot": True, "first_name": "Sandbox bot", "username": f"sandbox_{ident}_bot"})
    if method in _WEBHOOK_METHODS:
        try:
            description = _WEBHOOK_METHODS[method](state, bot, params)
        except telegram_webhook.WebhookError as exc:
            return _error(400, f"Bad Request: {exc}")
        return _ok(True, description=description)
    if method == "getWebhookInfo":
        return _ok(telegram_webhook.webhook_info(state, bot))
    if method in ("sendMessage", *_MEDIA):
        return await _send(request, state, bot, method, params)
    if method == "sendChatAction":
        return await _send_chat_action(request, state, bot, params)
    if method == "answerCallbackQuery":
        return _answer_callback_query(state, bot, params, via="api")
    return _error(404, "Not Found")


async def _send(request: Request, state: SandboxState, bot: TelegramBot, method: str, params: dict[str, Any]) -> JSONResponse:
    """sendMessage / sendPhoto / sendDocument: validate, admit, decide the outcome, answer the Message."""
    chat_id, parse_mode = params.get("chat_id"), params.get("parse_mode")
    kind, prefix = _MEDIA.get(method, ("", ""))
    text = params.get("caption" if kind else "text")
    file_ref = str(params.get(kind) or "") if kind else ""
    problem = (
        "chat_id is empty" if chat_id in (None, "") else
        f"there is no {kind} in the request" if kind and not file_ref else
        "message text is empty" if not kind and not text else
        CHAT_NOT_FOUND.removeprefix("Bad Request: ") if not known_chat(chat_id) else None
    )
    media = _media(kind, prefix, file_ref) if kind and not problem else {}
    if kind and not problem and not media:
        problem = _BAD_FILE
    if not problem and text:
        limit, too_long = (MAX_CAPTION, "message caption is too long") if kind else (MAX_TEXT, "message is too long")
        problem = _entities_problem(str(text), parse_mode) or (
            too_long if len(_plain(str(text), parse_mode)) > limit else None
        )
    markup = params.get("reply_markup")
    try:
        markup = json.loads(markup) if isinstance(markup, str) else markup
    except ValueError:
        problem = problem or "can't parse reply keyboard markup JSON object"
    problem = problem or _markup_problem(markup)
    if problem:
        state.refuse(TELEGRAM)
        return _error(400, f"Bad Request: {problem}")
    token, account = bot.token, str(bot_id(bot.token))
    if refusal := await _admit(request, state, account, bot):
        return refusal

    chat = str(chat_id)
    outcome = outcome_for(TELEGRAM, chat)
    record = {"account": account, "recipient": chat, "method": method, "text": None if text is None else str(text),
              "parse_mode": parse_mode, "send_id": None}
    if kind:
        record["media"] = file_ref
    if outcome == BLOCKED:
        state.record(TELEGRAM, outcome, accepted=False, provider_message_id=None, **record)
        return _error(403, "Forbidden: bot was blocked by the user")

    message: dict[str, Any] = {
        "message_id": next(state.message_ids),
        "from": {"id": bot_id(token), "is_bot": True, "first_name": "Sandbox bot"},
        "chat": {"id": int(chat), "type": "private"},
        "date": int(time.time()),
        **media,
    }
    if text:
        message["caption" if media else "text"] = _plain(str(text), parse_mode)
    if markup:
        message["reply_markup"] = markup
    provider_message_id = f"{int(chat)}:{message['message_id']}"
    state.record(TELEGRAM, outcome, accepted=True, provider_message_id=provider_message_id, **record)
    if outcome == CLICK and telegram_webhook.wants(state, bot, "callback_query"):
        update = _button_press(state, bot, message, _first_callback_data(markup))
        telegram_webhook.deliver(state, bot, update, on_answer=lambda answer: _webhook_answer(state, bot, answer))
    return _ok(message)


def known_chat(chat_id: Any) -> bool:
    """True for a chat the sandbox knows: a private chat, named by its non-zero integer id."""
    text = str(chat_id).strip()
    return bool(_CHAT_ID.match(text)) and int(text) != 0


def _queries(state: SandboxState) -> dict[str, dict[str, Any]]:
    """Callback queries issued by button presses: id → press and answer (forgotten on reset)."""
    return state.memory[TELEGRAM].setdefault("callback_queries", {})


def _answer_callback_query(state: SandboxState, bot: TelegramBot, params: dict[str, Any], via: str) -> JSONResponse:
    """answerCallbackQuery: once per query of this bot; an unknown, foreign or answered id is refused."""
    query = _queries(state).get(str(params.get("callback_query_id") or ""))
    if query is None or query["token"] != bot.token or query["answer"] is not None:
        return _error(400, QUERY_INVALID)
    query["answer"] = {"via": via, "text": params.get("text"), "show_alert": bool(params.get("show_alert"))}
    state.stats[TELEGRAM].button_answers += 1
    return _ok(True)


def _webhook_answer(state: SandboxState, bot: TelegramBot, answer: httpx.Response) -> None:
    """Execute an answerCallbackQuery the receiver put in its webhook answer, as Telegram does."""
    try:
        body = answer.json()
    except ValueError:
        return  # an empty or non-JSON answer asks for nothing
    if isinstance(body, dict) and body.get("method") == "answerCallbackQuery":
        _answer_callback_query(state, bot, body, via="webhook reply")


async def _callback_queries(request: Request) -> JSONResponse:
    state: SandboxState = request.app.state.sandbox
    queries = [{"id": qid, **{k: v for k, v in query.items() if k != "token"}} for qid, query in _queries(state).items()]
    return JSONResponse({"callback_queries": queries})


async def _send_chat_action(request: Request, state: SandboxState, bot: TelegramBot, params: dict[str, Any]) -> JSONResponse:
    """sendChatAction: `{"ok":true,"result":true}`; a blocked chat is refused like a message."""
    chat_id, action = params.get("chat_id"), params.get("action")
    if chat_id in (None, ""):
        return _error(400, "Bad Request: chat_id is empty")
    if action not in _CHAT_ACTIONS:
        return _error(400, "Bad Request: wrong parameter action in request")
    if not known_chat(chat_id):
        return _error(400, CHAT_NOT_FOUND)
    if refusal := await _admit(request, state, str(bot_id(bot.token)), bot, count=False):
        return refusal
    if outcome_for(TELEGRAM, str(chat_id)) == BLOCKED:
        return _error(403, "Forbidden: bot was blocked by the user")
    return _ok(True)


async def _admit(request: Request, state: SandboxState, account: str, bot: TelegramBot, count: bool = True) -> JSONResponse | None:
    """Test knobs, fault rate and the bot's rate limit; the refusal as Telegram words it, or None."""
    refusal = await state.admit(request, TELEGRAM, account, bot.rate_limit_per_s)
    if refusal is None:
        return None
    if count:
        state.refuse(TELEGRAM)
    description = refusal.description
    if refusal.retry_after is not None:
        description = f"Too Many Requests: retry after {refusal.retry_after}"
    return _error(refusal.status, description, refusal.retry_after)


def _media(kind: str, prefix: str, file_ref: str) -> dict[str, Any]:
    """The Message fields for a sent photo/document, or {} when Telegram could not get the file.

    Accepted: an http(s) URL with a host (documents only as .pdf/.zip/.gif, Telegram's rule for
    sending documents by URL) or a file_id of this kind as issued below.
    """
    if "://" in file_ref:
        parts = urlsplit(file_ref)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            return {}
        if kind == "document" and not parts.path.lower().endswith((".pdf", ".zip", ".gif")):
            return {}
        name = parts.path.rsplit("/", 1)[-1] or "file"
    elif file_ref.startswith(prefix) and len(file_ref) == len(prefix) + 40:
        name = "file"
    else:
        return {}

    def file_id(variant: int) -> str:
        return prefix + hashlib.sha256(f"{file_ref}|{variant}".encode()).hexdigest()[:40]

    if kind == "photo":
        sizes = ((90, 67, 1_302), (320, 240, 14_921), (800, 600, 61_404))
        return {"photo": [{"file_id": file_id(n), "file_unique_id": file_id(n)[-16:], "width": w, "height": h,
                           "file_size": size} for n, (w, h, size) in enumerate(sizes)]}
    mime = {"pdf": "application/pdf", "zip": "application/zip", "gif": "image/gif"}
    return {"document": {"file_name": name, "mime_type": mime.get(name.rsplit(".", 1)[-1].lower(), "application/octet-stream"),
                         "file_id": file_id(0), "file_unique_id": file_id(0)[-16:], "file_size": 48_213}}


def _entities_problem(text: str, parse_mode: Any) -> str | None:
    """Telegram's "can't parse entities" refusals for the usual mistakes, or None."""
    if parse_mode in (None, ""):
        return None
    if parse_mode not in ("HTML", "MarkdownV2", "Markdown"):
        return "unsupported parse_mode"
    if parse_mode == "HTML":
        open_tags: list[str] = []
        for match in _HTML_TAG.finditer(text):
            closing, name = match.group(1), match.group(2).lower()
            offset = len(text[: match.start()].encode())
            if name not in _HTML_TAGS:
                return f'can\'t parse entities: Unsupported start tag "{name}" at byte offset {offset}'
            if not closing:
                open_tags.append(name)
            elif not open_tags or open_tags.pop() != name:
                return f"can't parse entities: Unexpected end tag at byte offset {offset}"
        if open_tags:
            return f'can\'t parse entities: Can\'t find end tag corresponding to start tag "{open_tags[-1]}"'
    if parse_mode == "MarkdownV2":
        escaped, text = False, _MD_CODE.sub("", _MD_LINK_TARGET.sub("]", text))
        for index, char in enumerate(text):
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char in _MD_RESERVED and not (char == ">" and (index == 0 or text[index - 1] == "\n")):
                return f"can't parse entities: Character '{char}' is reserved and must be escaped with the preceding '\\'"
    return None


def _plain(text: str, parse_mode: Any) -> str:
    """The text as the recipient sees it (what Telegram echoes in Message.text / caption)."""
    if parse_mode == "HTML":
        return html.unescape(_HTML_TAG.sub("", text))
    if parse_mode == "MarkdownV2":
        text = _MD_LINK_TARGET.sub("]", text)
        return re.sub(r"\\(.)|[_*~`|\[\]]", lambda m: m.group(1) or "", text)
    return text


def _markup_problem(markup: Any) -> str | None:
    for row in (markup.get("inline_keyboard") if isinstance(markup, dict) else None) or []:
        for button in row if isinstance(row, list) else []:
            data = button.get("callback_data") if isinstance(button, dict) else None
            if data is not None and not 1 <= len(str(data).encode()) <= MAX_CALLBACK_DATA:
                return "BUTTON_DATA_INVALID"
    return None


def _button_press(state: SandboxState, bot: TelegramBot, message: dict[str, Any], data: str) -> dict[str, Any]:
    user = {"id": message["chat"]["id"], "is_bot": False, "first_name": "Sandbox user", "language_code": "ru"}
    query_id = str(secrets.randbits(63))
    _queries(state)[query_id] = {"token": bot.token, "chat": str(message["chat"]["id"]), "data": data, "answer": None}
    return {
        "update_id": next(state.update_ids),
        "callback_query": {
            "id": query_id,
            "from": user,
            "message": message,
            "chat_instance": str(-secrets.randbits(62)),
            "data": data,
        },
    }


def _first_callback_data(markup: Any) -> str:
    """The first inline button's callback_data; "open" when there is none to press."""
    rows = markup.get("inline_keyboard") if isinstance(markup, dict) else None
    for row in rows or []:
        for button in row if isinstance(row, list) else []:
            if isinstance(button, dict) and button.get("callback_data"):
                return str(button["callback_data"])
    return "open"
