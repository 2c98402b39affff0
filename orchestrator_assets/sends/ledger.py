"""The send ledger: every (tenant, campaign, step, contact, channel) is claimed once, then finalised.

A row is claimed (``status='claimed'``, stamped with the claiming run) *before* the provider is
called and finalised (``sent``/``failed``) after. So a re-run sends nothing already finalised,
and a row left ``claimed`` by a run that died mid-request is *ambiguous*: it is held and counted,
never re-sent blindly.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import sqlalchemy as sa

from resources.channels.base import SendResult
from resources.opstore_schema import sends
from resources.sql import upsert_insert

CLAIMED, SENT, FAILED = "claimed", "sent", "failed"


@dataclass(frozen=True)
class LedgerKey:
    campaign: str
    step: str
    contact_id: int
    channel: str


@dataclass(frozen=True)
class Claims:
    """Outcome of claiming: rows this run now owns, rows already final, rows left ambiguous."""

    mine: dict[LedgerKey, str]  # key -> send_id
    already_final: int
    ambiguous: int


def claim(conn: sa.Connection, tenant: str, run_id: str, wanted: Sequence[tuple[LedgerKey, str, str]], now: dt.datetime) -> Claims:
    """Claim ledger rows for ``wanted`` = [(key, provider, address)], skipping those that exist.

    Insert-or-ignore on the ledger key makes the claim atomic per row even when two runs race:
    only one insert wins, and the loser sees a row stamped with another run id.
    """
    if wanted:
        values = [
            {
                "send_id": str(uuid.uuid4()),
                "tenant": tenant,
                "campaign": key.campaign,
                "step": key.step,
                "contact_id": key.contact_id,
                "channel": key.channel,
                "provider": provider,
                "address": address,
                "status": CLAIMED,
                "run_id": run_id,
                "claimed_at": now,
            }
            for key, provider, address in wanted
        ]
        for start in range(0, len(values), 500):
            conn.execute(upsert_insert(conn, sends).on_conflict_do_nothing(), values[start : start + 500])
    campaigns = sorted({key.campaign for key, _, _ in wanted})
    rows = conn.execute(
        sa.select(sends.c.send_id, sends.c.campaign, sends.c.step, sends.c.contact_id, sends.c.channel, sends.c.status, sends.c.run_id).where(
            sends.c.tenant == tenant, sends.c.campaign.in_(campaigns)
        )
    ).all()
    wanted_keys = {key for key, _, _ in wanted}
    mine: dict[LedgerKey, str] = {}
    already_final = ambiguous = 0
    for row in rows:
        key = LedgerKey(row.campaign, row.step, row.contact_id, row.channel)
        if key not in wanted_keys:
            continue
        if row.status == CLAIMED and row.run_id == run_id:
            mine[key] = row.send_id
        elif row.status == CLAIMED:
            ambiguous += 1
        else:
            already_final += 1
    return Claims(mine=mine, already_final=already_final, ambiguous=ambiguous)


def finalise(conn: sa.Connection, outcomes: Iterable[tuple[str, SendResult]], now: dt.datetime) -> None:
    """Record each provider answer on its claimed row (only a still-claimed row changes)."""
    params = [
        {
            "b_send_id": send_id,
            "status": SENT if result.ok else FAILED,
            "provider_message_id": result.provider_message_id,
            "error_class": result.error_class,
            "error": result.error,
            "finished_at": now,
        }
        for send_id, result in outcomes
    ]
    if params:
        statement = (
            sa.update(sends)
            .where(sends.c.send_id == sa.bindparam("b_send_id"), sends.c.status == CLAIMED)
            .values(
                status=sa.bindparam("status"),
                provider_message_id=sa.bindparam("provider_message_id"),
                error_class=sa.bindparam("error_class"),
                error=sa.bindparam("error"),
                finished_at=sa.bindparam("finished_at"),
            )
        )
        conn.execute(statement, params)
