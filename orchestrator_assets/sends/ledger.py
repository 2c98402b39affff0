"""The send ledger: one row per (tenant, campaign, step, contact, channel), written around every call.

State machine of ``sends.status``::

    (no row) ──claim──▶ claimed ──accepted──────────────────────────────▶ sent       final
                          │     ──unreachable / rejected────────────────▶ failed     final
                          │     ──transient or rate-limited, retries
                          │       used up, or circuit open──────────────▶ failed     retryable
                          │     ──no answer, may have been accepted,
                          │       provider does not deduplicate──────────▶ ambiguous  held
                          └──────the run died (seen by a later run)─────▶ ambiguous  held
    failed (transient / rate_limited) ──claim, same send_id────────────▶ claimed
    ambiguous ──claim, same send_id, only if the provider deduplicates──▶ claimed
    ambiguous ──operator: mark_sent / mark_failed (``decisions``)──────▶ sent | failed   final
    ambiguous ──operator: resend (``decisions``)──────────────────────▶ resend
    resend ──claim, same send_id───────────────────────────────────────▶ claimed

Why this shape:

- A row is claimed *before* the request and finalised *after* the answer, so every message a
  provider may have seen has a row, and a crash can only leave rows ``claimed``.
- A row still ``claimed`` when a run starts belongs to a run that died (one send run per tenant at
  a time: the asset is partitioned by tenant). Whether its request went out is unknown, so it turns
  ``ambiguous`` and is held: resent only where the provider drops repeats of the same send id (VK
  ``random_id``), otherwise counted and left for a status check or an operator.
- Claims are made in small batches just before sending and answers are written in batches
  (``orchestrator_assets.sends.run``), so a crash strands only the messages in flight plus one
  batch, not the rest of the campaign, at a few statements per hundred messages.
- ``failed`` with a transient or rate-limited class means the provider certainly did not take the
  message, so a later run claims it again (same send id); every other ``failed`` is final.
- Where the provider deduplicates by a small integer (VK ``random_id``, int32), the claim gives the
  row a ``dedup_id`` from a per-(tenant, provider) sequence (``dedup_sequences``) and every later
  claim of the row keeps it. A hash of the send id would collide by the birthday bound (even odds
  at ~77,000 sends per community), and VK silently drops a colliding, different message.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field

import sqlalchemy as sa

from orchestrator_assets.contact_pii import ContactKeys
from orchestrator_assets.provider_ids import stored_id
from resources.channels.base import RATE_LIMITED, TRANSIENT, SendResult
from resources.opstore_schema import dedup_sequences, sends
from resources.pii import TenantCipher
from resources.sql import upsert_insert

CLAIMED, SENT, FAILED, AMBIGUOUS = "claimed", "sent", "failed", "ambiguous"
RESEND = "resend"  # an operator allowed a second attempt of an ambiguous send: the next run claims it
OPERATOR = "operator"  # error class of a send an operator marked failed (final, not retried)
RETRYABLE_CLASSES = (TRANSIENT, RATE_LIMITED)
ABANDONED = "claimed by a run that ended without recording an answer (run_id names it): the request may have gone out"
_CHUNK = 500  # rows per statement: well under every database's bound-parameter limit


@dataclass(frozen=True)
class LedgerKey:
    campaign: str
    step: str
    contact_id: int
    channel: str


@dataclass(frozen=True)
class Wanted:
    """A message the run wants sent, before it has a ledger row of its own."""

    key: LedgerKey
    provider: str
    address: str


@dataclass
class Plan:
    """What a run has to do, from the ledger as it stood when the run started."""

    to_send: list[tuple[Wanted, str | None]] = field(default_factory=list)  # (wanted, send id to re-claim or None)
    final: list[LedgerKey] = field(default_factory=list)  # sent or finally failed earlier
    held: list[LedgerKey] = field(default_factory=list)  # ambiguous and not safely resendable
    abandoned: int = 0  # rows found claimed by a dead run (now ambiguous: held or resent)


def plan(
    conn: sa.Connection, tenant: str, wanted: Sequence[Wanted], deduplicating: Collection[str], keys: ContactKeys, keyed: Collection[str] = ()
) -> Plan:
    """Sort ``wanted`` into new, retryable, final and held rows; rows a dead run left claimed become
    ambiguous here. ``keys`` opens the sealed address of an ambiguous row. ``deduplicating`` names the providers whose connectors drop repeated send ids;
    ``keyed`` those of them that drop repeats of the row's ``dedup_id``, so an ambiguous row
    without one (claimed before dedup ids existed) cannot be repeated safely and is held."""
    campaigns = sorted({w.key.campaign for w in wanted})
    columns = (
        sends.c.send_id, sends.c.campaign, sends.c.step, sends.c.contact_id, sends.c.channel, sends.c.provider, sends.c.address,
        sends.c.status, sends.c.error_class, sends.c.dedup_id,
    )
    rows = {
        LedgerKey(row.campaign, row.step, row.contact_id, row.channel): row
        for row in conn.execute(sa.select(*columns).where(sends.c.tenant == tenant, sends.c.campaign.in_(campaigns)))
    } if campaigns else {}
    result = Plan()
    abandoned = [row.send_id for row in rows.values() if row.status == CLAIMED]
    for start in range(0, len(abandoned), _CHUNK):
        conn.execute(
            sa.update(sends)
            .where(sends.c.send_id.in_(abandoned[start : start + _CHUNK]), sends.c.status == CLAIMED)
            .values(status=AMBIGUOUS, error_class=TRANSIENT, error=ABANDONED)
        )
    result.abandoned = len(abandoned)
    for want in wanted:
        row = rows.get(want.key)
        if row is None:
            result.to_send.append((want, None))
            continue
        status = AMBIGUOUS if row.status == CLAIMED else row.status
        if (status == FAILED and row.error_class in RETRYABLE_CLASSES) or status == RESEND:
            result.to_send.append((want, row.send_id))
        elif status == AMBIGUOUS:
            # Safe to resend only to the provider and address that may already have it: a repeat
            # is dropped there, nowhere else.
            unchanged = row.provider == want.provider and keys.open_address(row.contact_id, row.address) == want.address
            repeatable = want.provider in deduplicating and (row.dedup_id is not None or want.provider not in keyed)
            if unchanged and repeatable:
                result.to_send.append((want, row.send_id))
            else:
                result.held.append(want.key)
        else:
            result.final.append(want.key)
    return result


def claim(
    conn: sa.Connection, tenant: str, run_id: str, batch: Sequence[tuple[Wanted, str | None]], now: dt.datetime, keys: ContactKeys,
    keyed: Collection[str] = (),
) -> list[tuple[Wanted, str, int | None]]:
    """Claim ``batch`` for ``run_id``; returns the (wanted, send_id, dedup_id) this run now owns.

    Each row's address is stored sealed with its contact's key (``keys``); the plaintext the
    dispatch needs stays in memory, in ``Wanted``.

    New rows are inserted-or-ignored on the ledger key and retryable rows are updated only from a
    retryable state, so when two runs race for a row exactly one owns it afterwards. Rows of a
    ``keyed`` provider carry a ``dedup_id``: a fresh one for new rows, the one they already have
    on every later claim (numbers allocated for rows another run won are simply skipped).
    """
    fresh = [(want, str(uuid.uuid4())) for want, send_id in batch if send_id is None]
    again = [(want, send_id) for want, send_id in batch if send_id is not None]
    dedup_ids = _allocate_dedup_ids(conn, tenant, [want for want, _ in batch], keyed)
    owned: dict[str, int | None] = {}
    if fresh:
        values = [
            {
                "send_id": send_id,
                "tenant": tenant,
                "campaign": want.key.campaign,
                "step": want.key.step,
                "contact_id": want.key.contact_id,
                "channel": want.key.channel,
                "provider": want.provider,
                "address": keys.seal_address(want.key.contact_id, want.address),
                "status": CLAIMED,
                "run_id": run_id,
                "claimed_at": now,
                "dedup_id": dedup_ids.get(want.key),
            }
            for want, send_id in fresh
        ]
        inserted = conn.execute(upsert_insert(conn, sends).on_conflict_do_nothing().returning(sends.c.send_id, sends.c.dedup_id), values)
        owned = {send_id: dedup_id for send_id, dedup_id in inserted}
    if again:
        # Spelt out rather than IN (…): an expanding IN cannot run as executemany.
        retryable = sa.or_(
            sends.c.status == AMBIGUOUS, sends.c.status == RESEND, *(sa.and_(sends.c.status == FAILED, sends.c.error_class == name) for name in RETRYABLE_CLASSES)
        )
        statement = (
            sa.update(sends)
            .where(sends.c.send_id == sa.bindparam("b_send_id"), retryable)
            .values(
                status=CLAIMED, run_id=run_id, claimed_at=now, provider=sa.bindparam("b_provider"), address=sa.bindparam("b_address"),
                provider_message_id=None, error_class=None, error=None, finished_at=None, warehouse_synced_at=None,
                dedup_id=sa.func.coalesce(sends.c.dedup_id, sa.bindparam("b_dedup_id", type_=sa.BigInteger)),
            )
        )
        conn.execute(
            statement,
            [
                {"b_send_id": send_id, "b_provider": want.provider, "b_address": keys.seal_address(want.key.contact_id, want.address), "b_dedup_id": dedup_ids.get(want.key)}
                for want, send_id in again
            ],
        )
        reclaimed = sa.select(sends.c.send_id, sends.c.dedup_id).where(
            sends.c.send_id.in_([send_id for _, send_id in again]), sends.c.status == CLAIMED, sends.c.run_id == run_id
        )
        owned |= {send_id: dedup_id for send_id, dedup_id in conn.execute(reclaimed)}
    return [(want, send_id, owned[send_id]) for want, send_id in fresh + again if send_id in owned]


def _allocate_dedup_ids(conn: sa.Connection, tenant: str, wanted: Sequence[Wanted], keyed: Collection[str]) -> dict[LedgerKey, int]:
    """A fresh number from the (tenant, provider) sequence for every wanted row of a ``keyed``
    provider. The UPDATE … RETURNING holds the sequence row's write lock until the caller's
    transaction ends, so concurrent claims get disjoint blocks."""
    numbers: dict[LedgerKey, int] = {}
    for provider in sorted({want.provider for want in wanted} & set(keyed)):
        keys = [want.key for want in wanted if want.provider == provider]
        conn.execute(upsert_insert(conn, dedup_sequences).on_conflict_do_nothing(), [{"tenant": tenant, "provider": provider, "last_value": 0}])
        last = conn.execute(
            sa.update(dedup_sequences)
            .where(dedup_sequences.c.tenant == tenant, dedup_sequences.c.provider == provider)
            .values(last_value=dedup_sequences.c.last_value + len(keys))
            .returning(dedup_sequences.c.last_value)
        ).scalar_one()
        numbers.update(zip(keys, range(last - len(keys) + 1, last + 1), strict=True))
    return numbers


def finalise(conn: sa.Connection, cipher: TenantCipher, run_id: str, answers: Sequence[tuple[str, str, str, SendResult]], now: dt.datetime) -> None:
    """Record (send_id, provider, status, result) answers on rows this run still holds claimed, each
    provider id in the form the store keeps (``provider_ids.stored_id``: no chat id or phone in it)."""
    if not answers:
        return
    statement = (
        sa.update(sends)
        .where(sends.c.send_id == sa.bindparam("b_send_id"), sends.c.status == CLAIMED, sends.c.run_id == run_id)
        .values(
            status=sa.bindparam("b_status"),
            provider_message_id=sa.bindparam("b_provider_message_id"),
            error_class=sa.bindparam("b_error_class"),
            error=sa.bindparam("b_error"),
            finished_at=now,
        )
    )
    conn.execute(
        statement,
        [
            {
                "b_send_id": send_id,
                "b_status": status,
                "b_provider_message_id": stored_id(cipher, provider, result.provider_message_id),
                "b_error_class": result.error_class,
                "b_error": result.error,
            }
            for send_id, provider, status, result in answers
        ],
    )
