"""Callback parsers by source: the gateway and the delivery processor share them.

Besides the providers, the product itself is a source: one-click unsubscribe requests
(RFC 8058) land in the same inbox as provider callbacks and are processed the same way.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

from resources.channels import mailgun, telegram
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


PARSERS: dict[str, Callable[[dict], list[CallbackEvent]]] = {
    "telegram": telegram.parse_update,
    "mailgun": mailgun.parse_event,
    UNSUBSCRIBE: parse_unsubscribe,
}

# Which channel each source's consent changes apply to.
PROVIDER_CHANNELS = {"telegram": "telegram", "mailgun": "email", UNSUBSCRIBE: "email"}
