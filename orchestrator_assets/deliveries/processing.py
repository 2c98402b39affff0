"""Turning inbox rows (verified provider callbacks) into delivery states, consent changes and events.

Every step is idempotent, because a processing run may die and be re-run over the same rows:
statuses only advance by rank, consent events are unique facts, and warehouse events are keyed
by the provider's own event id (in its stored form, ``resources/event_keys.py``: some ids name the
recipient, so warehouse events, tenants' webhook events and consent evidence carry its keyed hash).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from collections import Counter
from dataclasses import dataclass, field

import sqlalchemy as sa

from orchestrator_assets.consent_decisions import WITHDRAW, FutureDatedGrant, record_decisions
from orchestrator_assets.consent_ledger import ConsentFact
from orchestrator_assets.deliveries.custom_events import apply_custom_event
from orchestrator_assets.contact_pii import CHANNEL_INDEX, find_contact_id
from orchestrator_assets.deliveries.opt_ins import Origin, apply_opt_in
from orchestrator_assets.delivery_status import RANKS, advances
from orchestrator_assets.provider_ids import stored_id
from orchestrator_assets.reachability import apply_hlr_callback
from orchestrator_assets.webhooks.events import WebhookEvent, message_event
from resources import warehouse as wh
from policies.consent_purposes import Purpose, SourceKind
from resources.callbacks import CLICKS, PARSERS, UNSUBSCRIBE, consent_channel
from resources.channels.base import JOINED, OPT_IN, UNBLOCKED, CallbackEvent
from resources.channels.greenapi import SENDER_BLOCKED
from resources.custom_events import EVENTS
from resources.event_keys import event_key_secret, stored_event_key
from resources.inbox_payloads import open_payload
from resources.opstore_schema import blocked_senders, contacts, deliveries, sends
from resources.pii import TenantCipher, tenant_cipher
from resources.sql import upsert_insert

STATUS_KINDS = set(RANKS) - {wh.SENT}
OPT_OUT_KINDS = {"opt_out", wh.UNSUBSCRIBED, wh.COMPLAINED}
RECORDED_ONLY_KINDS = {UNBLOCKED, JOINED}  # authentic, but no one asked for messages: no consent change
ALL_CHANNELS = ("telegram", "email", "vk", "sms", "whatsapp")


@dataclass
class Batch:
    events: list[tuple] = field(default_factory=list)  # warehouse rows
    tally: Counter = field(default_factory=Counter)
    processed_ids: list[int] = field(default_factory=list)
    retry: dict[int, str] = field(default_factory=dict)  # inbox id -> why it must be tried again
    webhook_events: list[WebhookEvent] = field(default_factory=list)  # for the tenant's webhook outbox


def _find_send(conn: sa.Connection, cipher: TenantCipher, provider: str, event: CallbackEvent):
    """The ledger row an event is about; by provider id in the form the ledger stored it."""
    if event.ledger_key:
        campaign, step, contact_id, channel = event.ledger_key
        condition = sa.and_(
            sends.c.campaign == campaign, sends.c.step == step, sends.c.contact_id == contact_id, sends.c.channel == channel
        )
    elif event.send_id:
        condition = sends.c.send_id == event.send_id
    elif event.provider_message_id:
        stored = stored_id(cipher, provider, event.provider_message_id)
        condition = sa.and_(sends.c.provider == provider, sends.c.provider_message_id == stored)
    else:
        return None
    return conn.execute(sa.select(sends).where(sends.c.tenant == cipher.tenant, condition)).first()


def _find_contact_id(conn: sa.Connection, cipher: TenantCipher, channel: str, event: CallbackEvent, send) -> int | None:
    """The contact an event is about: its send's, the one our unsubscribe link names, or the one
    whose address on the channel is the event's (by blind index: addresses are sealed)."""
    if send is not None:
        return send.contact_id
    if not event.address:
        return None
    if event.address.startswith("contact:"):  # our own unsubscribe links name the contact
        contact_id = int(event.address.removeprefix("contact:"))
        return conn.execute(sa.select(contacts.c.id).where(contacts.c.tenant == cipher.tenant, contacts.c.id == contact_id)).scalar()
    return find_contact_id(conn, cipher, CHANNEL_INDEX[channel], event.address)


def _advance_delivery(conn: sa.Connection, tenant: str, send, event: CallbackEvent, now: dt.datetime) -> bool:
    current = conn.execute(sa.select(deliveries.c.status_rank).where(deliveries.c.send_id == send.send_id)).scalar()
    if not advances(current, event.kind):
        return False
    values = {"status": event.kind, "status_rank": RANKS[event.kind], "reason": event.reason, "last_event_at": event.occurred_at, "updated_at": now}
    statement = upsert_insert(conn, deliveries).values(send_id=send.send_id, tenant=tenant, **values)
    conn.execute(statement.on_conflict_do_update(index_elements=[deliveries.c.send_id], set_=values))
    return True


def withdraw_consents(
    conn: sa.Connection,
    tenant: str,
    withdrawal: ConsentFact,
    channels: tuple[str, ...],
    now: dt.datetime,
    webhook_events: list[WebhookEvent] | None = None,
    purposes: tuple[Purpose, ...] = (Purpose.ADVERTISING,),
) -> int:
    """Append ``withdrawal`` (its evidence, dated by its source) for each of ``channels`` × ``purposes``;
    returns how many of those consents it ended. Each is announced in ``webhook_events``
    (consent.withdrawn) when the caller passes it. A withdrawal ends a grant on record whatever
    their dates (``orchestrator_assets.consent_ledger``)."""
    facts = [dataclasses.replace(withdrawal, channel=channel, purpose=purpose, action=WITHDRAW) for channel in channels for purpose in purposes]
    return sum(record_decisions(conn, tenant, facts, now, webhook_events)[1])


def source_kind(provider: str) -> SourceKind:
    """How an inbox row's decision reached us: a messenger command, our own unsubscribe link, or a provider."""
    if provider == "telegram":
        return SourceKind.BOT_COMMAND
    return SourceKind.WEB_FORM if provider == UNSUBSCRIBE else SourceKind.PROVIDER_WEBHOOK


def _process_row(
    conn: sa.Connection, cipher: TenantCipher, row, complaint_suppresses_all: bool, now: dt.datetime, batch: Batch, key_secret: bytes
) -> str | None:
    """Apply one inbox row; returns why it must be retried, or None when it is done.

    A status for a message we do not know yet is retried rather than dropped: a fast provider
    can call back before the send's ledger row is finalised with its provider id.
    """
    tenant = cipher.tenant
    if row.provider == EVENTS:  # a tenant's own post (gateway/events.py), not a provider callback
        return apply_custom_event(conn, tenant, row, open_payload(tenant, row.provider, row.event_key, row.payload), now, batch.tally, batch.events)
    parser = PARSERS.get(row.provider)
    if parser is None:
        return f"no parser for provider {row.provider!r}"
    payload = open_payload(tenant, row.provider, row.event_key, row.payload)
    channel = consent_channel(row.provider, payload)
    problem = None
    received_at = row.received_at if row.received_at.tzinfo else row.received_at.replace(tzinfo=dt.UTC)  # SQLite drops tz
    for parsed in parser(payload, received_at):
        event = dataclasses.replace(parsed, event_key=stored_event_key(tenant, row.provider, parsed.event_key, key_secret))
        if event.kind == "ignored":
            batch.tally["non_human_click" if row.provider == CLICKS else "ignored"] += 1
            continue
        if event.kind in RECORDED_ONLY_KINDS:
            batch.tally[f"{event.kind} (no consent change)"] += 1
            continue
        if event.kind == OPT_IN:
            known = _find_contact_id(conn, cipher, channel, event, None)
            apply_opt_in(conn, cipher, Origin(row.id, row.provider, channel), event, known, now, batch.tally, batch.webhook_events)
            continue
        if event.kind == SENDER_BLOCKED:
            values = {"tenant": tenant, "provider": row.provider, "reason": event.reason or "provider blocked the sender", "blocked_at": event.occurred_at}
            conn.execute(upsert_insert(conn, blocked_senders).on_conflict_do_nothing(), [values])
            batch.tally["sender_blocked"] += 1
            continue
        send = _find_send(conn, cipher, row.provider, event)
        if event.kind in OPT_OUT_KINDS:
            contact_id = _find_contact_id(conn, cipher, channel, event, send)
            if contact_id is not None:
                everywhere = event.kind == wh.COMPLAINED and complaint_suppresses_all
                channels = ALL_CHANNELS if everywhere else (channel,)
                withdrawal = ConsentFact(
                    contact_id, channel, Purpose.ADVERTISING, WITHDRAW, source_kind(row.provider), f"inbox:{row.id}", event.occurred_at,
                    origin=f"{row.provider}:{event.kind}", withdrawal_channel=channel,
                    detail=json.dumps({"provider": row.provider, "event": event.event_key, "kind": event.kind, "reason": event.reason}, ensure_ascii=False),
                )  # fmt: skip
                batch.tally["consents_withdrawn"] += withdraw_consents(conn, tenant, withdrawal, channels, now, batch.webhook_events)
        if event.kind not in STATUS_KINDS:
            continue
        if send is None and row.provider == "smsc" and apply_hlr_callback(conn, cipher, event.provider_message_id, payload, now):
            batch.tally["hlr_lookup_result"] += 1  # SMSC reports HLR lookups like deliveries
            continue
        if send is None:
            batch.tally["unknown_message"] += 1
            message = stored_id(cipher, row.provider, event.provider_message_id) or event.send_id or event.ledger_key
            problem = f"{event.kind} for unknown message {message}"
            continue
        advanced = _advance_delivery(conn, tenant, send, event, now)
        if advanced:
            batch.tally[f"status:{event.kind}"] += 1
        batch.events.append(
            (tenant, f"{row.provider}:{event.event_key}", event.kind, send.send_id, send.campaign, send.channel, send.provider,
             send.contact_id, send.provider_message_id or "", event.reason, event.occurred_at)
        )
        if advanced or event.kind == wh.CLICKED:  # a status when it changes; every click
            batch.webhook_events.append(message_event(event.kind, tenant, send, f"{row.provider}:{event.event_key}", event.reason, event.occurred_at))
    return problem


def process_rows(conn: sa.Connection, tenant: str, rows, complaint_suppresses_all: bool, now: dt.datetime) -> Batch:
    """Apply inbox rows within the caller's transaction; returns warehouse events, a tally and the
    rows to retry. Every step is idempotent, so a retried row re-applies harmlessly."""
    batch = Batch()
    cipher, key_secret = tenant_cipher(conn, tenant), event_key_secret()
    for row in rows:
        try:
            problem = _process_row(conn, cipher, row, complaint_suppresses_all, now, batch, key_secret)
        except FutureDatedGrant as exc:  # not applied before its time: retried, then dead-lettered
            batch.tally["grant_dated_in_the_future"] += 1
            problem = f"{row.provider} opt-in not applied: {exc}"
        except (ValueError, KeyError, TypeError, AttributeError) as exc:  # a payload we cannot read (yet)
            problem = f"cannot parse {row.provider} payload: {type(exc).__name__}: {exc}"
        if problem:
            batch.retry[row.id] = problem
        else:
            batch.processed_ids.append(row.id)
    return batch
