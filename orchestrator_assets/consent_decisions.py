"""Consent decisions (grants and withdrawals): how each is dated, appended to the ledger and announced.
Every writer of consent goes through ``record_decisions``: the CSV import
(``imports.store.record_consents``, in batches), delivery processing (opt-ins, opt-outs, complaints),
the send path (a provider calling a recipient unreachable) and HLR lookups (a dead number).

1. **Dating** (``fact_time``): a decision dated more than ``policies.consent_evidence.MAX_CLOCK_SKEW``
   ahead of our clock is refused as a grant (``FutureDatedGrant``) and, as a withdrawal, recorded at
   our own time: an opt-out is honoured at once, whatever the sender's clock says.
2. **Proof**: the fact is appended to the ledger (``consent_ledger.append``), once: a re-processed
   callback or a re-imported file finds it on record.
3. **State** is derived from the ledger (``consent_ledger.consent_state``); a decision that moved a
   subject between granted and not granted is announced as a webhook event.

Contacts created by the same transaction (a bulk import's new contacts) have no state yet: their
decisions go through ``first_decisions`` and ``record_first_decisions``, the same three rules for
whole columns at once.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Sequence

import pandas as pd
import sqlalchemy as sa

from orchestrator_assets.consent_ledger import GRANT, WITHDRAW, ConsentFact, append, first_event_rows, granted_subjects, utc, write_first_events
from orchestrator_assets.webhooks.events import WebhookEvent, consent_event
from policies.consent_evidence import MAX_CLOCK_SKEW, future_dated

__all__ = ["GRANT", "WITHDRAW", "FutureDatedGrant", "fact_time", "record_decision", "first_decisions", "record_decisions", "record_first_decisions"]


class FutureDatedGrant(ValueError):
    """A grant dated too far ahead of our clock to be taken as proof; the message says by how much
    (``position``: which of ``record_first_decisions``' facts it is)."""

    def __init__(self, message: str, position: int | None = None) -> None:
        super().__init__(message)
        self.position = position


def fact_time(action: str, occurred_at: dt.datetime, now: dt.datetime) -> dt.datetime:
    """The time a decision is recorded with: its own, unless that lies beyond the allowed clock skew.

    Raises ``FutureDatedGrant`` for such a grant; such a withdrawal is dated ``now`` (the source's
    time stays in the evidence it points to, e.g. the inbox row). A naive time is UTC.
    """
    occurred_at = utc(occurred_at)
    reason = future_dated(occurred_at, now)
    if reason is None:
        return occurred_at
    if action == GRANT:
        raise FutureDatedGrant(f"grant {reason}")
    return now


def record_decisions(
    conn: sa.Connection, tenant: str, facts: Sequence[ConsentFact], now: dt.datetime, webhook_events: list[WebhookEvent] | None = None
) -> tuple[list[bool], list[bool]]:
    """Date and append ``facts``; returns, per fact, (appended, changed the subject's state).

    Raises ``FutureDatedGrant`` (nothing written) for a grant dated beyond the allowed clock skew.
    A subject whose state moved (granted ↔ not granted) is announced once in ``webhook_events``,
    on the last fact of the batch that concerns it.
    """
    dated = [dataclasses.replace(fact, occurred_at=fact_time(fact.action, fact.occurred_at, now)) for fact in facts]
    contact_ids = {fact.contact_id for fact in dated}
    before = granted_subjects(conn, tenant, contact_ids, now)
    appended = append(conn, tenant, dated, now)
    after = granted_subjects(conn, tenant, contact_ids, now)
    moved = before ^ after
    last = {(f.contact_id, f.channel, str(f.purpose)): i for i, (f, new) in enumerate(zip(dated, appended, strict=True)) if new}
    changed = [last.get(subject) == i and subject in moved for i, subject in enumerate((f.contact_id, f.channel, str(f.purpose)) for f in dated)]
    if webhook_events is not None:
        for fact, did in zip(dated, changed, strict=True):
            if did:
                source = fact.origin or f"{fact.source_kind}:{fact.source_ref}"
                webhook_events.append(consent_event(fact.action, tenant, fact.contact_id, fact.channel, str(fact.purpose), source, fact.occurred_at))
    return appended, changed


def record_decision(conn: sa.Connection, tenant: str, fact: ConsentFact, now: dt.datetime, webhook_events: list[WebhookEvent] | None = None) -> bool:
    """One decision by ``record_decisions``; True when it changed the subject's state."""
    return record_decisions(conn, tenant, [fact], now, webhook_events)[1][0]


@dataclasses.dataclass(frozen=True)
class FirstDecisions:
    """Decisions of contacts created in this transaction, dated and chained (``first_decisions``),
    ready for ``record_first_decisions``."""

    facts: pd.DataFrame
    rows: list[tuple]  # consent_ledger.first_event_rows


def first_decisions(tenant: str, facts: pd.DataFrame, now: dt.datetime) -> FirstDecisions:
    """Date the decisions of new contacts (``facts``: ``consent_ledger.FIRST_EVENT_COLUMNS``) and
    build their chains; writes nothing, so a bulk writer prepares the next batch meanwhile.

    Dated as ``fact_time`` dates one: ``FutureDatedGrant`` names the first grant beyond the allowed
    clock skew (its ``position`` in ``facts``), such a withdrawal is dated ``now``.
    """
    now = utc(now)
    if facts.empty:
        return FirstDecisions(facts, [])
    occurred = facts["occurred_at"].dt.tz_convert("UTC")
    ahead = (occurred - now > MAX_CLOCK_SKEW).to_numpy(dtype=bool)
    grants = (facts["action"] == GRANT).to_numpy(dtype=bool)
    if (ahead & grants).any():
        first = int((ahead & grants).argmax())
        raise FutureDatedGrant(f"grant {future_dated(occurred.iloc[first].to_pydatetime(), now)}", position=first)
    facts = facts.assign(occurred_at=occurred.mask(ahead, pd.Timestamp(now)))
    return FirstDecisions(facts, first_event_rows(tenant, facts, now))


def record_first_decisions(conn: sa.Connection, tenant: str, decisions: FirstDecisions, webhook_events: list[WebhookEvent] | None = None) -> None:
    """Append ``first_decisions``' events and announce them: a new contact has no consent before
    its first decisions, so each grant moves its subject to granted and a withdrawal moves nothing."""
    write_first_events(conn, decisions.rows)
    if webhook_events is None or decisions.facts.empty:
        return
    granted = decisions.facts[decisions.facts["action"] == GRANT]
    for contact_id, channel, purpose, origin, kind, ref, moment in zip(
        granted["contact_id"], granted["channel"], granted["purpose"], granted["origin"], granted["source_kind"], granted["source_ref"], granted["occurred_at"], strict=True
    ):
        source = origin if isinstance(origin, str) and origin else f"{kind}:{ref}"
        webhook_events.append(consent_event(GRANT, tenant, int(contact_id), channel, str(purpose), source, moment.to_pydatetime()))
