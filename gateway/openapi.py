"""What each gateway route takes and answers, in OpenAPI terms.

The routes read the raw request themselves (a signature covers the bytes as sent), so FastAPI
cannot infer their bodies: this module documents them, so ``/docs`` tells an operator what each
provider posts and what it gets back, and schemathesis (``tests/test_gateway_openapi.py``)
generates requests worth sending. The body schemas name the fields the receivers and parsers read
and allow any others, as the providers add fields without notice.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from resources.channels import d360, sendgrid, smsru, telegram, vk

_DETAIL = {"type": "object", "properties": {"detail": {"type": "string"}}, "required": ["detail"]}
_REFUSAL = {"application/json": {"schema": _DETAIL}}
_WHY = {
    400: "Malformed: not JSON / not a form, or no event id (the reason is in `detail`)",
    401: "Not authenticated: the tenant's signature (Standard Webhooks, its events secret) is missing, wrong or too old",
    403: "Not authentic: the provider's secret or signature is missing or wrong",
    404: "Unknown tenant, no account for this provider at the tenant, or an unknown link",
    406: "Signature too old, or its one-time token replayed with another event: no retry can help (Mailgun stops on 406)",
    413: "Body larger than this route's limit (refused while it streams in)",
    422: "Not a valid body for this route (each problem and its path in `detail`)",
    415: "Not an application/x-www-form-urlencoded post, or in a charset that is no text encoding we know",
    503: "Operational store unavailable: retry later (providers do)",
}


def refusals(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """FastAPI ``responses=`` entries for the refusals a route can answer (JSON ``{"detail": …}``)."""
    return {status: {"description": _WHY[status], "content": _REFUSAL} for status in statuses}


def _text(example: str, description: str) -> dict[str, Any]:
    return {"description": description, "content": {"text/plain": {"schema": {"type": "string"}, "example": example}}}


def _json_body(schema: dict[str, Any]) -> dict[str, Any]:
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


def _form_body(required: tuple[str, ...], **fields: dict[str, Any]) -> dict[str, Any]:
    schema = _object(required, **fields)
    return {"requestBody": {"required": True, "content": {"application/x-www-form-urlencoded": {"schema": schema}}}}


def _headers(*names: str) -> dict[str, Any]:
    return {"parameters": [{"name": name, "in": "header", "required": True, "schema": {"type": "string"}} for name in names]}


def _object(required: tuple[str, ...], **properties: Any) -> dict[str, Any]:
    return {"type": "object", "properties": properties} | ({"required": list(required)} if required else {})


_ANY_OBJECT = {"type": "object"}
_STRING, _INTEGER = {"type": "string"}, {"type": "integer"}
_DIGITS = {"type": "string", "pattern": "^[0-9]{1,19}$"}  # a number in a string field
_PHONE = {"type": "string", "pattern": "^[+]?[0-9]{10,15}$"}


def _array(items: dict[str, Any]) -> dict[str, Any]:
    return {"type": "array", "items": items}


def _enum(*values: str) -> dict[str, Any]:
    return {"type": "string", "enum": list(values)}


_TELEGRAM_CHAT = _object(("id",), id=_INTEGER)
_TELEGRAM_UPDATE = _object(
    ("update_id",),
    update_id=_INTEGER,
    message=_object((), message_id=_INTEGER, date=_INTEGER, text=_STRING, chat=_TELEGRAM_CHAT),
    callback_query=_object(
        ("id",),
        id=_STRING,
        data=_STRING,
        message=_object((), message_id=_INTEGER, chat=_TELEGRAM_CHAT),
        **{"from": _object((), id=_INTEGER)},
    ),
    my_chat_member=_object(
        (),
        date=_INTEGER,
        chat=_TELEGRAM_CHAT,
        new_chat_member=_object(("status",), status=_enum("creator", "administrator", "member", "restricted", "left", "kicked")),
    ),
)
_MAILGUN_EVENT = _object(
    ("signature", "event-data"),
    signature=_object(("timestamp", "token", "signature"), timestamp=_DIGITS, token=_STRING, signature=_STRING),
    **{
        "event-data": _object(
            ("id", "event"),
            id=_STRING,
            event=_enum("accepted", "delivered", "failed", "opened", "clicked", "unsubscribed", "complained", "stored"),
            severity=_enum("permanent", "temporary"),
            timestamp={"type": "number"},
            recipient=_STRING,
            url=_STRING,
            message=_object((), headers=_object((), **{"message-id": _STRING})),
            **{"user-variables": _object((), send_id=_STRING), "delivery-status": _object((), code=_INTEGER, message=_STRING)},
        )
    },
)
_SENDGRID_BATCH = _array(
    _object(
        ("event",),
        sg_event_id=_STRING,
        sg_message_id=_STRING,
        event=_enum(
            "processed", "dropped", "delivered", "deferred", "bounce", "open", "click", "spamreport", "unsubscribe", "group_unsubscribe"
        ),
        email=_STRING,
        timestamp=_INTEGER,
        type=_STRING,
        reason=_STRING,
        url=_STRING,
        send_id=_STRING,
    )
)
_VK_EVENT = _object(
    ("type", "group_id"),
    type=_STRING,
    event_id=_STRING,
    group_id=_INTEGER,
    secret=_STRING,
    object=_object((), user_id=_INTEGER, payload=_ANY_OBJECT, event_id=_STRING, peer_id=_INTEGER),  # event_id, peer_id: a button press
)
_D360_VALUE = _object(
    (),
    statuses=_array(
        _object(
            ("id", "status"),
            id=_STRING,
            status=_enum("sent", "delivered", "read", "failed", "deleted"),
            timestamp=_DIGITS,
            recipient_id=_DIGITS,
            errors=_array(_object(("code",), code=_INTEGER, title=_STRING)),
        )
    ),
    messages=_array(_object(("id",), id=_STRING, type=_STRING, timestamp=_DIGITS, text=_object((), body=_STRING), **{"from": _DIGITS})),
)
_D360_WEBHOOK = _object(
    ("entry",),
    object=_STRING,
    entry=_array(_object(("changes",), id=_STRING, changes=_array(_object(("value",), field=_STRING, value=_D360_VALUE)))),
)
_TWILIO_STATUS = _enum(
    "queued", "sending", "sent", "delivered", "undelivered", "failed", "read", "receiving", "received", "accepted", "scheduled", "canceled"
)
_GREENAPI_WEBHOOK = _object(
    ("typeWebhook",),
    typeWebhook=_STRING,
    idMessage=_STRING,
    chatId=_STRING,
    status=_enum("sent", "delivered", "read", "failed", "noAccount", "notInGroup", "yellowCard"),
    description=_STRING,
    timestamp=_INTEGER,
    instanceData=_object((), idInstance=_INTEGER),
    senderData=_object((), chatId=_STRING, sender=_STRING),
    messageData=_object((), typeMessage=_STRING, textMessageData=_object((), textMessage=_STRING)),
)


@dataclass(frozen=True)
class HookDoc:
    """One provider's callback route: ``/hooks/{tenant_id}/<provider>`` (plus ``/{secret}`` when
    the provider signs nothing and the URL carries the secret)."""

    summary: str
    request: dict[str, Any]  # openapi_extra: requestBody (+ header parameters)
    answer: dict[str, Any]  # the 200 response the provider expects
    statuses: tuple[int, ...]  # refusals besides 404, 413 and 503, which every hook can answer
    secret_path: bool = False

    def responses(self, max_body_bytes: int) -> dict[int | str, dict[str, Any]]:
        """The documented answers; 413 names the provider's body limit (``gateway/receivers.py``)."""
        documented = {200: self.answer} | refusals(*sorted({*self.statuses, 404, 413, 503}))
        too_large = f"Body larger than {max_body_bytes:,} bytes, the most this provider posts (refused while it streams in)"
        return documented | {413: documented[413] | {"description": too_large}}


_EMPTY_OK = {"description": "Stored (or already held: a provider retry); empty body"}
_JSON_REFUSALS = (400, 403)
_FORM_REFUSALS = (400, 403, 415)

HOOKS: dict[str, HookDoc] = {
    "telegram": HookDoc(
        "Telegram Bot API update (secret-token header)",
        _json_body(_TELEGRAM_UPDATE) | _headers(telegram.SECRET_HEADER),
        {
            "description": (
                "Stored. A button press (`callback_query`) is answered right here with answerCallbackQuery; other updates get an empty body"
            ),
            "content": {
                "application/json": {
                    "schema": _object(("method", "callback_query_id"), method=_enum("answerCallbackQuery"), callback_query_id=_STRING)
                },
                "text/plain": {"schema": {"type": "string", "maxLength": 0}},
            },
        },
        _JSON_REFUSALS,
    ),
    "mailgun": HookDoc(
        "Mailgun event (HMAC-SHA256 signature in the body, 12-hour window for retries, one-time token)",
        _json_body(_MAILGUN_EVENT),
        _text("ok", "Stored (or a provider retry of an event already held)"),
        (400, 403, 406),
    ),
    "sendgrid": HookDoc(
        "SendGrid Event Webhook batch (ECDSA P-256 signature over timestamp + body)",
        _json_body(_SENDGRID_BATCH) | _headers(sendgrid.SIGNATURE_HEADER, sendgrid.TIMESTAMP_HEADER),
        _EMPTY_OK,
        _JSON_REFUSALS,
    ),
    "vk": HookDoc(
        "VK Callback API event (secret field; `confirmation` is answered with the community's code; "
        "a button press, `message_event`, is answered afterwards with messages.sendMessageEventAnswer)",
        _json_body(_VK_EVENT),
        _text(vk.OK_ANSWER, f"Stored: `{vk.OK_ANSWER}`; for a `confirmation` event, the confirmation code"),
        _JSON_REFUSALS,
    ),
    "smsc": HookDoc(
        "SMSC.ru status callback (md5/sha1 of id:phone:status:password)",
        _form_body(
            ("id", "phone"),
            id=_STRING,
            phone=_PHONE,
            status={"type": "string", "pattern": "^-?[0-9]{1,3}$"},
            err=_DIGITS,
            ts=_DIGITS,
            mes=_STRING,
            md5=_STRING,
            sha1=_STRING,
        ),
        _text("OK", "Stored"),
        _FORM_REFUSALS,
    ),
    "smsru": HookDoc(
        "SMS.ru delivery callback (the URL's last segment is the secret; `data[n]` records)",
        _form_body(("data[0]",), **{"data[0]": _STRING, "data[1]": _STRING}),
        _text(smsru.CALLBACK_ANSWER, f"Stored: `{smsru.CALLBACK_ANSWER}`, the answer SMS.ru requires"),
        (400, 415),
        secret_path=True,
    ),
    "twilio": HookDoc(
        "Twilio status callback or inbound message (X-Twilio-Signature: HMAC-SHA1 of URL + params)",
        _form_body(
            ("MessageSid",),
            MessageSid={"type": "string", "pattern": "^(SM|MM)[0-9a-f]{32}$"},
            MessageStatus=_TWILIO_STATUS,
            SmsStatus=_TWILIO_STATUS,
            From=_STRING,
            To=_STRING,
            Body=_STRING,
            ErrorCode=_DIGITS,
            OptOutType=_enum("STOP", "START", "HELP"),
        )
        | _headers("X-Twilio-Signature"),
        {"description": "Stored; an empty TwiML answer", "content": {"application/xml": {"schema": _STRING, "example": "<Response/>"}}},
        _FORM_REFUSALS,
    ),
    "d360": HookDoc(
        "360dialog WhatsApp webhook (Meta format; custom secret header)",
        _json_body(_D360_WEBHOOK) | _headers(d360.WEBHOOK_SECRET_HEADER),
        _EMPTY_OK,
        _JSON_REFUSALS,
    ),
    "greenapi": HookDoc(
        "GREEN-API webhook (`Authorization: Bearer <webhookUrlToken>`)",
        _json_body(_GREENAPI_WEBHOOK),
        _EMPTY_OK,
        _JSON_REFUSALS,
    ),
}
