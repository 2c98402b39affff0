"""Operators' decisions on ambiguous sends: the way out of ``ambiguous`` that no run takes alone.

A row is ambiguous when its request may have reached a provider that does not drop repeats (or a
run died mid-request), so no run re-sends it. Someone who asked the provider (its dashboard, a
status lookup, the recipient) decides per row:

- ``mark_sent``: the provider has it (with its message id, when known). The row is sent: published
  like any other, so its delivery receipts apply and the funnel counts it.
- ``mark_failed``: it did not go out. The row fails with class ``operator``, final: never retried,
  and a fallback campaign moves on to the contact's next channel.
- ``resend``: a second attempt is explicitly allowed. The row becomes ``resend`` and the next send
  run claims it under the same send id (and dedup id).

Every decision is an append-only ``send_decisions`` row: who, in which run, when, why, and the
ambiguity it resolved. A batch is checked whole before anything is written and applied in the
caller's transaction, so one wrong send id changes nothing.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from orchestrator_assets.provider_ids import stored_id
from orchestrator_assets.sends.ledger import AMBIGUOUS, FAILED, OPERATOR, RESEND, SENT
from orchestrator_assets.tables import markdown_table
from resources.opstore_schema import send_decisions, sends
from resources.pii import tenant_cipher

MARK_SENT, MARK_FAILED = "mark_sent", "mark_failed"  # and RESEND, the ledger status it leads to
DECISIONS = (MARK_SENT, MARK_FAILED, RESEND)
SHOWN_ROWS = 50  # rows listed in a Markdown table; the counts cover all
MAX_OPERATOR = send_decisions.c.operator.type.length
MAX_PROVIDER_ID = sends.c.provider_message_id.type.length


@dataclass(frozen=True)
class DecisionRequest:
    """One entry of the operator's list: a decision for one send, or for every ambiguous send of a campaign."""

    decision: str
    reason: str
    send_id: str | None = None
    campaign: str | None = None
    provider_message_id: str | None = None  # mark_sent of one send: the id the provider confirmed


class DecisionError(ValueError):
    """The decisions cannot be applied as given; ``problems`` are (which entry, why) pairs."""

    def __init__(self, problems: Sequence[tuple[str, str]]):
        self.problems = list(problems)
        super().__init__("; ".join(f"{where}: {why}" for where, why in self.problems))


def ambiguous_sends(conn: sa.Connection, tenant: str, campaign: str | None = None) -> list[sa.Row]:
    """The tenant's ambiguous ledger rows (of one campaign, if given), oldest claim first."""
    query = sa.select(
        sends.c.send_id,
        sends.c.campaign,
        sends.c.step,
        sends.c.channel,
        sends.c.provider,
        sends.c.contact_id,
        sends.c.run_id,
        sends.c.claimed_at,
        sends.c.error,
    ).where(sends.c.tenant == tenant, sends.c.status == AMBIGUOUS)
    if campaign is not None:
        query = query.where(sends.c.campaign == campaign)
    return list(conn.execute(query.order_by(sends.c.claimed_at, sends.c.send_id)))


def ambiguous_check_metadata(rows: Sequence[sa.Row]) -> dict[str, Any]:
    """What the ``no_ambiguous_sends`` check shows: how many, and which (send ids to decide on)."""
    table = markdown_table(
        ["send id", "campaign", "step", "channel", "provider", "contact", "claimed by run", "why ambiguous"],
        [(r.send_id, r.campaign, r.step, r.channel, r.provider, r.contact_id, r.run_id, r.error or "") for r in rows[:SHOWN_ROWS]],
        empty="No ambiguous sends: nothing waits for an operator's decision.",
    )
    return {"ambiguous_in_ledger": len(rows), "ambiguous_sends": table}


def decide(conn: sa.Connection, tenant: str, operator: str, requests: Sequence[DecisionRequest], run_id: str, now: dt.datetime) -> list[dict[str, Any]]:
    """Apply ``requests`` to the tenant's ambiguous rows; returns the recorded decisions.

    Raises DecisionError, having written nothing, when an entry is malformed, names a send that is
    unknown or not ambiguous, names a campaign without ambiguous sends, or targets a send another
    entry already does.
    """
    problems: list[tuple[str, str]] = []
    if not operator.strip() or len(operator.strip()) > MAX_OPERATOR:
        problems.append(("operator", f"say who decides (a name or e-mail, at most {MAX_OPERATOR} characters): it is recorded with every decision"))
    targets: dict[str, tuple[DecisionRequest, sa.Row]] = {}
    for index, request in enumerate(requests):
        where = f"decisions[{index}]"
        malformed = _malformed(request)
        problems += [(where, why) for why in malformed]
        if malformed:
            continue
        rows, problem = _targets(conn, tenant, request)
        if problem:
            problems.append((where, problem))
        for row in rows:
            if row.send_id in targets:
                problems.append((where, f"send {row.send_id} already has a decision in this list"))
            targets[row.send_id] = (request, row)
    if not requests:
        problems.append(("decisions", "empty: name at least one send id or campaign"))
    if problems:
        raise DecisionError(problems)

    recorded = []
    cipher = tenant_cipher(conn, tenant) if any(request.provider_message_id for request, _ in targets.values()) else None
    for send_id, (request, row) in targets.items():
        # The id as the provider's console shows it, kept the way the ledger keeps every provider id.
        provider_id = stored_id(cipher, row.provider, request.provider_message_id) if cipher else None
        changed = conn.execute(
            sa.update(sends).where(sends.c.send_id == send_id, sends.c.status == AMBIGUOUS).values(**_ledger_values(request, provider_id, operator, now))
        ).rowcount
        if changed != 1:  # another run or operator moved it since it was read: roll the whole batch back
            raise DecisionError([(send_id, "is no longer ambiguous (changed meanwhile); nothing was changed, look again")])
        recorded.append(
            {
                "tenant": tenant,
                "send_id": send_id,
                "decision": request.decision,
                "operator": operator.strip(),
                "reason": request.reason.strip(),
                "provider_message_id": provider_id,
                "previous_error": row.error,
                "run_id": run_id,
                "decided_at": now,
                "campaign": row.campaign,
                "channel": row.channel,
                "provider": row.provider,
            }
        )
    if recorded:
        columns = {column.name for column in send_decisions.columns}
        conn.execute(sa.insert(send_decisions), [{k: v for k, v in decision.items() if k in columns} for decision in recorded])
    return recorded


def decisions_table(recorded: Sequence[dict[str, Any]]) -> str:
    return markdown_table(
        ["send id", "campaign", "channel", "provider", "decision", "provider message id", "operator", "run", "decided at", "why", "was ambiguous because"],
        [
            (
                d["send_id"],
                d["campaign"],
                d["channel"],
                d["provider"],
                d["decision"],
                d["provider_message_id"] or "",
                d["operator"],
                d["run_id"],
                d["decided_at"].isoformat(timespec="seconds"),
                d["reason"],
                d["previous_error"] or "",
            )
            for d in recorded[:SHOWN_ROWS]
        ],
    )


def _malformed(request: DecisionRequest) -> list[str]:
    problems = []
    if request.decision not in DECISIONS:
        problems.append(f"decision {request.decision!r} is not one of {', '.join(DECISIONS)}")
    if (request.send_id is None) == (request.campaign is None):
        problems.append("name exactly one of send_id (one send) or campaign (all its ambiguous sends)")
    if not request.reason.strip():
        problems.append("reason is empty: say why (what the provider or recipient told you)")
    if request.provider_message_id is not None and (request.decision != MARK_SENT or request.send_id is None):
        problems.append("provider_message_id belongs to mark_sent of one send_id")
    if request.provider_message_id is not None and not 0 < len(request.provider_message_id) <= MAX_PROVIDER_ID:
        problems.append(f"provider_message_id must be 1–{MAX_PROVIDER_ID} characters")
    return problems


def _targets(conn: sa.Connection, tenant: str, request: DecisionRequest) -> tuple[list[sa.Row], str | None]:
    """The ambiguous rows an entry names, or why it names none."""
    if request.campaign is not None:
        rows = ambiguous_sends(conn, tenant, request.campaign)
        return rows, None if rows else f"campaign {request.campaign!r} has no ambiguous sends for tenant {tenant!r}"
    row = conn.execute(sa.select(sends).where(sends.c.tenant == tenant, sends.c.send_id == request.send_id)).first()
    if row is None:
        return [], f"no send {request.send_id!r} in tenant {tenant!r}'s ledger"
    if row.status != AMBIGUOUS:
        return [], f"send {request.send_id} is {row.status}, not ambiguous: only ambiguous sends take a decision"
    return [row], None


def _ledger_values(request: DecisionRequest, provider_id: str | None, operator: str, now: dt.datetime) -> dict[str, Any]:
    who = f"{operator.strip()}: {request.reason.strip()}"
    if request.decision == MARK_SENT:
        return {"status": SENT, "provider_message_id": provider_id or sends.c.provider_message_id, "error_class": None, "error": None, "finished_at": now}
    if request.decision == MARK_FAILED:
        return {"status": FAILED, "error_class": OPERATOR, "error": f"marked failed by {who}", "finished_at": now}
    return {"status": RESEND, "error_class": None, "error": f"resend allowed by {who}", "finished_at": None}
