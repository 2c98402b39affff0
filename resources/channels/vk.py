"""VK community messages connector and Callback API helpers.

Send: `POST {base_url}/method/messages.send`, form-encoded, with `access_token` (a community token
with the messages scope) and `v` (the API version, required on every call). VK answers HTTP 200 even
for errors: `{"response": <message id>}` or `{"error": {"error_code": n, "error_msg": "…"}}`. The
provider id is the message id in the community's dialog with the peer.

Idempotency: `random_id` is VK's own dedup key. VK checks it per sender (the community) over the
whole message history and does not send a repeated one, answering with the earlier message's id.
It is the send's `dedup_id`, a number the send ledger allocates per send from a per-tenant sequence
(`ledger_dedup_ids`) and re-uses on every later attempt of that send, so resending after an
ambiguous failure is safe (`provider_deduplicates`) and two different sends never share one. (A hash
of the send id into int32 would collide with even odds after ~77,000 sends from one community, and a
collision is a different message VK silently drops.) A message without a dedup_id is refused.

Callback API: JSON envelope `{type, group_id, event_id, v, secret?, object}`. There is no HMAC: the
`secret` field equals the key set in the community settings (`verify_webhook`). Every event must be
answered with the body `ok`; the one-off `confirmation` event is answered with the confirmation
code instead (`confirmation_answer`). Events are deduplicated by `event_id`.

Button presses: a callback button sends a `message_event`, and the user's button spins until the
community answers it with `messages.sendMessageEventAnswer` (`event_id` of the press, `user_id`,
`peer_id`, optional `event_data` such as a snackbar) within about a minute. The Callback API's own
answer must stay `ok`, so this is an API call with the community token (`press_answer`,
`VkConnector.answer_press`), unlike Telegram, which takes the answer in the webhook reply.
Source: VK API docs, VKCOM/vk-api-schema 5.199 and shared/reference/provider-protocols.md §2.
"""

from __future__ import annotations

import hmac
import json
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from resources.channels.base import (
    CLICKED,
    IGNORED,
    JOINED,
    OPT_IN,
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

API_VERSION = "5.199"
ANSWER_METHOD = "messages.sendMessageEventAnswer"  # answers a callback button press
OK_ANSWER = "ok"  # the body every Callback API event except `confirmation` must be answered with
MAX_TEXT = 4096  # characters; longer is error 914 "Message is too long"
MAX_BUTTONS = 6  # one callback button per row; an inline keyboard has at most 6 rows (u)
MAX_LABEL = 40  # characters per button label (u)
MAX_PAYLOAD = 255  # characters of a button's JSON payload

# <type><owner_id>_<media_id>[_<access_key>], e.g. photo-123_456 or doc123_789_abcdef
MEDIA_ID = re.compile(r"^(photo|video|audio|doc|wall|market|poll|story|audio_message|graffiti)-?\d+_\d+(_[A-Za-z0-9]+)?$")

# error_code → (class, retry-after hint in seconds). VK sends no retry-after value: these are ours.
_ERRORS: dict[int, tuple[str, float | None]] = {
    6: (RATE_LIMITED, 1.0),  # too many requests per second
    9: (RATE_LIMITED, 10.0),  # flood control: too many (identical) messages; pause that peer
    29: (RATE_LIMITED, 3600.0),  # a per-method quota is used up
    18: (UNREACHABLE, None),  # user was deleted or banned
    900: (UNREACHABLE, None),  # can't send messages for users from blacklist
    901: (UNREACHABLE, None),  # no permission: the user has not allowed (or has revoked) community messages
    902: (UNREACHABLE, None),  # the user's privacy settings
    1: (TRANSIENT, None),  # unknown error
    10: (TRANSIENT, None),  # internal server error
}
_STOP_WORDS = frozenset({"стоп", "stop"})


MAX_RANDOM_ID = 2**31 - 1  # random_id is a signed int32; 0 would switch VK's check off


def _require_random_id(message: OutboundMessage) -> None:
    if message.dedup_id is None:
        raise ValueError("VK send without a dedup_id: random_id comes from the send ledger (claim), never made up")
    if not 1 <= message.dedup_id <= MAX_RANDOM_ID:
        raise ValueError(f"dedup_id {message.dedup_id} is outside VK's random_id range 1…{MAX_RANDOM_ID}")


class VkConnector:
    """Sends one message per call from one community; never retries (the caller owns retry policy)."""

    provider = "vk"
    channel = "vk"
    provider_deduplicates = True  # random_id = the send's dedup_id, the same on every attempt
    ledger_dedup_ids = True  # the ledger allocates that number when it claims the send
    delivery_receipts = False  # the Callback API reports no deliveries: acceptance is the last word

    def __init__(self, base_url: str, group_id: int, access_token: str, api_version: str = API_VERSION):
        self._url = f"{base_url.rstrip('/')}/method/messages.send"
        self._answer_url = f"{base_url.rstrip('/')}/method/{ANSWER_METHOD}"
        self.group_id = group_id
        self._token = access_token
        self._version = api_version

    def validate(self, message: OutboundMessage) -> None:
        """Raise ValueError when VK cannot take this message as it is, so the caller can refuse it
        before the first send: a non-numeric peer, empty or over-long text, attachments that are not
        uploaded VK media ids, more buttons than an inline keyboard holds, or a template."""
        if not message.address.lstrip("-").isdigit():
            raise ValueError(f"VK peer_id must be an integer, got {message.address!r}")
        if not message.text and not message.attachments:
            raise ValueError("VK message needs text or an attachment")
        if len(message.text) > MAX_TEXT:
            raise ValueError(f"VK message text is {len(message.text)} characters; the limit is {MAX_TEXT}")
        if message.template is not None:
            raise ValueError("VK has no provider templates; render the text instead")
        for attachment in message.attachments:
            if not MEDIA_ID.match(attachment.url):
                raise ValueError(
                    f"VK attachments must be uploaded media ids like photo-123_456, got {attachment.url!r} "
                    "(upload first: photos.getMessagesUploadServer → photos.saveMessagesPhoto, or docs.*)"
                )
        if len(message.buttons) > MAX_BUTTONS:
            raise ValueError(f"VK inline keyboard holds {MAX_BUTTONS} buttons, got {len(message.buttons)}")
        for label, data in message.buttons:
            if not label or len(label) > MAX_LABEL:
                raise ValueError(f"VK button label must be 1–{MAX_LABEL} characters, got {label!r}")
            if len(_button_payload(data, message.send_id)) > MAX_PAYLOAD:
                raise ValueError(f"VK button payload over {MAX_PAYLOAD} characters: {data!r}")

    def fields(self, message: OutboundMessage) -> dict[str, str]:
        """The messages.send form. Buttons become an inline keyboard of callback buttons, one per row,
        each with the payload {"cmd": <data>, "sid": <send id>} so a press can be traced to the send."""
        fields = {
            "access_token": self._token,
            "v": self._version,
            "peer_id": message.address,
            "random_id": str(message.dedup_id),
            "message": message.text,
        }
        if message.buttons:
            fields["keyboard"] = json.dumps(keyboard(message.buttons, message.send_id), ensure_ascii=False)
        if message.attachments:
            fields["attachment"] = ",".join(attachment.url for attachment in message.attachments)
        return fields

    async def send(self, client: HttpClient, message: OutboundMessage) -> SendResult:
        """One messages.send call; a message `validate` refuses, or one without a ledger-allocated
        random_id, is REJECTED without a request."""
        if (refused := refusal(self.validate, message) or refusal(_require_random_id, message)) is not None:
            return refused
        return await _call(client, self._url, self.fields(message))

    async def answer_press(self, client: HttpClient, press: Mapping[str, str]) -> SendResult:
        """One messages.sendMessageEventAnswer call for a press (`press_answer`), which stops the
        spinner on the user's button. The answer reads like messages.send's: `{"response": 1}` or an
        error (100 for an unknown, expired or already answered press: not worth retrying)."""
        return await _call(client, self._answer_url, {"access_token": self._token, "v": self._version, **press})


async def _call(client: HttpClient, url: str, fields: Mapping[str, str]) -> SendResult:
    """One VK API method call (form-encoded), its answer classified."""
    response = await post_or_failure(client.post(url, data=fields))
    if isinstance(response, SendResult):
        return response
    return classify(response.status_code, json_object(response))


def press_answer(payload: Mapping[str, Any]) -> dict[str, str] | None:
    """The messages.sendMessageEventAnswer parameters that answer a `message_event` (a button press),
    or None for any other event. The press's own `event_id` is in the object, not the envelope's
    `event_id` (which names the Callback API delivery). No `event_data`: the answer only stops the
    spinner, as the Telegram answer does."""
    obj = payload.get("object")
    if payload.get("type") != "message_event" or not isinstance(obj, Mapping):
        return None
    event_id, user_id, peer_id = obj.get("event_id"), obj.get("user_id"), obj.get("peer_id")
    if not (isinstance(event_id, str) and event_id) or not all(type(number) is int for number in (user_id, peer_id)):
        return None
    return {"event_id": event_id, "user_id": str(user_id), "peer_id": str(peer_id)}


def keyboard(buttons: tuple[tuple[str, str], ...], send_id: str | None = None) -> dict[str, Any]:
    """An inline keyboard of callback buttons, one per row (pressing one sends a `message_event`)."""
    rows = [
        [{"action": {"type": "callback", "label": label, "payload": _button_payload(data, send_id)}}]
        for label, data in buttons
    ]
    return {"one_time": False, "inline": True, "buttons": rows}


def _button_payload(data: str, send_id: str | None) -> str:
    payload = {"cmd": data} if send_id is None else {"cmd": data, "sid": send_id}
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":"))


def classify(status: int, body: Mapping[str, Any]) -> SendResult:
    """Map a messages.send answer (HTTP 200 either way) to a SendResult; see `_ERRORS` for the codes.

    Auth and configuration errors (5, 7, 15, 27, 100, 911, 914, …) are REJECTED: retrying will not
    help. 14 (captcha) is REJECTED too: a community token cannot solve one, so something is wrong
    with the sending pattern and a person has to look.
    """
    if status != 200:
        return SendResult(ok=False, error_class=TRANSIENT, error=f"HTTP {status}")
    if isinstance(error := body.get("error"), Mapping):
        code = error.get("error_code")
        text = f"{code}: {error.get('error_msg') or 'error'}"
        if code == 14:
            hint = "captcha required: VK distrusts this sending pattern"
            return SendResult(ok=False, error_class=REJECTED, error=f"{text} ({hint})")
        error_class, retry_after = _ERRORS.get(code, (REJECTED, None)) if isinstance(code, int) else (TRANSIENT, None)
        return SendResult(ok=False, error_class=error_class, error=text, retry_after=retry_after)
    response = body.get("response")
    if isinstance(response, int) and not isinstance(response, bool):
        return SendResult(ok=True, provider_message_id=str(response))
    return SendResult(ok=False, error_class=TRANSIENT, error="garbled answer: neither response nor error")


def verify_webhook(payload: Mapping[str, Any], secret: str, group_id: int | None = None) -> bool:
    """True when the event's `secret` field equals ours (constant time) and, if `group_id` is given,
    the event is for that community. An empty configured secret verifies nothing."""
    received = payload.get("secret")
    if not secret or not isinstance(received, str):
        return False
    if group_id is not None and payload.get("group_id") != group_id:
        return False
    return hmac.compare_digest(received.encode(), secret.encode())


def confirmation_answer(payload: Mapping[str, Any], code: str) -> str | None:
    """The body to answer a `confirmation` event with (the community's confirmation code), else None.

    VK sends it once when the server address is added; answer it before `verify_webhook`: whether it
    carries the secret is unconfirmed, and the code is meant to be echoed anyway.
    """
    return code if payload.get("type") == "confirmation" else None


def event_key(payload: Mapping[str, Any]) -> str:
    """The dedup key of an event: its `event_id`. Raises ValueError when it is missing."""
    event_id = payload.get("event_id")
    if not event_id:
        raise ValueError("VK callback without event_id")
    return str(event_id)


def parse_event(payload: Mapping[str, Any], received_at: datetime | None = None) -> list[CallbackEvent]:
    """One Callback API event → one CallbackEvent (address = the user's id as a string).

    - `message_allow` → OPT_IN (reason and `ref` carry the `key` from the allow link);
      `message_deny` → OPT_OUT.
    - `group_join` → JOINED (reason carries join_type: joining is not asking for messages);
      `group_leave` → OPT_OUT, reason "left" when `self` = 1, "removed by an admin" when 0.
    - `message_event` (a callback button press) → CLICKED, reason = the payload's `cmd`, send_id = its
      `sid` (our keyboards put both there). VK reports only the conversation_message_id, so the
      provider id stays None.
    - `message_new` whose text is "стоп"/"stop" (any case, surrounding punctuation ignored) → OPT_OUT.
    - anything else → IGNORED, reason = the event type. Unknown fields are ignored.
    Events without a timestamp of their own get `received_at` (default: now).
    """
    key = event_key(payload)
    now = received_at or datetime.now(UTC)
    kind_name = str(payload.get("type") or "")
    obj = payload.get("object") if isinstance(payload.get("object"), Mapping) else {}
    user = obj.get("user_id")
    if kind_name == "message_allow":
        ref = str(obj.get("key") or "") or None
        return [_event(key, OPT_IN, user, now, f"message_allow key={ref or ''}", ref=ref)]
    if kind_name == "message_deny":
        return [_event(key, OPT_OUT, user, now, "message_deny")]
    if kind_name == "group_join":
        return [_event(key, JOINED, user, now, f"group_join ({obj.get('join_type') or 'join'})")]
    if kind_name == "group_leave":
        who = "left" if obj.get("self") in (1, True) else "removed by an admin"
        return [_event(key, OPT_OUT, user, now, f"group_leave: {who}")]
    if kind_name == "message_event":
        payload_data = _json_payload(obj.get("payload"))
        send_id = payload_data.get("sid")
        return [
            _event(key, CLICKED, user, now, str(payload_data.get("cmd") or ""), str(send_id) if send_id else None)
        ]
    if kind_name == "message_new":
        message = obj.get("message") if isinstance(obj.get("message"), Mapping) else obj  # pre-5.103 had no wrapper
        at = utc_from_timestamp(message["date"]) if isinstance(message.get("date"), int | float) else now
        sender = message.get("from_id", message.get("peer_id"))
        text = message.get("text")
        if isinstance(text, str) and text.strip().strip("!.").casefold() in _STOP_WORDS:
            return [_event(key, OPT_OUT, sender, at, f"text:{text.strip()}")]
        return [_event(key, IGNORED, sender, at, "message_new")]
    return [_event(key, IGNORED, user, now, kind_name or "unknown")]


def _event(key: str, kind: str, user: Any, at: datetime, reason: str, send_id: str | None = None, ref: str | None = None) -> CallbackEvent:
    return CallbackEvent(
        event_key=key,
        kind=kind,
        provider_message_id=None,
        address=None if user is None else str(user),
        occurred_at=at,
        reason=reason,
        send_id=send_id,
        ref=ref,
    )


def _json_payload(value: Any) -> Mapping[str, Any]:
    """A button payload: VK delivers it parsed in `message_event`, as a JSON string elsewhere."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return {}
    return value if isinstance(value, Mapping) else {}
