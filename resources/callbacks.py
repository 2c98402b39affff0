"""Callback parsers by source: the gateway and the delivery processor share them.

The inbox stores one row per provider event (a SendGrid batch or an SMS.ru ``data[]`` post is
split by the gateway), so each parser here takes one stored payload. Besides the providers, the
product itself is a source: one-click unsubscribe requests (RFC 8058) land in the same inbox.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

from resources.channels import d360, greenapi, mailgun, sendgrid, smsc, smsru, telegram, twilio, vk
from resources.channels.base import CallbackEvent

UNSUBSCRIBE = "unsubscribe"


def unsubscribe_payload(contact_id: int, campaign: str, method: str, occurred_at: dt.datetime) -> dict:
    return {"contact_id": contact_id, "campaign": campaign, "method": method, "occurred_at": occurred_at.isoformat()}


def unsubscribe_event_key(contact_id: int, campaign: str) -> str:
    return f"{contact_id}:{campaign}"


def parse_unsubscribe(payload: dict) -> list[CallbackEvent]:
    """An unsubscribe request names the contact directly (``address`` = ``contact:<id>``)."""
    return [
        CallbackEvent(
            event_key=unsubscribe_event_key(payload["contact_id"], payload["campaign"]),
            kind="opt_out",
            provider_message_id=None,
            address=f"contact:{payload['contact_id']}",
            occurred_at=dt.datetime.fromisoformat(payload["occurred_at"]),
            reason=f"list-unsubscribe ({payload['method']}) from campaign {payload['campaign']}",
        )
    ]


CLICKS = "clicks"


def click_payload(link: dict, human: bool, user_agent: str, occurred_at: dt.datetime) -> dict:
    return {"link": link, "human": human, "user_agent": user_agent[:256], "occurred_at": occurred_at.isoformat()}


def parse_click(payload: dict) -> list[CallbackEvent]:
    """A tracked-link hit: a click on the ledger row the link names; link scanners and HEAD
    requests are recorded but not counted (honest statistics)."""
    link = payload["link"]
    return [
        CallbackEvent(
            event_key=f"click:{link['k']}:{link['c']}:{payload['occurred_at']}",
            kind="clicked" if payload["human"] else "ignored",
            provider_message_id=None,
            address=None,
            occurred_at=dt.datetime.fromisoformat(payload["occurred_at"]),
            reason=link["url"] if payload["human"] else f"non-human: {payload['user_agent']}",
            ledger_key=(link["k"], link["s"], link["c"], link["ch"]),
        )
    ]


# A parser takes the stored payload and, optionally, when the gateway received it: events without a
# timestamp of their own (a Telegram button press, VK, Twilio) are then dated by their arrival, not
# by whenever they happen to be processed, and consent decisions are ordered by those dates.
Parser = Callable[[dict, dt.datetime | None], list[CallbackEvent]]
PARSERS: dict[str, Parser] = {
    "telegram": telegram.parse_update,
    "mailgun": lambda payload, received_at=None: mailgun.parse_event(payload),
    "sendgrid": lambda event, received_at=None: sendgrid.parse_events([event]),
    "vk": vk.parse_event,
    "smsc": smsc.parse_status,
    "smsru": smsru.parse_callback,
    "twilio": twilio.parse_callback,
    "d360": lambda payload, received_at=None: d360.parse_webhook(payload),
    "greenapi": lambda payload, received_at=None: greenapi.parse_webhook(payload),
    UNSUBSCRIBE: lambda payload, received_at=None: parse_unsubscribe(payload),
    CLICKS: lambda payload, received_at=None: parse_click(payload),
}

_CHANNELS = {
    "telegram": "telegram",
    "mailgun": "email",
    "sendgrid": "email",
    "vk": "vk",
    "smsc": "sms",
    "smsru": "sms",
    "d360": "whatsapp",
    "greenapi": "whatsapp",
    UNSUBSCRIBE: "email",
}


def consent_channel(provider: str, payload: dict) -> str:
    """The channel a source's consent changes apply to (Twilio carries both SMS and WhatsApp)."""
    if provider == CLICKS:
        return payload["link"]["ch"]
    return _consent_channel(provider, payload)


def _consent_channel(provider: str, payload: dict) -> str:
    if provider == "twilio":
        parties = f"{payload.get('From', '')} {payload.get('To', '')}"
        return "whatsapp" if "whatsapp:" in parties else "sms"
    return _CHANNELS[provider]
