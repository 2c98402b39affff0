"""The Telegram Bot API as the sandbox speaks it: `/bot<token>/<method>` for getMe, setWebhook, sendMessage.

Error bodies are Telegram's `{"ok": false, "error_code": n, "description": "…"}`. Deliberate
deviation: setWebhook accepts plain-HTTP loopback URLs on any port (Telegram wants HTTPS on 443, 80,
88 or 8443) because the receivers run locally.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import time
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from sandbox.callbacks import Callback
from sandbox.config import TelegramBot
from sandbox.forms import BadRequest, read_params
from sandbox.outcomes import BLOCKED, CLICK, TELEGRAM, outcome_for
from sandbox.state import SandboxState

MAX_TEXT = 4096
_SECRET_TOKEN = re.compile(r"^[A-Za-z0-9_-]{1,256}$")


def routes() -> list[Route]:
    return [Route("/bot{token}/{method}", _dispatch, methods=["GET", "POST"])]


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
        if method == "sendMessage":
            state.refuse(TELEGRAM)
        return _error(401, "Unauthorized")
    try:
        params = dict(await read_params(request))
    except BadRequest as exc:
        return _error(400, f"Bad Request: {exc}")
    if method == "getMe":
        ident = bot_id(token)
        return _ok({"id": ident, "is_bot": True, "first_name": "Sandbox bot", "username": f"sandbox_{ident}_bot"})
    if method == "setWebhook":
        return _set_webhook(state, token, params)
    if method == "sendMessage":
        return await _send_message(request, state, bot, params)
    return _error(404, "Not Found")


def _set_webhook(state: SandboxState, token: str, params: dict[str, Any]) -> JSONResponse:
    url, secret = str(params.get("url") or ""), params.get("secret_token")
    if secret is not None and not _SECRET_TOKEN.match(str(secret)):
        return _error(400, "Bad Request: secret token contains unallowed characters")
    state.telegram_webhooks[token] = (url or None, str(secret) if secret else None)
    return _ok(True, description="Webhook was set" if url else "Webhook was deleted")


async def _send_message(request: Request, state: SandboxState, bot: TelegramBot, params: dict[str, Any]) -> JSONResponse:
    chat_id, text = params.get("chat_id"), params.get("text")
    problem = (
        "chat_id is empty" if chat_id in (None, "") else
        "message text is empty" if not text else
        "message is too long" if len(str(text)) > MAX_TEXT else None
    )
    markup = params.get("reply_markup")
    try:
        markup = json.loads(markup) if isinstance(markup, str) else markup
    except ValueError:
        problem = problem or "can't parse reply keyboard markup JSON object"
    if problem:
        state.refuse(TELEGRAM)
        return _error(400, f"Bad Request: {problem}")
    token, account = bot.token, str(bot_id(bot.token))
    if refusal := await state.admit(request, TELEGRAM, account, bot.rate_limit_per_s):
        state.refuse(TELEGRAM)
        description = refusal.description
        if refusal.retry_after is not None:
            description = f"Too Many Requests: retry after {refusal.retry_after}"
        return _error(refusal.status, description, refusal.retry_after)

    chat = str(chat_id)
    outcome = outcome_for(TELEGRAM, chat)
    record = {"account": account, "recipient": chat, "text": str(text), "send_id": None}
    if outcome == BLOCKED:
        state.record(TELEGRAM, outcome, accepted=False, provider_message_id=None, **record)
        return _error(403, "Forbidden: bot was blocked by the user")

    chat_key: int | str = int(chat) if chat.lstrip("-").isdigit() else chat
    message = {
        "message_id": next(state.message_ids),
        "from": {"id": bot_id(token), "is_bot": True, "first_name": "Sandbox bot"},
        "chat": {"id": chat_key, "type": "private"},
        "date": int(time.time()),
        "text": str(text),
    }
    if markup:
        message["reply_markup"] = markup
    provider_message_id = f"{chat_key}:{message['message_id']}"
    state.record(TELEGRAM, outcome, accepted=True, provider_message_id=provider_message_id, **record)
    url, secret = state.telegram_webhooks.get(token, (None, None))
    if outcome == CLICK and url:
        update = _button_press(state, message, _first_callback_data(markup))
        headers = {"X-Telegram-Bot-Api-Secret-Token": secret} if secret else {}
        state.dispatcher.submit([Callback(url, lambda: (update, headers))])
    return _ok(message)


def _button_press(state: SandboxState, message: dict[str, Any], data: str) -> dict[str, Any]:
    user = {"id": message["chat"]["id"], "is_bot": False, "first_name": "Sandbox user", "language_code": "ru"}
    return {
        "update_id": next(state.update_ids),
        "callback_query": {
            "id": str(secrets.randbits(63)),
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
