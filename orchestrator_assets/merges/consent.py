"""A merge's consent facts: the survivor takes the stricter state of the two, per channel × purpose.

The consent ledger is append-only and each contact's facts stay on the contact that gave them:
the merged contact's history stays on its tombstone (its chain untouched), where
``contact_merges`` joins it to the survivor's. Where the merged contact's derived state is
stricter, or the survivor has none, one fact is appended to the survivor through
``consent_ledger.append`` (source kind ``merge``, ref ``merge:<id>``), citing the merged contact's
deciding event in ``detail`` and copying its dates, origin and text version:

* a withdrawal on either side stays a withdrawal: appended after the survivor's grant, it ends it
  whatever either claims as its time (the ledger's ranking rule);
* a grant only fills a subject the survivor had no decision on; it never overrides a withdrawal.

The identifying evidence (ip, chat id) is not copied: it is sealed with the merged contact's key
and stays on its event, so erasing that person still shreds it.

Undoing the merge appends nothing and edits nothing: the ledger's derived state
(``consent_ledger.consent_state``) leaves out the facts of a merge whose ``undone_at`` is set, so
the survivor's state is exactly what it was before, unless a newer fact of its own has come in
since, which then stands.
"""

from __future__ import annotations

import datetime as dt

import sqlalchemy as sa

from orchestrator_assets.consent_ledger import GRANT, WITHDRAW, ConsentFact, append, consent_state, merge_ref
from policies.consent_purposes import Purpose, SourceKind
from resources.opstore_schema import consent_events


def _deciding_events(conn: sa.Connection, tenant: str, contact_id: int, now: dt.datetime) -> dict[tuple[str, str], sa.RowMapping]:
    """The event that decides each of the contact's subjects (channel, purpose) at ``now``."""
    state = consent_state(now)
    deciding = sa.select(state.c.event_id).where(state.c.tenant == tenant, state.c.contact_id == contact_id)
    rows = conn.execute(sa.select(consent_events).where(consent_events.c.id.in_(deciding))).mappings()
    return {(row["channel"], row["purpose"]): row for row in rows}


def _carried(ours: sa.RowMapping | None, theirs: sa.RowMapping) -> bool:
    """Whether the merged contact's decision is stricter than, or fills in for, the survivor's."""
    if theirs["action"] == WITHDRAW:
        return ours is None or ours["action"] == GRANT
    return ours is None


def merge_consents(conn: sa.Connection, tenant: str, survivor_id: int, merged_id: int, merge_id: int, now: dt.datetime) -> list[tuple[str, str, str]]:
    """Append the facts that give the survivor the stricter state; ``(channel, purpose, action)`` of each."""
    survivor, merged = _deciding_events(conn, tenant, survivor_id, now), _deciding_events(conn, tenant, merged_id, now)
    facts = [
        ConsentFact(
            survivor_id, channel, Purpose(purpose), theirs["action"], SourceKind.MERGE, merge_ref(merge_id), theirs["occurred_at"],
            origin=theirs["origin"], text_version=theirs["text_version"], valid_until=theirs["valid_until"],
            withdrawal_channel=theirs["withdrawal_channel"], detail=f"consent event {theirs['id']} of merged contact {merged_id}",
        )
        for (channel, purpose), theirs in sorted(merged.items())
        if _carried(survivor.get((channel, purpose)), theirs)
    ]  # fmt: skip
    append(conn, tenant, facts, now)
    return [(fact.channel, str(fact.purpose), fact.action) for fact in facts]
