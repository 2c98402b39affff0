"""A Telegram bot's webhook as the Bot API manages it: setWebhook, deleteWebhook, getWebhookInfo, and
the delivery of updates to the URL they set.

The setting starts as the bot's config (`webhook_url`, `secret_token`) and is replaced by setWebhook;
it survives `/_sandbox/reset`, like the real bot's webhook survives anything short of another call.
Updates go out through the shared callback dispatcher under one group per bot, so getWebhookInfo can
report `pending_update_count` and the last delivery error in Telegram's words, and
`drop_pending_updates` can drop what is still queued.

Deliberate deviations: plain-HTTP loopback URLs on any port are accepted (Telegram wants HTTPS on
443, 80, 88 or 8443) because the receivers run locally; `max_connections` and `ip_address` are
echoed, not enforced (the sandbox's `callback_concurrency` applies); no certificate is ever in use.
Updates queued while no webhook is set are not kept for getUpdates, which is not emulated.
"""

from __future__ import annotations

import functools
import ipaddress
import json
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import urlsplit

import httpx

from sandbox.callbacks import Callback
from sandbox.config import TelegramBot
from sandbox.outcomes import TELEGRAM
from sandbox.state import SandboxState

SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"
DEFAULT_MAX_CONNECTIONS = 40
_SECRET_TOKEN = re.compile(r"^[A-Za-z0-9_-]{1,256}$")


class WebhookError(ValueError):
    """A parameter Telegram refuses; the message is the description after "Bad Request: "."""


@dataclass(frozen=True)
class Webhook:
    url: str | None = None
    secret_token: str | None = None
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    allowed_updates: tuple[str, ...] | None = None  # None: Telegram's default set (every type the sandbox sends)
    ip_address: str | None = None


def webhook(state: SandboxState, bot: TelegramBot) -> Webhook:
    """The bot's current setting: its config until setWebhook or deleteWebhook changes it."""
    return state.telegram_webhooks.setdefault(bot.token, Webhook(bot.webhook_url, bot.secret_token))


def set_webhook(state: SandboxState, bot: TelegramBot, params: Mapping[str, Any]) -> str:
    """setWebhook; the answer's description. An empty url deletes the webhook, as Telegram does."""
    url = str(params.get("url") or "")
    if not url:
        return delete_webhook(state, bot, params)
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise WebhookError("bad webhook: An HTTPS URL must be provided for webhook")
    current = webhook(state, bot)
    secret = params.get("secret_token")
    if secret not in (None, "") and not _SECRET_TOKEN.match(str(secret)):
        raise WebhookError("secret token contains unallowed characters")
    updated = replace(
        current,
        url=url,
        secret_token=str(secret) if secret else None,
        max_connections=_int(params.get("max_connections"), DEFAULT_MAX_CONNECTIONS),
        allowed_updates=_allowed_updates(params.get("allowed_updates"), current.allowed_updates),
        ip_address=str(params["ip_address"]) if params.get("ip_address") else None,
    )
    _drop_if_asked(state, bot, params)
    state.telegram_webhooks[bot.token] = updated
    return "Webhook is already set" if updated == current else "Webhook was set"


def delete_webhook(state: SandboxState, bot: TelegramBot, params: Mapping[str, Any]) -> str:
    """deleteWebhook (or setWebhook with an empty url); the answer's description."""
    current = webhook(state, bot)
    _drop_if_asked(state, bot, params)
    state.telegram_webhooks[bot.token] = replace(current, url=None, secret_token=None, ip_address=None)
    return "Webhook was deleted" if current.url else "Webhook is already deleted"


def webhook_info(state: SandboxState, bot: TelegramBot) -> dict[str, Any]:
    """getWebhookInfo's WebhookInfo: url ("" when none), pending updates, the last delivery error."""
    current = webhook(state, bot)
    info: dict[str, Any] = {
        "url": current.url or "",
        "has_custom_certificate": False,
        "pending_update_count": state.dispatcher.pending(_group(bot)),
    }
    if current.url:
        if ip := current.ip_address or _literal_ip(current.url):
            info["ip_address"] = ip
        info["max_connections"] = current.max_connections
        if current.allowed_updates is not None:
            info["allowed_updates"] = list(current.allowed_updates)
    if error := _errors(state).get(bot.token):
        info["last_error_date"], info["last_error_message"] = error
    return info


def wants(state: SandboxState, bot: TelegramBot, update_type: str) -> bool:
    """True when a webhook is set and its allowed_updates take `update_type` (e.g. "callback_query")."""
    current = webhook(state, bot)
    return bool(current.url) and (current.allowed_updates is None or update_type in current.allowed_updates)


def deliver(
    state: SandboxState, bot: TelegramBot, update: dict[str, Any], on_answer: Callable[[httpx.Response], None]
) -> None:
    """Queue `update` for the bot's webhook (the caller checked `wants`), with the secret-token header."""
    current = webhook(state, bot)
    url, headers = str(current.url), {SECRET_HEADER: current.secret_token} if current.secret_token else {}
    on_error = functools.partial(_record_error, state, bot)
    state.dispatcher.submit([Callback(url, lambda: (update, headers), on_answer=on_answer, on_error=on_error)], group=_group(bot))


def _record_error(state: SandboxState, bot: TelegramBot, failure: httpx.Response | httpx.HTTPError) -> None:
    """Remember a failed delivery the way getWebhookInfo words it (forgotten on reset)."""
    if isinstance(failure, httpx.Response):
        message = f"Wrong response from the webhook: {failure.status_code} {failure.reason_phrase}"
    elif isinstance(failure, httpx.ConnectError):
        message = "Connection refused"
    elif isinstance(failure, httpx.TimeoutException):
        message = "Read timeout expired"
    else:
        message = f"Connection error: {type(failure).__name__}"
    _errors(state)[bot.token] = (int(time.time()), message)


def _errors(state: SandboxState) -> dict[str, tuple[int, str]]:
    return state.memory[TELEGRAM].setdefault("webhook_errors", {})


def _drop_if_asked(state: SandboxState, bot: TelegramBot, params: Mapping[str, Any]) -> None:
    if str(params.get("drop_pending_updates", "")).lower() in ("true", "1"):
        state.dispatcher.drop(_group(bot))


def _group(bot: TelegramBot) -> str:
    return f"{TELEGRAM}:{bot.token}"


def _allowed_updates(value: Any, current: tuple[str, ...] | None) -> tuple[str, ...] | None:
    """A JSON array (as form parameters carry it) or a list; absent keeps the current setting and an
    empty list means Telegram's default, as the Bot API says."""
    if value in (None, ""):
        return current
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError as exc:
            raise WebhookError("can't parse allowed updates JSON array") from exc
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise WebhookError("allowed updates must be a JSON array of strings")
    return tuple(value) or None


def _int(value: Any, default: int) -> int:
    try:
        return int(value) if value not in (None, "") else default
    except (TypeError, ValueError) as exc:
        raise WebhookError("bad webhook: max_connections must be a number") from exc


def _literal_ip(url: str) -> str | None:
    """The URL's host when it is an IP address (the sandbox resolves no names)."""
    try:
        return str(ipaddress.ip_address(urlsplit(url).hostname or ""))
    except ValueError:
        return None
