"""Telegram Bot API connector and webhook helpers.

Send: `POST {base_url}/bot<token>/<method>` (the token in the path is the auth). A message without
attachments goes out with `sendMessage`; with one photo or document attachment, with `sendPhoto` /
`sendDocument` and the text as its caption. The provider id is "<chat_id>:<message_id>" because
Telegram's message_id is unique only within a chat (the store keeps the chat id's blind index instead:
orchestrator_assets/provider_ids.py). `send_chat_action` shows "typing…" and the like.
Webhooks: Telegram puts no signature on the body; authenticity is the `X-Telegram-Bot-Api-Secret-Token`
header set with `setWebhook(secret_token=…)`. Updates are deduplicated by `update_id`; a button press
(`callback_query`) is answered in the webhook's own answer (`webhook_reply`).
Source: https://core.telegram.org/bots/api and shared/reference/provider-protocols.md §1.
"""

from __future__ import annotations

import hmac
import html
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import httpx

from resources.channels.base import (
    CLICKED,
    IGNORED,
    OPT_IN,
    OPT_OUT,
    RATE_LIMITED,
    REJECTED,
    TRANSIENT,
    UNBLOCKED,
    UNREACHABLE,
    Attachment,
    CallbackEvent,
    HttpClient,
    OutboundMessage,
    SendResult,
    json_object,
    post_or_failure,
    refusal,
    transport_failure,
    utc_from_timestamp,
)

SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"

# Limits from the Bot API reference, counted after entities parsing (i.e. without the markup).
MAX_TEXT = 4096  # sendMessage text
MAX_CAPTION = 1024  # sendPhoto / sendDocument caption
MAX_CALLBACK_DATA_BYTES = 64  # InlineKeyboardButton.callback_data is 1-64 bytes
PARSE_MODES = ("HTML", "MarkdownV2")
CHAT_ACTIONS = frozenset({
    "typing", "upload_photo", "record_video", "upload_video", "record_voice", "upload_voice",
    "upload_document", "choose_sticker", "find_location", "record_video_note", "upload_video_note",
})
# Attachment kind -> (method, the parameter carrying the file). Video and audio are not supported.
_MEDIA_METHODS = {"photo": ("sendPhoto", "photo"), "document": ("sendDocument", "document")}
# "In sendDocument, sending by URL will currently only work for GIF, PDF and ZIP files."
_DOCUMENT_URL_SUFFIXES = (".pdf", ".zip", ".gif")

# Descriptions that mean "this chat is gone for us", whatever the status code: an album to a blocked
# user came back as 400 "USER_IS_BLOCKED" (telebot#669), so the text matters as much as the code.
_UNREACHABLE_MARKERS = ("blocked", "deactivated", "can't initiate", "chat not found", "user_is_blocked")
_RETRY_AFTER = re.compile(r"retry after (\d+)", re.IGNORECASE)
_HTML_TAG = re.compile(r"<[^>]*>")
_MD_LINK_TARGET = re.compile(r"\]\((?:[^)\\]|\\.)*\)")
_MD_MARKUP = re.compile(r"\\(.)|[_*~`|\[\]]")
_MD_SPECIAL = "_*[]()~`>#+-=|{}.!\\"


class TelegramConnector:
    """Sends one message per call through one bot; never retries (the caller owns retry policy).

    `parse_mode` ("HTML" or "MarkdownV2") applies to every text and caption this connector sends;
    escape interpolated values with `html.escape` / `escape_markdown_v2`.
    """

    provider = "telegram"
    channel = "telegram"
    provider_deduplicates = False  # the Bot API has no idempotency key
    ledger_dedup_ids = False
    delivery_receipts = False  # the Bot API reports no deliveries: acceptance is the last word

    def __init__(self, base_url: str, bot_token: str, parse_mode: str | None = None):
        if parse_mode is not None and parse_mode not in PARSE_MODES:
            raise ValueError(f"parse_mode must be one of {PARSE_MODES} or None, not {parse_mode!r}")
        self._base = f"{base_url.rstrip('/')}/bot{bot_token}"
        self._parse_mode = parse_mode

    def validate(self, message: OutboundMessage) -> None:
        """Raise ValueError when Telegram would refuse `message` (or we cannot express it).

        At most one attachment, of kind "photo" or "document"; its `url` is an HTTPS URL (documents
        by URL only as .pdf/.zip/.gif, Telegram's rule) or a Telegram file_id. Text at most 4096
        characters, or 1024 when it is a caption, counted without HTML/MarkdownV2 markup; no empty
        text without an attachment; callback_data 1-64 bytes.
        """
        if len(message.attachments) > 1:
            raise ValueError(f"Telegram connector sends at most one attachment per message, got {len(message.attachments)}")
        for label, data in message.buttons:
            if not label:
                raise ValueError("inline button without a label")
            if not 1 <= len(data.encode()) <= MAX_CALLBACK_DATA_BYTES:
                raise ValueError(f"callback_data must be 1-{MAX_CALLBACK_DATA_BYTES} bytes: {data!r}")
        if not message.attachments:
            if not message.text.strip():
                raise ValueError("message text is empty")
            if (length := visible_length(message.text, self._parse_mode)) > MAX_TEXT:
                raise ValueError(f"message text is {length} characters, Telegram allows {MAX_TEXT}")
            return
        attachment = message.attachments[0]
        if attachment.kind not in _MEDIA_METHODS:
            raise ValueError(f"attachment kind {attachment.kind!r} is not supported (only {', '.join(_MEDIA_METHODS)})")
        _check_media(attachment)
        if (length := visible_length(_caption(message), self._parse_mode)) > MAX_CAPTION:
            raise ValueError(f"caption is {length} characters, Telegram allows {MAX_CAPTION}")

    def method(self, message: OutboundMessage) -> str:
        """The Bot API method that sends `message`: sendMessage, sendPhoto or sendDocument."""
        return _MEDIA_METHODS[message.attachments[0].kind][0] if message.attachments else "sendMessage"

    def payload(self, message: OutboundMessage) -> dict[str, Any]:
        """The JSON body for `method(message)`: one inline button per row, in the given order.

        With an attachment the message text becomes the caption (the attachment's own caption is
        used when the text is empty).
        """
        body: dict[str, Any] = {"chat_id": _chat_id(message.address)}
        if message.attachments:
            attachment = message.attachments[0]
            body[_MEDIA_METHODS[attachment.kind][1]] = attachment.url
            if caption := _caption(message):
                body["caption"] = caption
        else:
            body["text"] = message.text
        if self._parse_mode and ("text" in body or "caption" in body):
            body["parse_mode"] = self._parse_mode
        if message.buttons:
            body["reply_markup"] = {
                "inline_keyboard": [[{"text": label, "callback_data": data}] for label, data in message.buttons]
            }
        return body

    async def send(self, client: HttpClient, message: OutboundMessage) -> SendResult:
        """Send `message`; a message `validate` refuses is REJECTED without calling Telegram."""
        if (refused := refusal(self.validate, message)) is not None:
            return refused
        response = await post_or_failure(client.post(f"{self._base}/{self.method(message)}", json=self.payload(message)))
        if isinstance(response, SendResult):
            return response
        return classify(response.status_code, json_object(response))

    async def send_chat_action(self, client: HttpClient, chat_id: str, action: str = "typing") -> SendResult:
        """`sendChatAction`: the chat shows e.g. "typing…" for a few seconds or until our next message.

        The answer is `{"ok":true,"result":true}`, so a successful result has no provider id. An
        action outside CHAT_ACTIONS is a programming error: ValueError.
        """
        if action not in CHAT_ACTIONS:
            raise ValueError(f"unknown chat action {action!r}")
        try:
            response = await client.post(
                f"{self._base}/sendChatAction", json={"chat_id": _chat_id(chat_id), "action": action}
            )
        except httpx.HTTPError as exc:
            return transport_failure(exc)
        return classify(response.status_code, json_object(response))


def visible_length(text: str | None, parse_mode: str | None) -> int:
    """The length Telegram counts against its limits: the text without its markup.

    HTML: tags dropped and entities decoded (exact for well-formed markup). MarkdownV2: link targets,
    formatting characters and escaping backslashes dropped (close, not exact: Telegram's own parser
    decides; a text it finds too long still comes back as a 400, i.e. REJECTED).
    """
    if not text:
        return 0
    if parse_mode == "HTML":
        return len(html.unescape(_HTML_TAG.sub("", text)))
    if parse_mode == "MarkdownV2":
        return len(_MD_MARKUP.sub(lambda m: m.group(1) or "", _MD_LINK_TARGET.sub("]", text)))
    return len(text)


def escape_markdown_v2(value: str) -> str:
    """Escape every MarkdownV2 special character, for values interpolated into MarkdownV2 text."""
    return "".join(f"\\{char}" if char in _MD_SPECIAL else char for char in value)


def classify(status: int, body: Mapping[str, Any]) -> SendResult:
    """Map a Bot API answer to a SendResult (see the module docstring for the provider id)."""
    description = str(body.get("description") or f"HTTP {status}")
    if 200 <= status < 300 and body.get("ok"):
        result = body.get("result")
        if result is True:  # methods that answer with a bare true, e.g. sendChatAction
            return SendResult(ok=True)
        result = result if isinstance(result, Mapping) else {}
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
    if not isinstance(update_id, int) or isinstance(update_id, bool):
        raise ValueError("Telegram update without an integer update_id")
    return f"update:{update_id}"


def parse_update(payload: Mapping[str, Any], received_at: datetime | None = None) -> list[CallbackEvent]:
    """One update → one event.

    - `callback_query` → CLICKED, provider id "<chat_id>:<message_id>" of the message carrying the button,
      reason = the button's callback_data. A button press has no timestamp of its own, so occurred_at is
      `received_at` (default: now).
    - `my_chat_member` new status "kicked" → OPT_OUT, "member" → UNBLOCKED (in private chats Telegram
      sends it only when the user blocks/unblocks the bot: the real opt-out signal; unblocking alone
      asks for nothing, the client's "Restart" button sends /start as well).
    - `message` text "/stop" → OPT_OUT, "/start [payload]" → OPT_IN with `ref` = the deep-link payload
      (`t.me/<bot>?start=<payload>`); /stop is plain text by convention, not a Telegram feature.
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
        kind = {"kicked": OPT_OUT, "member": UNBLOCKED}.get(status, IGNORED)
        return [_event(key, kind, None, (member.get("chat") or {}).get("id"), _date(member, now), f"status:{status}")]
    if isinstance(message := payload.get("message"), Mapping):
        text = message.get("text")
        command = _command(text)
        kind = {"/stop": OPT_OUT, "/start": OPT_IN}.get(command or "", IGNORED)
        reason = f"command:{command}" if kind != IGNORED else "message"
        ref = _start_payload(text) if kind == OPT_IN else None
        return [_event(key, kind, None, (message.get("chat") or {}).get("id"), _date(message, now), reason, ref)]
    update_type = next((name for name in payload if name != "update_id"), "empty")
    return [_event(key, IGNORED, None, None, now, update_type)]


def _event(key: str, kind: str, provider_id: str | None, address: Any, at: datetime, reason: str, ref: str | None = None) -> CallbackEvent:
    return CallbackEvent(
        event_key=key,
        kind=kind,
        provider_message_id=provider_id,
        address=None if address is None else str(address),
        occurred_at=at,
        reason=reason,
        ref=ref,
    )


def webhook_reply(payload: Mapping[str, Any]) -> dict[str, Any] | None:
    """The Bot API call to make in the body of the webhook's answer, or None.

    Every `callback_query` must be answered with answerCallbackQuery, or the user's client shows a
    progress indicator on the button until it gives up. A query id stays valid only a few seconds,
    less than a sensor tick plus a run's start-up, so the answer goes out where the update comes in:
    Telegram executes a method named in the webhook answer ("Making requests when getting updates").
    Its result is not reported back, which is acceptable for stopping a spinner.
    """
    query = payload.get("callback_query")
    if isinstance(query, Mapping) and query.get("id"):
        return {"method": "answerCallbackQuery", "callback_query_id": str(query["id"])}
    return None


def _start_payload(text: str) -> str | None:
    """"/start abc" → "abc" (the deep-link payload); None for a bare /start."""
    parts = text.split(maxsplit=1)
    return parts[1].strip() if len(parts) == 2 else None


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



def _caption(message: OutboundMessage) -> str:
    return message.text or (message.attachments[0].caption or "")


def _check_media(attachment: Attachment) -> None:
    """An HTTPS URL Telegram can fetch, or a file_id (no scheme) of a file Telegram already has."""
    url = attachment.url.strip()
    if not url:
        raise ValueError(f"{attachment.kind} attachment without a URL or file_id")
    if "://" not in url:
        return  # a file_id
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.hostname:
        raise ValueError(f"{attachment.kind} URL must be an absolute https:// URL: {url!r}")
    if attachment.kind == "document" and not parts.path.lower().endswith(_DOCUMENT_URL_SUFFIXES):
        raise ValueError(f"Telegram sends documents by URL only for .pdf, .zip and .gif files: {url!r}")
