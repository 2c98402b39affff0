"""Telegram Bot API connector and webhook helpers.

Send: `POST {base_url}/bot<token>/sendMessage` (the token in the path is the auth). The provider id
is "<chat_id>:<message_id>" because Telegram's message_id is unique only within a chat.
Webhooks: Telegram puts no signature on the body; authenticity is the `X-Telegram-Bot-Api-Secret-Token`
header set with `setWebhook(secret_token=…)`. Updates are deduplicated by `update_id`.
Source: https://core.telegram.org/bots/api and shared/reference/provider-protocols.md §1.
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import httpx

from resources.channels.base import (
    CLICKED,
    IGNORED,
    OPT_IN,
    OPT_OUT,
    RATE_LIMITED,
    REJECTED,
    TRANSIENT,
    UNREACHABLE,
    CallbackEvent,
    OutboundMessage,
    SendResult,
    json_object,
    transport_failure,
    utc_from_timestamp,
)

SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"

# Descriptions that mean "this chat is gone for us", whatever the status code: an album to a blocked
# user came back as 400 "USER_IS_BLOCKED" (telebot#669), so the text matters as much as the code.
_UNREACHABLE_MARKERS = ("blocked", "deactivated", "can't initiate", "chat not found", "user_is_blocked")
_RETRY_AFTER = re.compile(r"retry after (\d+)", re.IGNORECASE)


class TelegramConnector:
    """Sends one message per call through one bot; never retries (the caller owns retry policy)."""

    provider = "telegram"
    channel = "telegram"
    provider_deduplicates = False  # the Bot API has no idempotency key

    def __init__(self, base_url: str, bot_token: str, parse_mode: str | None = None):
        self._url = f"{base_url.rstrip('/')}/bot{bot_token}/sendMessage"
        self._parse_mode = parse_mode

    def payload(self, message: OutboundMessage) -> dict[str, Any]:
        """The sendMessage JSON body: one inline button per row, in the given order."""
        body: dict[str, Any] = {"chat_id": _chat_id(message.address), "text": message.text}
        if self._parse_mode:
            body["parse_mode"] = self._parse_mode
        if message.buttons:
            body["reply_markup"] = {
                "inline_keyboard": [[{"text": label, "callback_data": data}] for label, data in message.buttons]
            }
        return body

    async def send(self, client: httpx.AsyncClient, message: OutboundMessage) -> SendResult:
        try:
            response = await client.post(self._url, json=self.payload(message))
        except httpx.HTTPError as exc:
            return transport_failure(exc)
        return classify(response.status_code, json_object(response))


def classify(status: int, body: Mapping[str, Any]) -> SendResult:
    """Map a sendMessage answer to a SendResult (see the module docstring for the provider id)."""
    description = str(body.get("description") or f"HTTP {status}")
    if 200 <= status < 300 and body.get("ok"):
        result = body.get("result") or {}
        chat_id, message_id = (result.get("chat") or {}).get("id"), result.get("message_id")
        if chat_id is not None and message_id is not None:
            return SendResult(ok=True, provider_message_id=f"{chat_id}:{message_id}")
    if status == 429:
        return SendResult(ok=False, error_class=RATE_LIMITED, error=description, retry_after=_retry_after(body))
    lowered = description.lower()
    # Every 403 is about the chat (blocked, deactivated, kicked from the group, bot-to-bot), never about us.
    if status == 403 or (status == 400 and any(marker in lowered for marker in _UNREACHABLE_MARKERS)):
        return SendResult(ok=False, error_class=UNREACHABLE, error=description)
    if status >= 500 or 200 <= status < 300:  # a 2xx we cannot read is garbled: try again
        return SendResult(ok=False, error_class=TRANSIENT, error=description)
    return SendResult(ok=False, error_class=REJECTED, error=description)


def verify_webhook(headers: Mapping[str, str], secret_token: str) -> bool:
    """True when the secret-token header equals ours (constant time, case-insensitive header name).

    An empty configured secret verifies nothing: we refuse rather than accept every caller.
    """
    if not secret_token:
        return False
    wanted = SECRET_HEADER.lower()
    received = next((value for name, value in headers.items() if name.lower() == wanted), None)
    return received is not None and hmac.compare_digest(received.encode(), secret_token.encode())


def event_key(payload: Mapping[str, Any]) -> str:
    """The dedup key of an update: "update:<update_id>". Raises ValueError when update_id is missing."""
    update_id = payload.get("update_id")
    if not isinstance(update_id, int):
        raise ValueError("Telegram update without an integer update_id")
    return f"update:{update_id}"


def parse_update(payload: Mapping[str, Any], received_at: datetime | None = None) -> list[CallbackEvent]:
    """One update → one event.

    - `callback_query` → CLICKED, provider id "<chat_id>:<message_id>" of the message carrying the button,
      reason = the button's callback_data. A button press has no timestamp of its own, so occurred_at is
      `received_at` (default: now).
    - `my_chat_member` new status "kicked" → OPT_OUT, "member" → OPT_IN (in private chats Telegram sends
      it only when the user blocks/unblocks the bot: the real opt-out signal).
    - `message` text "/stop" → OPT_OUT, "/start [payload]" → OPT_IN (plain text by convention, not a
      Telegram feature).
    - anything else → IGNORED. Unknown fields are ignored.
    """
    key = event_key(payload)
    now = received_at or datetime.now(UTC)
    if isinstance(query := payload.get("callback_query"), Mapping):
        message = query.get("message") or {}
        chat_id = (message.get("chat") or {}).get("id")
        address = chat_id if chat_id is not None else (query.get("from") or {}).get("id")
        provider_id = f"{chat_id}:{message['message_id']}" if chat_id is not None and "message_id" in message else None
        return [_event(key, CLICKED, provider_id, address, now, str(query.get("data") or ""))]
    if isinstance(member := payload.get("my_chat_member"), Mapping):
        status = (member.get("new_chat_member") or {}).get("status")
        kind = {"kicked": OPT_OUT, "member": OPT_IN}.get(status, IGNORED)
        return [_event(key, kind, None, (member.get("chat") or {}).get("id"), _date(member, now), f"status:{status}")]
    if isinstance(message := payload.get("message"), Mapping):
        command = _command(message.get("text"))
        kind = {"/stop": OPT_OUT, "/start": OPT_IN}.get(command or "", IGNORED)
        reason = f"command:{command}" if kind != IGNORED else "message"
        return [_event(key, kind, None, (message.get("chat") or {}).get("id"), _date(message, now), reason)]
    update_type = next((name for name in payload if name != "update_id"), "empty")
    return [_event(key, IGNORED, None, None, now, update_type)]


def _event(key: str, kind: str, provider_id: str | None, address: Any, at: datetime, reason: str) -> CallbackEvent:
    return CallbackEvent(
        event_key=key,
        kind=kind,
        provider_message_id=provider_id,
        address=None if address is None else str(address),
        occurred_at=at,
        reason=reason,
    )


def _command(text: Any) -> str | None:
    """"/start@MyBot promo42" → "/start"; None when the text is not a bot command."""
    if not isinstance(text, str) or not text.startswith("/"):
        return None
    return text.split(maxsplit=1)[0].split("@", 1)[0].lower()


def _date(obj: Mapping[str, Any], default: datetime) -> datetime:
    return utc_from_timestamp(obj["date"]) if isinstance(obj.get("date"), int | float) else default


def _chat_id(address: str) -> int | str:
    """Numeric chat ids go out as integers; "@channelname" stays a string (both are valid chat_id)."""
    return int(address) if address.lstrip("-").isdigit() else address


def _retry_after(body: Mapping[str, Any]) -> float | None:
    """`parameters.retry_after`, else the number in "Too Many Requests: retry after 35", else None."""
    value = (body.get("parameters") or {}).get("retry_after")
    if isinstance(value, int | float):
        return float(value)
    match = _RETRY_AFTER.search(str(body.get("description") or ""))
    return float(match.group(1)) if match else None

