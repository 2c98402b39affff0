"""SMSC.ru connector, HLR reachability check and status-callback helpers.

Send: `POST {base_url}/sys/send.php`, form-encoded: `login`, `psw`, `phones`, `mes`, `fmt=3` (JSON
answers), `charset=utf-8` and `id`, our message id. Answers come with HTTP 200 either way:
`{"id": <id>, "cnt": <parts>}` or `{"error": "…", "error_code": n}`.

Idempotency: SMSC refuses a second identical send request within a minute with error 9. Our `id` is
derived from the send id (`smsc_id_for`), so a resend of the same send is byte-for-byte the same
request, and error 9 means "the first one got through": we answer ok with the id we passed
(`provider_deduplicates`). Limits of that guard: it lasts a minute; it assumes SMSC counts only
requests it accepted (unconfirmed); and SMSC is also said to answer 9 when one login opens 15 or more
simultaneous connections (unconfirmed), so keep per-account concurrency below that.

SMSC identifies a message by (id, phone) (status.php asks for both), so the provider id is
"<id>:<phone digits>". A deterministic id from a 31-bit hash repeats across sends now and then;
paired with the phone, a clash needs two sends to the same number with the same hash.

Status callbacks (the handler URL in the account settings) are form POSTs. Their field names are
unconfirmed; we assume `id`, `phone`, `status`, `err`, `ts` and a signature `md5` (or `sha1`) of
"<id>:<phone>:<status>:<password>", and ignore anything else. Capture a real callback before relying
on this in production.
Source: https://smsc.ru/api/http/, SMSC's own client libraries, shared/reference/provider-protocols.md §8.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import hmac
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from policies.sms_segments import MAX_SEGMENTS, validate_length
from resources.channels.base import (
    CLICKED,
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

DUPLICATE = 9  # "the same request more than once a minute": our dedup signal

# Send error_code → (class, retry-after hint in seconds).
_SEND_ERRORS: dict[int, tuple[str, float | None]] = {
    1: (REJECTED, None),  # bad parameters
    2: (REJECTED, None),  # bad login or password
    3: (REJECTED, None),  # not enough money
    # IP temporarily blocked after frequent errors: nothing was sent and every send from here will fail
    # for a while, so the caller should pause the account, which is what RATE_LIMITED asks for.
    4: (RATE_LIMITED, 60.0),
    5: (REJECTED, None),  # bad date format
    6: (REJECTED, None),  # message forbidden (by text or by sender name)
    7: (UNREACHABLE, None),  # bad phone number format
    8: (UNREACHABLE, None),  # cannot be delivered to this number
}

# Delivery status codes (status.php and callbacks).
STATUS_NAMES = {
    -3: "not found", -1: "awaiting send", 0: "passed to operator", 1: "delivered", 2: "read", 3: "expired",
    4: "link clicked", 20: "cannot deliver", 22: "bad number", 23: "forbidden", 24: "insufficient funds",
    25: "unreachable number",
}
_PENDING = frozenset({-1, 0})
_FAILED = frozenset({3, 20, 22, 23, 24, 25})

# `err` codes of failed deliveries, by what they say about the number.
ERR_NAMES = {
    1: "subscriber does not exist", 6: "subscriber offline", 11: "no SMS service", 12: "subscriber phone error",
    13: "subscriber phone error", 21: "service not supported", 200: "virtual send", 219: "SIM changed",
    240: "subscriber busy", 245: "status not received", 246: "time restriction", 247: "message limit",
    248: "no route", 249: "bad number format", 250: "number forbidden by settings", 251: "per-number limit",
    252: "number forbidden", 253: "spam filter", 254: "unregistered sender id", 255: "rejected by operator",
}
STOP_LIST_ERRS = frozenset({250, 252, 253})  # someone (we, the operator, a spam filter) blocks this number
UNREACHABLE_ERRS = frozenset({1, 11, 12, 13, 21, 219, 249, 254, 255}) | STOP_LIST_ERRS
TRANSIENT_ERRS = frozenset({6, 240, 245, 246, 247, 251})
_HLR_FIELDS = ("imsi", "msc", "mcc", "mnc", "cn", "net", "rcn", "rnet", "operator")


def smsc_id_for(send_id: str) -> int:
    """A deterministic SMSC message id (1…2147483647, SMSC's range) from our send id."""
    return int.from_bytes(hashlib.sha256(send_id.encode()).digest()[:4], "big") % 2147483647 + 1


def phone_digits(address: str) -> str:
    """"+7 (916) 123-45-67" → "79161234567": SMSC takes and reports numbers without the plus."""
    return "".join(char for char in address if char.isdigit())


@dataclass(frozen=True)
class ReachabilityResult:
    """What an HLR lookup says about a number. `reachable` is None when the answer settles nothing
    (subscriber offline, no answer yet, lookup refused for our own reasons)."""

    phone: str
    reachable: bool | None
    reason: str
    status: int | None = None
    err: int | None = None
    network: dict[str, Any] = field(default_factory=dict)  # imsi, mcc, mnc, operator … as SMSC reports them
    # "<id>:<phone digits>" of an accepted lookup: SMSC's status callback for it carries the same pair.
    lookup_id: str | None = None


class SmscConnector:
    """Sends one SMS per call from one SMSC account; never retries (the caller owns retry policy)."""

    provider = "smsc"
    channel = "sms"
    provider_deduplicates = True  # deterministic id + error 9 on an identical repeat
    ledger_dedup_ids = False
    delivery_receipts = True  # status callbacks: 1 delivered; 3, 20, 22-25 failed

    def __init__(
        self,
        base_url: str,
        login: str,
        password: str,
        sender: str | None = None,
        max_segments: int = MAX_SEGMENTS,
        with_cost: bool = False,
    ):
        base = base_url.rstrip("/")
        self._send_url, self._status_url = f"{base}/sys/send.php", f"{base}/sys/status.php"
        self._login, self._password = login, password
        self._sender = sender
        self._max_segments = max_segments
        self._with_cost = with_cost  # cost=3: the answer also carries cost and balance (logged, not used)

    def validate(self, message: OutboundMessage) -> None:
        """Raise ValueError when this message cannot go out as an SMS: a number that is not 10–15
        digits, empty text, more parts than `max_segments`, or buttons/attachments/templates, which
        an SMS cannot carry (silently dropping a button changes what the message asks)."""
        digits = phone_digits(message.address)
        if not 10 <= len(digits) <= 15:
            raise ValueError(f"SMS needs a phone number of 10–15 digits, got {message.address!r}")
        if not message.text:
            raise ValueError("SMS text is empty")
        if message.attachments or message.buttons or message.template is not None:
            raise ValueError("SMS carries text only: no attachments, buttons or templates")
        validate_length(message.text, self._max_segments)

    def fields(self, message: OutboundMessage) -> dict[str, str]:
        """The send.php form for one recipient; the same send always yields the same form."""
        fields = {
            "login": self._login,
            "psw": self._password,
            "phones": phone_digits(message.address),
            "mes": message.text,
            "fmt": "3",
            "charset": "utf-8",
            "id": str(smsc_id_for(message.send_id)),
        }
        if self._sender is not None:
            fields["sender"] = self._sender
        if self._with_cost:
            fields["cost"] = "3"
        return fields

    async def send(self, client: HttpClient, message: OutboundMessage) -> SendResult:
        """One send.php call; a message `validate` refuses is REJECTED without a request."""
        if (refused := refusal(self.validate, message)) is not None:
            return refused
        fields = self.fields(message)
        response = await post_or_failure(client.post(self._send_url, data=fields))
        if isinstance(response, SendResult):
            return response
        return classify(response.status_code, json_object(response), int(fields["id"]), fields["phones"])

    async def hlr_check(
        self, client: HttpClient, phone: str, attempts: int = 10, interval_s: float = 1.0
    ) -> ReachabilityResult:
        """Ask the mobile network whether `phone` exists and is reachable (an HLR lookup, billed by SMSC).

        `send.php` with `hlr=1` starts the lookup; its result arrives like a delivery status, so we
        poll `status.php` (up to `attempts` times, `interval_s` apart) until the status is final.
        Transport errors raise httpx.HTTPError: a reachability check has no ledger to protect.
        """
        digits = phone_digits(phone)
        answer = json_object(
            await client.post(self._send_url, data=self._auth() | {"phones": digits, "hlr": "1", "fmt": "3", "charset": "utf-8"})
        )
        if "error_code" in answer or "id" not in answer:
            code = answer.get("error_code")
            text = f"HLR request refused: {code}: {answer.get('error') or 'no id in answer'}"
            known = code if isinstance(code, int) else None
            return ReachabilityResult(digits, False if known in (7, 8) else None, text, err=known)
        query = self._auth() | {"phone": digits, "id": str(answer["id"]), "fmt": "3", "all": "1"}
        status: Mapping[str, Any] = {}
        for attempt in range(attempts):
            status = json_object(await client.post(self._status_url, data=query))
            if status.get("status") not in _PENDING and "error_code" not in status:
                break
            if attempt + 1 < attempts:
                await asyncio.sleep(interval_s)
        return dataclasses.replace(reachability(digits, status), lookup_id=f"{answer['id']}:{digits}")

    def _auth(self) -> dict[str, str]:
        return {"login": self._login, "psw": self._password}


def classify(status: int, body: Mapping[str, Any], requested_id: int | None = None, phone: str = "") -> SendResult:
    """Map a send.php answer to a SendResult. Error 9 with a known `requested_id` means our identical
    earlier request went through: ok, under the id we passed (the error text says so)."""
    if status != 200:
        return SendResult(ok=False, error_class=TRANSIENT, error=f"HTTP {status}")
    code = body.get("error_code")
    if isinstance(code, int):
        text = f"{code}: {body.get('error') or 'error'}"
        if code == DUPLICATE and requested_id is not None:
            return SendResult(ok=True, provider_message_id=f"{requested_id}:{phone}", error=f"{text} (already sent)")
        if code == DUPLICATE:
            return SendResult(ok=False, error_class=RATE_LIMITED, error=text, retry_after=60.0)
        error_class, retry_after = _SEND_ERRORS.get(code, (REJECTED, None))
        return SendResult(ok=False, error_class=error_class, error=text, retry_after=retry_after)
    if body.get("id") is not None and "error" not in body:
        return SendResult(ok=True, provider_message_id=f"{body['id']}:{phone}")
    return SendResult(ok=False, error_class=TRANSIENT, error="garbled answer: neither id nor error_code")


def reachability(phone: str, status: Mapping[str, Any]) -> ReachabilityResult:
    """Read a status.php answer for an HLR lookup: delivered (1) = the number is live; a failure with
    an unreachable `err` = it is not; an offline subscriber or a pending lookup settles nothing."""
    code, err = _int(status.get("status")), _int(status.get("err"))
    network = {name: status[name] for name in _HLR_FIELDS if status.get(name) not in (None, "")}
    if "error_code" in status:
        return ReachabilityResult(phone, None, f"status lookup failed: {status.get('error_code')}: {status.get('error')}")
    described = _describe(code, err)
    if code == 1:
        return ReachabilityResult(phone, True, described, code, err, network)
    if code in _FAILED and (err in UNREACHABLE_ERRS or code in (22, 25)):
        return ReachabilityResult(phone, False, described, code, err, network)
    return ReachabilityResult(phone, None, described, code, err, network)


def _auth_string(form: Mapping[str, Any], password: str) -> str:
    return f"{_field(form, 'id')}:{_field(form, 'phone')}:{_field(form, 'status')}:{password}"


def sign(form: Mapping[str, Any], password: str, algorithm: str = "md5") -> str:
    """hex(md5 or sha1 of "<id>:<phone>:<status>:<password>"): the assumed callback signature."""
    return hashlib.new(algorithm, _auth_string(form, password).encode()).hexdigest()


def verify_webhook(form: Mapping[str, Any], password: str) -> bool:
    """True when the callback's `md5` (or `sha1`) field is the signature of its id, phone and status
    under our account password (constant time; case-insensitive hex). No signature, or an empty
    configured password, verifies nothing. Values may be strings or lists (parse_qs output)."""
    if not password:
        return False
    for algorithm in ("md5", "sha1"):
        received = _field(form, algorithm)
        if received:
            return hmac.compare_digest(sign(form, password, algorithm).encode(), received.lower().encode())
    return False


def event_key(form: Mapping[str, Any]) -> str:
    """"<id>:<phone>:<status>" for a status callback ("in:<id>:<phone>" for an incoming SMS).
    Raises ValueError when the fields are missing."""
    message_id, phone, status = _field(form, "id"), phone_digits(_field(form, "phone")), _field(form, "status")
    if message_id and phone and status:
        return f"{message_id}:{phone}:{status}"
    if message_id and phone and _field(form, "mes"):
        return f"in:{message_id}:{phone}"
    raise ValueError("SMSC callback without id, phone and status")


def parse_status(form: Mapping[str, Any], received_at: datetime | None = None) -> list[CallbackEvent]:
    """One status callback → one event; the provider id is "<id>:<phone digits>", as `send` reports it.

    - status 1 → DELIVERED; 2 (read) → OPENED; 4 (link clicked) → CLICKED.
    - 3, 20, 22, 23, 24, 25 → DELIVERY_FAILED. The reason starts with what the `err` code says about
      the number: "stop-list" (250/252/253: the number is blocked; treat it like an opt-out),
      "unreachable" (the number is dead for SMS), "transient" (offline, busy, expired: it may work
      later) or "failed", then the status and err descriptions.
    - pending statuses (-1, 0) and anything unknown → IGNORED.
    - An incoming SMS (assumed: `mes` instead of `status`) reading "стоп"/"stop" → OPT_OUT; other
      incoming texts → IGNORED.
    Unknown fields are ignored. occurred_at comes from `ts` (Unix seconds) when present.
    """
    key = event_key(form)
    phone = phone_digits(_field(form, "phone"))
    ts = _field(form, "ts")
    at = utc_from_timestamp(ts) if ts.replace(".", "", 1).isdigit() else received_at or datetime.now(UTC)
    provider_id = f"{_field(form, 'id')}:{phone}"
    if not _field(form, "status"):
        text = _field(form, "mes").strip()
        kind = OPT_OUT if text.strip("!.").casefold() in ("стоп", "stop") else IGNORED
        return [CallbackEvent(key, kind, None, phone, at, f"incoming sms: {text[:40]}")]
    code, err = _int(_field(form, "status")), _int(_field(form, "err"))
    if code == 1:
        kind, reason = DELIVERED, ""
    elif code == 2:
        kind, reason = OPENED, "read"
    elif code == 4:
        kind, reason = CLICKED, "link clicked"
    elif code in _FAILED:
        kind, reason = DELIVERY_FAILED, f"{failure_category(code, err)}: {_describe(code, err)}"
    else:
        kind, reason = IGNORED, _describe(code, err)
    return [CallbackEvent(key, kind, provider_id, phone, at, reason)]


def failure_category(status: int | None, err: int | None) -> str:
    """"stop-list" | "unreachable" | "transient" | "failed" for a failed delivery."""
    if err in STOP_LIST_ERRS:
        return "stop-list"
    if err in UNREACHABLE_ERRS or status in (22, 25):
        return "unreachable"
    if err in TRANSIENT_ERRS or status == 3:
        return "transient"
    return "failed"


def _describe(status: int | None, err: int | None) -> str:
    text = f"status {status} ({STATUS_NAMES.get(status, 'unknown') if status is not None else 'missing'})"
    if err:
        text += f", err {err} ({ERR_NAMES.get(err, 'unknown')})"
    return text


def _field(form: Mapping[str, Any], name: str) -> str:
    """A form value as a string: forms may arrive as {name: str} or {name: [str, …]} (last one wins)."""
    value = form.get(name)
    if isinstance(value, Sequence) and not isinstance(value, str | bytes):
        value = value[-1] if value else None
    return "" if value is None else str(value)


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None
