"""Opt-in signals from the inbox: a contact for the person, a consent grant with evidence, and the
trigger occurrence a welcome campaign waits for.

A grant needs an explicit act by the person (152-FZ art. 9, 38-FZ art. 18): Telegram ``/start``,
VK ``message_allow``, an SMS/WhatsApp START keyword. Unblocking a bot or joining a community asks
for no messages, so the parsers report those as ``unblocked``/``joined`` and nothing here grants on
them. The whole signal → effect table is in docs/architecture.md.
"""

from __future__ import annotations

import datetime as dt
import json
from collections import Counter
from dataclasses import dataclass

import sqlalchemy as sa

from orchestrator_assets.consent_decisions import GRANT, fact_time, record_decision
from orchestrator_assets.consent_ledger import ConsentFact
from orchestrator_assets.contact_pii import INDEX_COLUMNS, INDEXED, contact_columns
from orchestrator_assets.webhooks.events import WebhookEvent
from policies.campaigns import TriggerEvent
from policies.consent_purposes import Purpose, SourceKind
from resources.channels.base import CallbackEvent
from resources.links import verify_deep_link
from resources.opstore_schema import contacts, trigger_events
from resources.pii import TenantCipher
from resources.sql import upsert_insert

# The opt-in each provider reports is one act: on Telegram only /start is OPT_IN, on VK only
# message_allow (resources/channels/telegram.py, vk.py).
TRIGGERS = {"telegram": TriggerEvent.TELEGRAM_START, "vk": TriggerEvent.VK_MESSAGE_ALLOW}
# Channels whose opt-in address is the platform id of a person who reached out to us: an unknown
# one becomes a contact that holds nothing but that id (data minimisation: no name, no language).
SELF_IDENTIFYING = {"telegram": "telegram_chat_id", "vk": "vk_user_id"}


@dataclass(frozen=True)
class Origin:
    """Where an opt-in came from: the inbox row (the evidence), its provider and consent channel."""

    inbox_id: int
    provider: str
    channel: str


def apply_opt_in(
    conn: sa.Connection,
    cipher: TenantCipher,
    origin: Origin,
    event: CallbackEvent,
    known_contact: int | None,
    now: dt.datetime,
    tally: Counter,
    webhook_events: list[WebhookEvent] | None = None,
) -> None:
    """Grant ``origin.channel`` to the person behind ``event`` and record its trigger occurrence.

    The person is ``known_contact`` (found by address), else the contact a signed deep-link token in
    ``event.ref`` names (the chat is bound to it when it has none yet), else, on Telegram and VK, a
    new contact ``<channel>:<id>``. An opt-in from an unknown phone (a START keyword) is only tallied.

    A grant dated beyond the allowed clock skew raises ``FutureDatedGrant`` before anything is
    written: no contact, no consent, no trigger occurrence.
    """
    tenant = cipher.tenant
    fact_time(GRANT, event.occurred_at, now)
    contact_id, how = known_contact, "known"
    if contact_id is None:
        contact_id, how = _newcomer(conn, cipher, origin.channel, event, now)
    if contact_id is None:
        tally["opt_in_unknown_contact"] += 1
        return
    tally[f"opt_in_contact_{how}"] += 1
    detail = json.dumps({"provider": origin.provider, "event": event.event_key, "kind": event.kind, "reason": event.reason, "contact": how}, ensure_ascii=False)
    grant = ConsentFact(
        contact_id, origin.channel, Purpose.ADVERTISING, GRANT, SourceKind.BOT_COMMAND if origin.provider == "telegram" else SourceKind.PROVIDER_WEBHOOK,
        f"inbox:{origin.inbox_id}", event.occurred_at, origin=f"{origin.provider}:{event.kind}", withdrawal_channel=origin.channel,
        identity={"address": event.address} if event.address else {}, detail=detail,
    )  # fmt: skip
    if record_decision(conn, tenant, grant, now, webhook_events):
        tally["consents_granted"] += 1
    else:
        tally["opt_in_no_state_change"] += 1
    if (trigger := TRIGGERS.get(origin.provider)) is not None:
        row = {
            "tenant": tenant,
            "event": str(trigger),
            "contact_id": contact_id,
            "inbox_id": origin.inbox_id,
            "occurred_at": event.occurred_at,
            "recorded_at": now,
        }
        tally[f"trigger:{trigger}"] += conn.execute(upsert_insert(conn, trigger_events).on_conflict_do_nothing(), [row]).rowcount


def _newcomer(conn: sa.Connection, cipher: TenantCipher, channel: str, event: CallbackEvent, now: dt.datetime) -> tuple[int | None, str]:
    """The contact for an opt-in from an address no contact has: (id, "bound" | "created") or (None, "").

    The id is sealed like every address; the new contact's external id names the channel and the
    id's blind index, so the same person opting in twice is one contact and no id is in clear text.
    """
    tenant, field = cipher.tenant, SELF_IDENTIFYING.get(channel)
    # Positive ids only: a negative Telegram chat id is a group, not a person.
    if field is None or not event.address or not event.address.isdigit():
        return None, ""
    address = int(event.address)
    named = verify_deep_link(tenant, event.ref) if event.ref else None
    if named is not None:
        index_column = INDEX_COLUMNS[INDEXED[field]]
        row = conn.execute(
            sa.select(contacts.c.data_key, contacts.c.pii).where(contacts.c.tenant == tenant, contacts.c.id == named, index_column.is_(None))
        ).first()
        if row is not None and row.data_key is not None:
            sealed = contact_columns(cipher, row.data_key, {**cipher.open(row.data_key, row.pii), field: address})
            bind = sa.update(contacts).where(contacts.c.tenant == tenant, contacts.c.id == named, index_column.is_(None))
            if conn.execute(bind.values({**sealed, "updated_at": now})).rowcount:
                return named, "bound"
        # The named contact already has another chat: never move a person's data to a new chat on
        # the strength of a link that may have been forwarded; the newcomer gets a contact of its own.
    key = cipher.new_contact_key()
    sealed = contact_columns(cipher, key, {field: address})
    external_id = f"{channel}:{sealed[f'{INDEXED[field]}_bidx']}"
    insert = upsert_insert(conn, contacts).values(tenant=tenant, external_id=external_id, data_key=key, created_at=now, updated_at=now, **sealed)
    upsert = insert.on_conflict_do_update(
        index_elements=[contacts.c.tenant, contacts.c.external_id], set_={"data_key": key, **sealed, "updated_at": now}
    )
    return conn.execute(upsert.returning(contacts.c.id)).scalar_one(), "created"
