"""What the tests ask of consent: the ledger's derived state, as the send path sees it."""

from __future__ import annotations

import datetime as dt

import sqlalchemy as sa

from orchestrator_assets.consent_ledger import ConsentFact, append, consent_state
from policies.consent_purposes import Purpose, SourceKind

STATUS = {"grant": "granted", "withdraw": "withdrawn"}


def consent_status(engine: sa.Engine, contact_id: int, channel: str, purpose: str = "advertising", now: dt.datetime | None = None) -> str | None:
    """granted | withdrawn (the subject's latest decision) | expired | None (no decision on record)."""
    state = consent_state(now or dt.datetime.now(dt.UTC))
    query = sa.select(state.c.action, state.c.granted).where(state.c.contact_id == contact_id, state.c.channel == channel, state.c.purpose == purpose)
    with engine.connect() as conn:
        row = conn.execute(query).first()
    if row is None:
        return None
    return "expired" if row.action == "grant" and not row.granted else STATUS[row.action]


def granted_rows(now: dt.datetime | None = None) -> sa.Subquery:
    """The granted subjects of every tenant (tenant, contact_id, channel, purpose), for joins in tests."""
    state = consent_state(now or dt.datetime.now(dt.UTC))
    return sa.select(state.c.tenant, state.c.contact_id, state.c.channel, state.c.purpose).where(state.c.granted).subquery()


def record(conn: sa.Connection, tenant: str, contact_id: int, channel: str, action: str, at: dt.datetime, purpose: str = "advertising") -> None:
    """A decision on record as a web form would have left it, through the ledger's one writer."""
    fact = ConsentFact(contact_id, channel, Purpose(purpose), action, SourceKind.WEB_FORM, f"test:{contact_id}:{channel}:{action}", at, origin="form")
    append(conn, tenant, [fact], at)
