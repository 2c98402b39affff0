"""360dialog WhatsApp connector (Cloud API through waba-v2) and webhook helpers.

Send: `POST {base_url}/messages` with header `D360-API-KEY: <key>` and a Meta Cloud API JSON body:
text, an approved template (name = `TemplateRef.template_id`, language code, body parameters from
the variables), one image/document/video/audio from the attachment, or interactive reply buttons
(at most 3, titles up to 20 characters). The provider id is `messages[0].id` (a `wamid.…`).
No idempotency key, so a resend after an ambiguous failure may duplicate.

Errors come in two shapes: 360dialog's own `{"meta": {"success": false, "http_code": n,
"developer_message": "…"}}` and Meta's `{"error": {"message": "(#131047) …", "code": 131047, …}}`
(sometimes wrapped inside developer_message). 360dialog's own rate limit is an HTTP **400** whose text
says "You have exceeded the endpoint rate limit", so it is recognised by the text, not the status.
A code-100 refusal that names the `to` parameter says our address is no phone number WhatsApp could
ever reach (e.g. "0033…"): UNREACHABLE, so the channel is suppressed for that contact instead of
being refused again on every campaign. Any other code-100 answer is about our payload: REJECTED.

Webhooks carry no signature: authenticity is the custom header(s) configured on the webhook
(`verify_webhook`). One POST may carry several statuses and messages; each becomes an event keyed
"<wamid>:<status>" (statuses) or "<wamid>" (inbound messages).
Source: https://docs.360dialog.com/api/api-error-message-list, Meta Cloud API webhook and error-code
references, and shared/reference/provider-protocols.md §6.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from typing import Any

from resources.channels.base import (
    DELIVERED,
    DELIVERY_FAILED,
    IGNORED,
    OPENED,
    OPT_OUT,
    RATE_LIMITED,
    REJECTED,
    TRANSIENT,
    UNREACHABLE,
    CallbackEvent,
    HttpClient,
    OutboundMessage,
    SendResult,
    json_object,
    post_or_failure,
    refusal,
    utc_from_timestamp,
)

# The custom header we ask 360dialog to add to every webhook (its messaging webhooks carry no signature).
WEBHOOK_SECRET_HEADER = "X-Algor-Webhook-Secret"

API_KEY_HEADER = "D360-API-KEY"
RATE_LIMIT_TEXT = "exceeded the endpoint rate limit"
MAX_BUTTONS, MAX_BUTTON_TITLE = 3, 20
MAX_TEXT, MAX_CAPTION = 4096, 1024  # text.body; interactive body and media captions

RATE_LIMIT_CODES = frozenset({130429, 131056, 131049})  # throughput, pair rate, per-user marketing limit
UNREACHABLE_CODES = frozenset({131026, 131050})  # undeliverable (no WhatsApp, old app), stopped marketing
NEEDS_TEMPLATE = 131047  # re-engagement: more than 24 h since the user wrote; send a template
INVALID_PARAMETER = 100
_RECIPIENT_PARAMETER = re.compile(r"\bparam(?:eter)?\s+to\b", re.IGNORECASE)  # "(#100) … Param to must be …"
TRANSIENT_CODES = frozenset({1, 2, 131000, 131016})  # unknown / temporary / something went wrong / unavailable

STOP_KEYWORDS = frozenset({"stop", "стоп", "unsubscribe", "отписаться"})
UNSUBSCRIBE_PAYLOAD = "unsubscribe"  # a reply button's id/payload that means opt-out

_MEDIA_TYPES = {"photo": "image", "image": "image", "document": "document", "video": "video", "audio": "audio"}
_STATUS_KINDS = {"delivered": DELIVERED, "read": OPENED, "failed": DELIVERY_FAILED}
_EMBEDDED_CODE = re.compile(r'"code"\s*:\s*(\d+)|\(#(\d+)\)')


class D360Connector:
    """Sends one WhatsApp message per call through one 360dialog number; never retries."""

    provider = "d360"
    channel = "whatsapp"
    provider_deduplicates = False  # no idempotency key on /messages
    ledger_dedup_ids = False
    delivery_receipts = True  # statuses: delivered / failed

    def __init__(self, base_url: str, api_key: str):
        self._url = f"{base_url.rstrip('/')}/messages"
        self._headers = {API_KEY_HEADER: api_key}

    def validate(self, message: OutboundMessage) -> None:
        """Raise ValueError for a message the Cloud API would refuse or this connector cannot express."""
        if message.template is not None:
            if message.attachments or message.buttons:
                raise ValueError("a template carries its own media and buttons: send it without attachments/buttons")
            return
        if len(message.attachments) > 1:
            raise ValueError("the Cloud API sends one media per message")
        if len(message.buttons) > MAX_BUTTONS:
            raise ValueError(f"at most {MAX_BUTTONS} reply buttons, got {len(message.buttons)}")
        for label, _ in message.buttons:
            if not label or len(label) > MAX_BUTTON_TITLE:
                raise ValueError(f"button title must be 1–{MAX_BUTTON_TITLE} characters: {label!r}")
        media = message.attachments[0] if message.attachments else None
        if media is not None and media.kind not in _MEDIA_TYPES:
            raise ValueError(f"unsupported attachment kind {media.kind!r}")
        if media is not None and _MEDIA_TYPES[media.kind] == "audio" and (message.text or message.buttons):
            raise ValueError("an audio message carries no caption or buttons: send the text separately")
        if message.buttons and not message.text:
            raise ValueError("interactive buttons need a body text")
        limit = MAX_CAPTION if (message.buttons or media) else MAX_TEXT
        if len(message.text) > limit:
            raise ValueError(f"text longer than {limit} characters")
        if not message.text and media is None:
            raise ValueError("nothing to send: no text, template or attachment")

    def payload(self, message: OutboundMessage) -> dict[str, Any]:
        """The Cloud API body of one send."""
        body: dict[str, Any] = {"messaging_product": "whatsapp", "recipient_type": "individual", "to": digits(message.address)}
        media = message.attachments[0] if message.attachments else None
        if message.template is not None:
            template: dict[str, Any] = {"name": message.template.template_id, "language": {"code": message.template.language}}
            if message.template.variables:
                parameters = [{"type": "text", "text": value} for value in message.template.variables]
                template["components"] = [{"type": "body", "parameters": parameters}]
            body.update(type="template", template=template)
        elif message.buttons:
            interactive: dict[str, Any] = {
                "type": "button",
                "body": {"text": message.text},
                "action": {
                    "buttons": [{"type": "reply", "reply": {"id": data, "title": label}} for label, data in message.buttons]
                },
            }
            if media is not None:
                interactive["header"] = {"type": _MEDIA_TYPES[media.kind], _MEDIA_TYPES[media.kind]: _media(media, None)}
            body.update(type="interactive", interactive=interactive)
        elif media is not None:
            kind = _MEDIA_TYPES[media.kind]
            body.update(type=kind, **{kind: _media(media, None if kind == "audio" else (message.text or media.caption))})
        else:
            body.update(type="text", text={"body": message.text})
        return body

    async def send(self, client: HttpClient, message: OutboundMessage) -> SendResult:
        """One /messages call. A message `validate` refuses is REJECTED without calling 360dialog."""
        if (refused := refusal(self.validate, message)) is not None:
            return refused
        response = await post_or_failure(client.post(self._url, json=self.payload(message), headers=self._headers))
        if isinstance(response, SendResult):
            return response
        return classify(response.status_code, json_object(response), response.text)


def _media(attachment: Any, caption: str | None) -> dict[str, Any]:
    media: dict[str, Any] = {"link": attachment.url}
    if caption:
        media["caption"] = caption
    if attachment.kind == "document" and attachment.filename:
        media["filename"] = attachment.filename
    return media


def classify(status: int, body: Mapping[str, Any], text: str = "") -> SendResult:
    """Map a /messages answer to a SendResult (both error shapes; see the module docstring)."""
    messages = body.get("messages")
    first = messages[0] if isinstance(messages, list) and messages and isinstance(messages[0], Mapping) else {}
    if 200 <= status < 300 and first.get("id"):
        return SendResult(ok=True, provider_message_id=str(first["id"]))
    error, code = _error(body, text, status)
    if RATE_LIMIT_TEXT in error.lower() or status == 429 or code in RATE_LIMIT_CODES:
        return SendResult(ok=False, error_class=RATE_LIMITED, error=error)
    if code in UNREACHABLE_CODES:
        return SendResult(ok=False, error_class=UNREACHABLE, error=error)
    if code == INVALID_PARAMETER and _RECIPIENT_PARAMETER.search(error):
        return SendResult(ok=False, error_class=UNREACHABLE, error=f"invalid recipient: {error}")
    if code == NEEDS_TEMPLATE:
        return SendResult(ok=False, error_class=REJECTED, error=f"needs a template (outside the 24-hour window): {error}")
    if status in (401, 403):
        return SendResult(ok=False, error_class=REJECTED, error=error)
    if status >= 500 or code in TRANSIENT_CODES or 200 <= status < 300:  # a 2xx without an id is garbled
        return SendResult(ok=False, error_class=TRANSIENT, error=error)
    return SendResult(ok=False, error_class=REJECTED, error=error)


def _error(body: Mapping[str, Any], text: str, status: int) -> tuple[str, int | None]:
    """(human-readable error, Meta error code or None) from either error shape."""
    meta = body.get("meta") if isinstance(body.get("meta"), Mapping) else {}
    err = body.get("error") if isinstance(body.get("error"), Mapping) else {}
    details = (err.get("error_data") or {}).get("details") if isinstance(err.get("error_data"), Mapping) else None
    parts = [str(part) for part in (meta.get("developer_message"), err.get("message"), details) if part]
    if not parts and isinstance(body.get("error"), str):
        parts = [body["error"]]
    error = " | ".join(parts) or text.strip() or f"HTTP {status}"
    code = err.get("code") if isinstance(err.get("code"), int) else None
    if code is None and (match := _EMBEDDED_CODE.search(error)):
        code = int(match.group(1) or match.group(2))
    return (f"{code}: {error}" if code is not None and str(code) not in error else error), code


# --- webhooks --------------------------------------------------------------------------------------


def verify_webhook(headers: Mapping[str, str], expected: Mapping[str, str]) -> bool:
    """True when every configured custom header arrived with its value (names case-insensitive,
    values compared in constant time). No configured header verifies nothing."""
    if not expected:
        return False
    received = {name.lower(): value for name, value in headers.items()}
    ok = True
    for name, value in expected.items():
        got = received.get(name.lower())
        ok &= got is not None and bool(value) and hmac.compare_digest(got.encode(), value.encode())
    return ok


def _items(payload: Mapping[str, Any]) -> Iterator[tuple[str, Mapping[str, Any], Mapping[str, Any]]]:
    """("status" | "message", item, value) for every status and message in a webhook payload;
    parts of another shape than Meta's (a string where a list of objects belongs) are skipped."""
    for entry in _objects(payload.get("entry")):
        for change in _objects(entry.get("changes")):
            value = change.get("value")
            if not isinstance(value, Mapping):
                continue
            for status in _objects(value.get("statuses")):
                yield "status", status, value
            for message in _objects(value.get("messages")):
                yield "message", message, value


def _objects(items: Any) -> list[Mapping[str, Any]]:
    """The objects of a JSON array; nothing when ``items`` is not an array."""
    return [item for item in items if isinstance(item, Mapping)] if isinstance(items, list) else []


def item_key(kind: str, item: Mapping[str, Any]) -> str:
    if not item.get("id"):
        raise ValueError(f"360dialog webhook {kind} without an id")
    return f"{item['id']}:{item.get('status')}" if kind == "status" else str(item["id"])


def event_keys(payload: Mapping[str, Any]) -> list[str]:
    """One dedup key per status ("<wamid>:<status>") and per inbound message ("<wamid>")."""
    return [item_key(kind, item) for kind, item, _ in _items(payload)]


def event_key(payload: Mapping[str, Any]) -> str:
    """One dedup key for the whole POST: the event's own key when it carries one event (the usual case),
    else "batch:<sha256 of the sorted keys>", stable across redeliveries of the same payload.
    Raises ValueError when the payload carries no status and no message."""
    keys = event_keys(payload)
    if not keys:
        raise ValueError("360dialog webhook without statuses or messages")
    if len(keys) == 1:
        return keys[0]
    return "batch:" + hashlib.sha256("\n".join(sorted(keys)).encode()).hexdigest()


def parse_webhook(payload: Mapping[str, Any]) -> list[CallbackEvent]:
    """Every status and inbound message in a Meta-format webhook → one event each, in payload order.

    Statuses (address = "+" recipient_id): `delivered` → DELIVERED, `read` → OPENED, `failed` →
    DELIVERY_FAILED with reason "failed <code>: <title>" plus "unreachable" (131026/131050: stop
    sending to this address) or "needs a template" (131047), `sent` and others → IGNORED.
    Inbound messages (address = "+" from): text STOP/СТОП (UNSUBSCRIBE, ОТПИСАТЬСЯ) or a reply button
    whose payload/id is "unsubscribe" → OPT_OUT; anything else → IGNORED. Statuses can arrive out of
    order (read before delivered): the receiver applies a monotonic rank. Unknown fields are ignored.
    """
    events = []
    for kind, item, _ in _items(payload):
        key = item_key(kind, item)
        at = utc_from_timestamp(item["timestamp"]) if str(item.get("timestamp") or "").isdigit() else datetime.now(UTC)
        if kind == "status":
            status = str(item.get("status") or "")
            event_kind = _STATUS_KINDS.get(status, IGNORED)
            reason = _failure_reason(item) if event_kind == DELIVERY_FAILED else status
            events.append(_event(key, event_kind, str(item["id"]), item.get("recipient_id"), at, reason))
        else:
            event_kind, reason = _inbound(item)
            events.append(_event(key, event_kind, None, item.get("from"), at, reason))
    return events


def _inbound(message: Mapping[str, Any]) -> tuple[str, str]:
    text = ((message.get("text") or {}).get("body")) if isinstance(message.get("text"), Mapping) else None
    if text is not None and _keyword(text) in STOP_KEYWORDS:
        return OPT_OUT, f"keyword:{_keyword(text)}"
    button = message.get("button") if isinstance(message.get("button"), Mapping) else {}
    interactive = message.get("interactive") if isinstance(message.get("interactive"), Mapping) else {}
    reply = interactive.get("button_reply") if isinstance(interactive.get("button_reply"), Mapping) else {}
    payload = button.get("payload") or reply.get("id")
    if payload is not None and str(payload).strip().casefold() == UNSUBSCRIBE_PAYLOAD:
        return OPT_OUT, f"button:{payload}"
    return IGNORED, f"inbound {message.get('type') or 'message'}"


def _failure_reason(status: Mapping[str, Any]) -> str:
    errors = status.get("errors") or []
    error = errors[0] if errors and isinstance(errors[0], Mapping) else {}
    code = error.get("code")
    title = error.get("title") or error.get("message") or ""
    reason = f"failed {code}: {title}".rstrip(": ") if code is not None else "failed"
    if code in UNREACHABLE_CODES:
        reason += " (unreachable)"
    elif code == NEEDS_TEMPLATE:
        reason += " (needs a template)"
    return reason


def _event(key: str, kind: str, provider_id: str | None, wa_id: Any, at: datetime, reason: str) -> CallbackEvent:
    return CallbackEvent(
        event_key=key,
        kind=kind,
        provider_message_id=provider_id,
        address=f"+{wa_id}" if wa_id and str(wa_id).isdigit() else (str(wa_id) if wa_id else None),
        occurred_at=at,
        reason=reason,
    )


def digits(address: str) -> str:
    """"+7 (916) 123-45-67" or "whatsapp:+79161234567" → "79161234567" (the Cloud API `to`)."""
    return "".join(ch for ch in address if ch.isdigit())


def _keyword(text: Any) -> str:
    return str(text or "").strip().rstrip(".!").strip().casefold()
