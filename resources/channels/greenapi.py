"""GREEN-API (unofficial WhatsApp gateway) connector and webhook helpers.

Send: `POST {base_url}/waInstance{idInstance}/sendMessage/{apiTokenInstance}` with JSON
`{"chatId": "79161234567@c.us", "message": "…"}`; an attachment goes through `sendFileByUrl`
(`chatId`, `urlFile`, `fileName`, `caption`). The token in the path is the auth. Text is at most
20000 characters. The provider id is the answer's `idMessage`, unique only within its chat; webhooks
are therefore keyed by "<chatId>_<idMessage>". There is no idempotency key.
GREEN-API has no templates and its buttons are a beta feature: a `TemplateRef` or `buttons` on the
message are not sent (the text is). The instance's own queue and pacing
(`delaySendMessagesMilliseconds`) apply on top of our rate limits.

Webhooks carry no body signature: the instance's `webhookUrlToken` arrives in the `Authorization`
header, which `verify_webhook` accepts bare or as "Bearer <token>".
`yellowCard` means WhatsApp restricted the sending number for spam: the parser reports it as
`SENDER_BLOCKED`, and **the dispatch engine must stop every send through that instance** (GREEN-API
holds its queue for 24 h and the instance needs a reboot); retrying only makes the ban worse.
Source: https://green-api.com/en/docs/ (SendMessage, SendFileByUrl, SetSettings, ratelimiter,
OutgoingMessageStatus), green-api/greenapi-integration `guard.ts`, and shared/reference/provider-protocols.md §7.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote, urlsplit

from resources.channels.base import (
    DELIVERED,
    DELIVERY_FAILED,
    IGNORED,
    OPENED,
    OPT_OUT,
    RATE_LIMITED,
    REJECTED,
    TRANSIENT,
    CallbackEvent,
    HttpClient,
    OutboundMessage,
    SendResult,
    json_object,
    post_or_failure,
    refusal,
    utc_from_timestamp,
)

# A callback event kind of our own: the provider stopped this *sender* (not one recipient).
SENDER_BLOCKED = "sender_blocked"

MAX_TEXT = 20000
STOP_KEYWORDS = frozenset({"stop", "стоп", "unsubscribe", "отписаться"})
UNSUBSCRIBE_BUTTON = "unsubscribe"
QUOTA_EXCEEDED = 466  # Developer plan monthly quota: retrying this month will not help

_STATUS_KINDS = {
    "delivered": DELIVERED,
    "read": OPENED,
    "failed": DELIVERY_FAILED,
    "noAccount": DELIVERY_FAILED,
    "notInGroup": DELIVERY_FAILED,
    "yellowCard": SENDER_BLOCKED,
}


class GreenApiConnector:
    """Sends one WhatsApp message per call through one GREEN-API instance; never retries."""

    provider = "greenapi"
    channel = "whatsapp"
    provider_deduplicates = False  # no idempotency key
    ledger_dedup_ids = False
    delivery_receipts = True  # outgoingMessageStatus: delivered / failed

    def __init__(self, base_url: str, id_instance: int | str, api_token: str):
        self._base = f"{base_url.rstrip('/')}/waInstance{id_instance}"
        self._token = api_token

    def validate(self, message: OutboundMessage) -> None:
        """Raise ValueError for a message GREEN-API would refuse or this connector cannot express."""
        if len(message.text) > MAX_TEXT:
            raise ValueError(f"GREEN-API takes at most {MAX_TEXT} characters, got {len(message.text)}")
        if len(message.attachments) > 1:
            raise ValueError("sendFileByUrl sends one file per message")
        if not message.text and not message.attachments:
            raise ValueError("nothing to send: no text or attachment (GREEN-API has no templates)")

    def request(self, message: OutboundMessage) -> tuple[str, dict[str, Any]]:
        """(method name, JSON body) of one send."""
        chat = chat_id(message.address)
        if message.attachments:
            attachment = message.attachments[0]
            body: dict[str, Any] = {"chatId": chat, "urlFile": attachment.url, "fileName": _file_name(attachment)}
            caption = message.text or attachment.caption
            if caption:
                body["caption"] = caption
            return "sendFileByUrl", body
        return "sendMessage", {"chatId": chat, "message": message.text}

    async def send(self, client: HttpClient, message: OutboundMessage) -> SendResult:
        """One sendMessage/sendFileByUrl call. A message `validate` refuses is REJECTED without a call."""
        if (refused := refusal(self.validate, message)) is not None:
            return refused
        method, body = self.request(message)
        response = await post_or_failure(client.post(f"{self._base}/{method}/{self._token}", json=body))
        if isinstance(response, SendResult):
            return response
        return classify(response.status_code, json_object(response), response.text)


def classify(status: int, body: Mapping[str, Any], text: str = "") -> SendResult:
    """Map a send answer to a SendResult: 401/403 bad instance or token, 429 per-instance method rate,
    466 plan quota (rejected: not before next month), 5xx transient."""
    if 200 <= status < 300 and body.get("idMessage"):
        return SendResult(ok=True, provider_message_id=str(body["idMessage"]))
    error = _describe(body) or text.strip() or f"HTTP {status}"
    if status == 429:
        return SendResult(ok=False, error_class=RATE_LIMITED, error=error)
    if status >= 500 or 200 <= status < 300:  # a 2xx without an idMessage is garbled: try again
        return SendResult(ok=False, error_class=TRANSIENT, error=error)
    if status == QUOTA_EXCEEDED:
        return SendResult(ok=False, error_class=REJECTED, error=f"quota exceeded: {error}")
    return SendResult(ok=False, error_class=REJECTED, error=error)


def _describe(body: Mapping[str, Any]) -> str:
    for key in ("message", "error", "description"):
        if isinstance(body.get(key), str) and body[key]:
            return body[key]
    status = body.get("invokeStatus") or body.get("correspondentsStatus")
    return str(status.get("description") or status.get("status") or "") if isinstance(status, Mapping) else ""


# --- webhooks --------------------------------------------------------------------------------------


def verify_webhook(headers: Mapping[str, str], webhook_token: str) -> bool:
    """True when the Authorization header carries our webhookUrlToken, bare or as "Bearer <token>"
    (constant time, case-insensitive header name and scheme). An empty token verifies nothing."""
    if not webhook_token:
        return False
    received = next((value for name, value in headers.items() if name.lower() == "authorization"), None)
    if received is None:
        return False
    scheme, _, rest = received.strip().partition(" ")
    candidate = rest.strip() if scheme.lower() == "bearer" and rest else received.strip()
    return hmac.compare_digest(candidate.encode(), webhook_token.encode())


def event_key(payload: Mapping[str, Any]) -> str:
    """"<chatId>_<idMessage>:<status>" for outgoingMessageStatus, "<idMessage>" for incoming messages,
    "<typeWebhook>:<idInstance>:<timestamp>" for anything else (state changes, …).
    Raises ValueError when the fields the key needs are missing."""
    kind = payload.get("typeWebhook")
    if kind == "outgoingMessageStatus":
        chat, message, status = payload.get("chatId"), payload.get("idMessage"), payload.get("status")
        if not (chat and message and status):
            raise ValueError("GREEN-API status webhook without chatId, idMessage or status")
        return f"{chat}_{message}:{status}"
    if payload.get("idMessage"):
        return str(payload["idMessage"])
    instance_data = payload.get("instanceData")
    instance = instance_data.get("idInstance") if isinstance(instance_data, Mapping) else None
    if not kind or payload.get("timestamp") is None:
        raise ValueError("GREEN-API webhook without typeWebhook/idMessage/timestamp")
    return f"{kind}:{instance}:{payload['timestamp']}"


def parse_webhook(payload: Mapping[str, Any]) -> list[CallbackEvent]:
    """One webhook POST → one event.

    outgoingMessageStatus (provider id = idMessage, address = "+" chat digits): `delivered` →
    DELIVERED, `read` → OPENED, `failed` → DELIVERY_FAILED ("failed: <description>"), `noAccount` /
    `notInGroup` → DELIVERY_FAILED ("unreachable: noAccount"), `yellowCard` → SENDER_BLOCKED (stop
    the whole instance), `sent` and others → IGNORED.
    incomingMessageReceived: text STOP/СТОП (UNSUBSCRIBE, ОТПИСАТЬСЯ) or a button reply whose id is
    "unsubscribe" → OPT_OUT; anything else → IGNORED. Other webhook types → IGNORED.
    """
    key = event_key(payload)
    kind = str(payload.get("typeWebhook") or "")
    ts = payload.get("timestamp")
    at = utc_from_timestamp(ts) if isinstance(ts, int | float) or str(ts or "").isdigit() else datetime.now(UTC)
    if kind == "outgoingMessageStatus":
        status = str(payload.get("status") or "")
        event_kind = _STATUS_KINDS.get(status, IGNORED)
        if status in ("noAccount", "notInGroup"):
            reason = f"unreachable: {status}"
        elif status == "failed":
            reason = f"failed: {payload.get('description') or 'no description'}"
        elif status == "yellowCard":
            reason = "yellowCard: WhatsApp restricted this sender for spam; stop sending through the instance"
        else:
            reason = status
        return [_event(key, event_kind, payload.get("idMessage"), payload.get("chatId"), at, reason)]
    if kind == "incomingMessageReceived":
        sender = (payload.get("senderData") or {}).get("chatId") or (payload.get("senderData") or {}).get("sender")
        event_kind, reason = _inbound(payload.get("messageData") or {})
        return [_event(key, event_kind, None, sender, at, reason)]
    return [_event(key, IGNORED, payload.get("idMessage"), payload.get("chatId"), at, kind or "unknown")]


def _inbound(data: Mapping[str, Any]) -> tuple[str, str]:
    kind = str(data.get("typeMessage") or "")
    text = (data.get("textMessageData") or {}).get("textMessage")
    if text is None:
        text = (data.get("extendedTextMessageData") or {}).get("text")
    word = str(text or "").strip().rstrip(".!").strip().casefold()
    if word in STOP_KEYWORDS:
        return OPT_OUT, f"keyword:{word}"
    for value in data.values():  # buttonsResponseMessage, templateButtonReplyMessage, interactiveButtonsResponse …
        if isinstance(value, Mapping):
            button = value.get("selectedButtonId") or value.get("selectedId")
            if button is not None and str(button).strip().casefold() == UNSUBSCRIBE_BUTTON:
                return OPT_OUT, f"button:{button}"
    return IGNORED, f"inbound {kind or 'message'}"


def _event(key: str, kind: str, provider_id: Any, chat: Any, at: datetime, reason: str) -> CallbackEvent:
    return CallbackEvent(
        event_key=key,
        kind=kind,
        provider_message_id=str(provider_id) if provider_id else None,
        address=address_of(str(chat)) if chat else None,
        occurred_at=at,
        reason=reason,
    )


def chat_id(address: str) -> str:
    """"+7 916 123-45-67" → "79161234567@c.us"; an address that already is a chat id stays as it is."""
    if address.endswith(("@c.us", "@g.us")):
        return address
    return "".join(ch for ch in address if ch.isdigit()) + "@c.us"


def address_of(chat: str) -> str:
    """"79161234567@c.us" → "+79161234567"; group chat ids ("…@g.us") stay as they are."""
    number, _, domain = chat.partition("@")
    return f"+{number}" if domain == "c.us" and number.isdigit() else chat


def _file_name(attachment: Any) -> str:
    if attachment.filename:
        return attachment.filename
    name = unquote(urlsplit(attachment.url).path.rsplit("/", 1)[-1])
    return name or "file"
