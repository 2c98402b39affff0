"""Consent decisions (grants and withdrawals): how each is dated, logged as proof and applied to the
current state. Every writer of consent state goes through this module: the CSV import
(``imports.store.record_consents``, in batches) and ``record_decision`` for everything else —
delivery processing (opt-ins, opt-outs, complaints), the send path (a provider calling a recipient
unreachable) and HLR lookups (a dead number).

The rule, in three parts:

1. **Dating** (``fact_time``): a decision dated more than ``policies.consent_evidence.MAX_CLOCK_SKEW``
   ahead of our clock is refused as a grant (``FutureDatedGrant``) and, as a withdrawal, recorded at
   our own time: an opt-out is honoured at once, whatever the sender's clock says.
2. **Proof**: the fact is appended to ``consent_events`` (unique, so a re-processed callback or a
   re-imported file logs it once). Only a newly logged fact touches the state; one already on record
   was applied when it was first logged.
3. **State** (``consent_state_upsert``): ``consents`` holds one row per (contact, channel, purpose).
   A fact counts from the moment it names, but never later than when we recorded it, so no date
   outranks decisions we learn of afterwards. A grant changes the state only when it is newer than
   the fact the state rests on (an old CRM export or a late callback cannot resurrect a withdrawn
   consent). A withdrawal always ends a grant, whenever either claims to have happened: we cannot
   tell a stale opt-out from a real one, and sending on doubt is what consent law forbids; the
   person can grant again. A withdrawal of a never-granted channel is stored as the state too, so
   an older grant arriving later finds it.
"""

from __future__ import annotations

import datetime as dt

import sqlalchemy as sa

from orchestrator_assets.webhooks.events import WebhookEvent, consent_event
from policies.consent_evidence import future_dated
from resources.opstore_schema import consent_events, consents
from resources.sql import upsert_insert

PURPOSE = "marketing"
GRANT, WITHDRAW = "grant", "withdraw"
STATUS = {GRANT: "granted", WITHDRAW: "withdrawn"}


class FutureDatedGrant(ValueError):
    """A grant dated too far ahead of our clock to be taken as proof; the message says by how much."""


def fact_time(action: str, occurred_at: dt.datetime, now: dt.datetime) -> dt.datetime:
    """The time a decision is recorded with: its own, unless that lies beyond the allowed clock skew.

    Raises ``FutureDatedGrant`` for such a grant; such a withdrawal is dated ``now`` (the source's
    time stays in the evidence it points to, e.g. the inbox row). A naive time is UTC: the store
    keeps UTC, and SQLite hands it back without the offset (e.g. a send's ``finished_at``).
    """
    if occurred_at.tzinfo is None:
        occurred_at = occurred_at.replace(tzinfo=dt.UTC)
    reason = future_dated(occurred_at, now)
    if reason is None:
        return occurred_at
    if action == GRANT:
        raise FutureDatedGrant(f"grant {reason}")
    return now


def _earlier(a, b):
    """The earlier of two timestamp expressions (SQLite has no ``LEAST``)."""
    return sa.case((a < b, a), else_=b)


def _effective(status, granted_at, withdrawn_at, recorded_at):
    """When a consent state took effect: the time its fact names, capped at when we recorded it."""
    return _earlier(sa.case((status == "granted", granted_at), else_=withdrawn_at), recorded_at)


def consent_state_upsert(conn: sa.Connection):
    """Upsert of the current consent state by the rule in the module docstring (part 3).

    Rows carry ``updated_at`` = the recording time of the fact, so the ``WHERE`` can compare what a
    stored state and a new fact are worth without a second query.
    """
    insert = upsert_insert(conn, consents)
    new, c = insert.excluded, consents.c
    new_at = _effective(new.status, new.granted_at, new.withdrawn_at, new.updated_at)
    current_at = _effective(c.status, c.granted_at, c.withdrawn_at, c.updated_at)
    withdrawal = new.status == "withdrawn"
    return insert.on_conflict_do_update(
        index_elements=[c.tenant, c.contact_id, c.channel, c.purpose],
        set_={
            "status": new.status,
            "source": new.source,
            "evidence": new.evidence,
            "granted_at": sa.func.coalesce(new.granted_at, c.granted_at),
            "withdrawn_at": sa.func.coalesce(new.withdrawn_at, c.withdrawn_at),
            "updated_at": new.updated_at,
        },
        where=sa.or_(new_at > current_at, sa.and_(withdrawal, sa.or_(c.status == "granted", new_at == current_at))),
    )


def state_row(fact: dict) -> dict:
    """The ``consents`` row a logged ``consent_events`` fact asks for."""
    action = fact["action"]
    return {
        "tenant": fact["tenant"],
        "contact_id": fact["contact_id"],
        "channel": fact["channel"],
        "purpose": fact["purpose"],
        "status": STATUS[action],
        "source": fact["source"],
        "evidence": fact["evidence"],
        "granted_at": fact["occurred_at"] if action == GRANT else None,
        "withdrawn_at": fact["occurred_at"] if action == WITHDRAW else None,
        "updated_at": fact["recorded_at"],
    }


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
    is then announced in ``webhook_events`` (consent.granted / consent.withdrawn).

    Raises ``FutureDatedGrant`` (nothing written) for a grant dated beyond the allowed clock skew.
    """
    fact = {
        "tenant": tenant,
        "contact_id": contact_id,
        "channel": channel,
        "purpose": PURPOSE,
        "action": action,
        "source": source,
        "evidence": evidence,
        "occurred_at": fact_time(action, occurred_at, now),
        "recorded_at": now,
    }
    log = upsert_insert(conn, consent_events).values(fact).on_conflict_do_nothing().returning(consent_events.c.id)
    if conn.execute(log).first() is None:
        return False  # already on record: it was applied when first logged
    subject = sa.and_(consents.c.tenant == tenant, consents.c.contact_id == contact_id, consents.c.channel == channel, consents.c.purpose == PURPOSE)
    before = conn.execute(sa.select(consents.c.status).where(subject)).scalar()
    applied = conn.execute(consent_state_upsert(conn).returning(consents.c.id), state_row(fact)).first() is not None
    # Only granted ↔ withdrawn counts: a first withdrawal of a never-granted channel allowed nothing before.
    changed = applied and (before != "granted" if action == GRANT else before == "granted")
    if changed and webhook_events is not None:
        webhook_events.append(consent_event(action, tenant, contact_id, channel, PURPOSE, source, fact["occurred_at"]))
    return changed
