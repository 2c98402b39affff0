"""A merge's consent writes: the survivor takes the stricter state of the two, per channel × purpose.

The consent log is append-only and each contact's facts stay with the contact that gave them
(the merged contact's history stays on its tombstone, where ``contact_merges`` joins it to the
survivor's). Where the merged contact's state is stricter or the survivor has none, one fact is
appended to the survivor, with source ``merge:<merge id>`` and the merged contact's fact as
evidence: a withdrawal on either side stays a withdrawal (recorded after the survivor's grant,
so it ends it whatever either claims as its time), and a grant only fills a channel the survivor
had no state on. A grant never overrides a withdrawal.

Undoing the merge voids its facts: the survivor's state is derived again from its own facts
without them, by the same rule that built it (``consent_decisions.consent_state_upsert``), so it
is exactly what it was unless a newer fact has come in since, which then stands.
"""

from __future__ import annotations

import datetime as dt
import json

import sqlalchemy as sa

from orchestrator_assets.consent_decisions import GRANT, WITHDRAW, consent_state_upsert, state_row
from resources.opstore_schema import consent_events, consents
from resources.sql import upsert_insert


def merge_source(merge_id: int) -> str:
    return f"merge:{merge_id}"


def _utc(moment: dt.datetime) -> dt.datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)  # SQLite hands back naive UTC


def _states(conn: sa.Connection, tenant: str, contact_id: int) -> dict[tuple[str, str], sa.RowMapping]:
    rows = conn.execute(sa.select(consents).where(consents.c.tenant == tenant, consents.c.contact_id == contact_id))
    return {(row.channel, row.purpose): row._mapping for row in rows}


def merge_consents(conn: sa.Connection, tenant: str, survivor_id: int, merged_id: int, merge_id: int, now: dt.datetime) -> list[tuple[str, str, str]]:
    """Append the facts that give the survivor the stricter state; ``(channel, purpose, action)`` of each."""
    survivor, merged = _states(conn, tenant, survivor_id), _states(conn, tenant, merged_id)
    appended = []
    for (channel, purpose), theirs in sorted(merged.items()):
        ours = survivor.get((channel, purpose))
        if theirs["status"] == "withdrawn" and (ours is None or ours["status"] == "granted"):
            action, occurred_at = WITHDRAW, theirs["withdrawn_at"]
        elif theirs["status"] == "granted" and ours is None:
            action, occurred_at = GRANT, theirs["granted_at"]
        else:
            continue
        fact = {
            "tenant": tenant,
            "contact_id": survivor_id,
            "channel": channel,
            "purpose": purpose,
            "action": action,
            "source": merge_source(merge_id),
            "evidence": json.dumps({"merge_id": merge_id, "merged_contact_id": merged_id, "merged_contact_source": theirs["source"]}),
            "occurred_at": _utc(occurred_at or now),
            "recorded_at": now,
        }
        conn.execute(upsert_insert(conn, consent_events).values(fact).on_conflict_do_nothing())
        conn.execute(consent_state_upsert(conn), state_row(fact))
        appended.append((channel, purpose, action))
    return appended


def void_merge_consents(conn: sa.Connection, tenant: str, survivor_id: int, merge_id: int, subjects: list[tuple[str, str]]) -> None:
    """Derive the survivor's state on ``subjects`` (channel, purpose) again from its facts, leaving
    out the merge's own: replayed in the order they were recorded, through the rule that wrote them."""
    for channel, purpose in subjects:
        subject = [consents.c.tenant == tenant, consents.c.contact_id == survivor_id, consents.c.channel == channel, consents.c.purpose == purpose]
        conn.execute(sa.delete(consents).where(*subject))
        facts = conn.execute(
            sa.select(consent_events)
            .where(
                consent_events.c.tenant == tenant,
                consent_events.c.contact_id == survivor_id,
                consent_events.c.channel == channel,
                consent_events.c.purpose == purpose,
                consent_events.c.source != merge_source(merge_id),
            )
            .order_by(consent_events.c.id)
        )
        for fact in facts:
            conn.execute(consent_state_upsert(conn), state_row(dict(fact._mapping)))
