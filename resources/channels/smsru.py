"""SMS.ru connector and delivery-callback helpers.

Send: `POST {base_url}/sms/send`, form-encoded: `api_id`, `to`, `msg`, `json=1` (and `from` when a
sender name is configured). The answer has a top-level status and one per number:
`{"status":"OK","status_code":100,"sms":{"79161234567":{"status":"OK","status_code":100,"sms_id":"…"}}}`.
The top level can say OK while the number was refused, so the per-number entry decides. The provider
id is that entry's `sms_id`.

SMS.ru has no idempotency key: a retried send may deliver twice (`provider_deduplicates = False`).
Its 231 ("identical message to this number within a minute") catches some repeats, but it also
refuses a legitimate identical message, so it is only a rate limit here.

Delivery callbacks (registered with `callback/add`) are form POSTs carrying records in `data[…]`
fields: "sms_status\\n<sms_id>\\n<status code>[\\n<unix time>]". The handler must answer with the body
`100`, or SMS.ru counts the delivery as failed and retries. SMS.ru signs nothing, so authenticity
rests on an unguessable secret in the callback URL path: register `https://…/hooks/<tenant>/smsru/<secret>`
and compare the path segment in constant time (`verify_path_secret`).
Source: https://sms.ru/api, SMS.RU client code, shared/reference/provider-protocols.md §8.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from policies.sms_segments import MAX_SEGMENTS, validate_length
from resources.channels.base import (
    DELIVERED,
    DELIVERY_FAILED,
    IGNORED,
    OPENED,
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
from resources.channels.smsc import phone_digits

CALLBACK_ANSWER = "100"  # the body a delivery callback must be answered with
OK = 100

# status_code → (class, retry-after hint in seconds). Anything else that is not OK is REJECTED.
_SEND_ERRORS: dict[int, tuple[str, float | None]] = {
    202: (UNREACHABLE, None),  # bad number or no route to it
    207: (UNREACHABLE, None),  # no route to this number
    209: (UNREACHABLE, None),  # the number is in our stop list
    214: (UNREACHABLE, None),  # foreign number blocked by the account settings
    215: (UNREACHABLE, None),  # the number is in SMS.ru's spam stop list: the recipient complained
    206: (RATE_LIMITED, 3600.0),  # daily limit of the account
    230: (RATE_LIMITED, 3600.0),  # daily limit for this number
    231: (RATE_LIMITED, 60.0),  # identical message to this number within a minute
    232: (RATE_LIMITED, 3600.0),  # identical message to this number within a day
    233: (RATE_LIMITED, 600.0),  # code re-send limit
    220: (TRANSIENT, None),  # service temporarily unavailable
    500: (TRANSIENT, None),  # server error
}
_ANTI_FRAUD = range(501, 509)  # 501–508: anti-fraud limits → RATE_LIMITED, 600 s

# Delivery statuses in callbacks.
STATUS_NAMES = {
    -1: "not found", 100: "queued", 101: "passing to operator", 102: "sent (in transit)", 103: "delivered",
    104: "expired (TTL)", 105: "deleted by operator", 106: "phone failure", 107: "unknown reason",
    108: "rejected", 110: "read", 150: "no route",
}
_FAILED = frozenset({104, 105, 106, 107, 108, 150})
_TRANSIENT_FAILURES = frozenset({104, 106})  # the phone was off or faulty: it may work later


class SmsRuConnector:
    """Sends one SMS per call from one SMS.ru account; never retries (the caller owns retry policy)."""

    provider = "smsru"
    channel = "sms"
    provider_deduplicates = False  # no idempotency key on sms/send
    ledger_dedup_ids = False
    delivery_receipts = True  # sms_status callbacks: 103 delivered, 104-108/150 failed

    def __init__(self, base_url: str, api_id: str, sender: str | None = None, max_segments: int = MAX_SEGMENTS):
        self._url = f"{base_url.rstrip('/')}/sms/send"
        self._api_id = api_id
        self._sender = sender
        self._max_segments = max_segments

    def validate(self, message: OutboundMessage) -> None:
        """Raise ValueError when this message cannot go out as an SMS (same rules as SMSC: 10–15 digit
        number, non-empty text within `max_segments` parts, text only)."""
        digits = phone_digits(message.address)
        if not 10 <= len(digits) <= 15:
            raise ValueError(f"SMS needs a phone number of 10–15 digits, got {message.address!r}")
        if not message.text:
            raise ValueError("SMS text is empty")
        if message.attachments or message.buttons or message.template is not None:
            raise ValueError("SMS carries text only: no attachments, buttons or templates")
        validate_length(message.text, self._max_segments)

    def fields(self, message: OutboundMessage) -> dict[str, str]:
        fields = {"api_id": self._api_id, "to": phone_digits(message.address), "msg": message.text, "json": "1"}
        if self._sender is not None:
            fields["from"] = self._sender
        return fields

    async def send(self, client: HttpClient, message: OutboundMessage) -> SendResult:
        """One sms/send call; a message `validate` refuses is REJECTED without a request."""
        if (refused := refusal(self.validate, message)) is not None:
            return refused
        fields = self.fields(message)
        response = await post_or_failure(client.post(self._url, data=fields))
        if isinstance(response, SendResult):
            return response
        return classify(response.status_code, json_object(response), fields["to"])


def classify(status: int, body: Mapping[str, Any], phone: str) -> SendResult:
    """Map an sms/send answer to the SendResult for `phone` (digits only): a top-level error applies
    to every number; otherwise the number's own entry under `sms` decides."""
    if status != 200:
        return SendResult(ok=False, error_class=TRANSIENT, error=f"HTTP {status}")
    if body.get("status") != "OK":
        return _error(body) if "status_code" in body else _garbled()
    entry = (body.get("sms") or {}).get(phone)
    if not isinstance(entry, Mapping):
        return _garbled(f"no entry for {phone} in the answer")
    if entry.get("status") == "OK" and entry.get("sms_id"):
        return SendResult(ok=True, provider_message_id=str(entry["sms_id"]))
    return _error(entry)


def _error(entry: Mapping[str, Any]) -> SendResult:
    code = entry.get("status_code")
    text = f"{code}: {entry.get('status_text') or 'error'}"
    if not isinstance(code, int):
        return _garbled(text)
    error_class, retry_after = (RATE_LIMITED, 600.0) if code in _ANTI_FRAUD else _SEND_ERRORS.get(code, (REJECTED, None))
    return SendResult(ok=False, error_class=error_class, error=text, retry_after=retry_after)


def _garbled(detail: str = "neither status OK nor an error code") -> SendResult:
    return SendResult(ok=False, error_class=TRANSIENT, error=f"garbled answer: {detail}")


def verify_path_secret(received: str, secret: str) -> bool:
    """Constant-time comparison of the secret path segment of the callback URL (SMS.ru signs nothing).
    An empty configured secret verifies nothing."""
    return bool(secret) and hmac.compare_digest(received.encode(), secret.encode())


def records(form: Mapping[str, Any] | Iterable[tuple[str, str]]) -> list[str]:
    """The `data[…]` records of a callback POST, in order. Accepts the form as a mapping (values str
    or lists, keys "data[0]", "data[1]", … or "data[]" or "data") or as (name, value) pairs."""
    pairs: Iterable[tuple[str, Any]] = form.items() if isinstance(form, Mapping) else form
    found: list[tuple[int, int, str]] = []
    for position, (name, value) in enumerate(pairs):
        if not (name == "data" or (name.startswith("data[") and name.endswith("]"))):
            continue
        index = name[5:-1]
        order = int(index) if index.isdigit() else position
        values = value if isinstance(value, Sequence) and not isinstance(value, str | bytes) else [value]
        found.extend((order, position, str(item)) for item in values)
    return [record for _, _, record in sorted(found, key=lambda item: (item[0], item[1]))]


def _lines(record: str) -> list[str]:
    return [line.strip() for line in record.replace("\r\n", "\n").split("\n")]


def event_key(form_or_record: Mapping[str, Any] | Iterable[tuple[str, str]] | str) -> str:
    """"<sms_id>:<status code>" for one record; for a POST holding several records, their keys joined
    with "," (a gateway that stores one row per POST gets a stable key; storing one row per record,
    `{"data[0]": record}`, dedups per status change and is preferred). Raises ValueError when empty."""
    if isinstance(form_or_record, str):
        lines = _lines(form_or_record)
        if len(lines) >= 3 and lines[0] == "sms_status" and lines[1] and lines[2]:
            return f"{lines[1]}:{lines[2]}"
        if lines and lines[0]:
            return f"{lines[0]}:" + ":".join(lines[1:3])
        raise ValueError("empty SMS.ru callback record")
    found = records(form_or_record)
    if not found:
        raise ValueError("SMS.ru callback without data[] records")
    return ",".join(event_key(record) for record in found)


def parse_callback(
    form: Mapping[str, Any] | Iterable[tuple[str, str]], received_at: datetime | None = None
) -> list[CallbackEvent]:
    """Every `sms_status` record → one event; the provider id is the sms_id, the address is unknown
    (SMS.ru's record names no number).

    - 103 → DELIVERED.
    - 110 (read; Viber-delivered messages) → OPENED: the recipient saw it, the closest of our kinds.
    - 104–108, 150 → DELIVERY_FAILED, reason "<category>: <code> (<meaning>)" where category is
      "transient" for 104 (expired: the phone stayed off) and 106 (phone failure), "unreachable" for
      150 (no route), "failed" otherwise.
    - 100–102 (in progress), -1 and unknown codes, and records of other types → IGNORED.
    occurred_at comes from the record's optional 4th line (Unix time), else `received_at` (default now).
    """
    now = received_at or datetime.now(UTC)
    events = []
    for record in records(form):
        lines = _lines(record)
        key = event_key(record)
        if lines[0] != "sms_status" or len(lines) < 3:
            events.append(CallbackEvent(key, IGNORED, None, None, now, lines[0] or "empty"))
            continue
        sms_id, code = lines[1], _int(lines[2])
        at = utc_from_timestamp(lines[3]) if len(lines) > 3 and lines[3].isdigit() else now
        described = f"{code} ({STATUS_NAMES.get(code, 'unknown')})" if code is not None else f"{lines[2]} (unknown)"
        if code == 103:
            kind, reason = DELIVERED, ""
        elif code == 110:
            kind, reason = OPENED, "read"
        elif code in _FAILED:
            category = "transient" if code in _TRANSIENT_FAILURES else "unreachable" if code == 150 else "failed"
            kind, reason = DELIVERY_FAILED, f"{category}: {described}"
        else:
            kind, reason = IGNORED, described
        events.append(CallbackEvent(key, kind, sms_id or None, None, at, reason))
    return events


def _int(value: str) -> int | None:
    try:
        return int(value)
    except ValueError:
        return None
