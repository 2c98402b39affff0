"""One consent decision (a grant or a withdrawal) recorded as proof and applied to the current state.

Every writer outside the CSV import goes through ``record_decision``: delivery processing (opt-ins,
opt-outs, complaints) and the send path (a provider calling a recipient unreachable). The fact is
appended to ``consent_events`` (unique, so a re-processed callback logs it once) and ``consents``
then moves only forward in time (``consent_state_upsert``): a decision older than the one the state
rests on — a callback processed late, a retried row — stays on record but changes nothing, and a
withdrawal from the same moment as a grant wins. That holds for a contact who never granted the
channel too: their withdrawal is stored as the state, so an older grant arriving later finds it.
"""

from __future__ import annotations

import datetime as dt

import sqlalchemy as sa

from orchestrator_assets.imports.store import PURPOSE, consent_state_upsert
from orchestrator_assets.webhooks.events import WebhookEvent, consent_event
from resources.opstore_schema import consent_events, consents
from resources.sql import upsert_insert

GRANT, WITHDRAW = "grant", "withdraw"
STATUS = {GRANT: "granted", WITHDRAW: "withdrawn"}


def record_decision(
    conn: sa.Connection,
    tenant: str,
    contact_id: int,
    channel: str,
    action: str,
    source: str,
    evidence: str,
    occurred_at: dt.datetime,
    now: dt.datetime,
    webhook_events: list[WebhookEvent] | None = None,
) -> bool:
    """Log the fact and apply it; True when the channel's status changed (granted ↔ withdrawn), which
    is then announced in ``webhook_events`` (consent.granted / consent.withdrawn)."""
    fact = {
        "tenant": tenant,
        "contact_id": contact_id,
        "channel": channel,
        "purpose": PURPOSE,
        "action": action,
        "source": source,
        "evidence": evidence,
        "occurred_at": occurred_at,
        "recorded_at": now,
    }
    conn.execute(upsert_insert(conn, consent_events).on_conflict_do_nothing(), [fact])
    subject = sa.and_(consents.c.tenant == tenant, consents.c.contact_id == contact_id, consents.c.channel == channel, consents.c.purpose == PURPOSE)
    before = conn.execute(sa.select(consents.c.status).where(subject)).scalar()
    state = {
        "tenant": tenant,
        "contact_id": contact_id,
        "channel": channel,
        "purpose": PURPOSE,
        "status": STATUS[action],
        "source": source,
        "evidence": evidence,
        "granted_at": occurred_at if action == GRANT else None,
        "withdrawn_at": occurred_at if action == WITHDRAW else None,
        "updated_at": now,
    }
    applied = conn.execute(consent_state_upsert(conn).returning(consents.c.id), state).first() is not None
    # Only granted ↔ withdrawn counts: a first withdrawal of a never-granted channel allowed nothing before.
    changed = applied and (before != "granted" if action == GRANT else before == "granted")
    if changed and webhook_events is not None:
        webhook_events.append(consent_event(action, tenant, contact_id, channel, PURPOSE, source, occurred_at))
    return changed
