"""Phone reachability from SMSC HLR lookups: which numbers to check, the lookups, what they mean.

An HLR lookup (SMSC ``send.php`` with ``hlr=1``, billed like a message) asks the mobile network
whether a number exists and can be reached, without sending anything. A dead number (subscriber
does not exist, bad number, no route, SMSC's stop list …; ``smsc.reachability``) suppresses SMS to
the contact the way the dispatch path's *unreachable* answer does: the SMS consent is withdrawn,
with the lookup's words as evidence. An offline subscriber or a lookup still pending settles
nothing and changes nothing.

Lookups cost money and share the account with campaigns, so they are bounded (``max_lookups`` per
run), paced (``lookups_per_second``, each counted until its result is in), made only for contacts
that may get SMS at all (granted SMS consent), and a number checked within ``recheck_after`` is
skipped unless the contact's phone changed since.

SMSC reports the result like a delivery status: ``SmscConnector.hlr_check`` polls ``status.php``,
and the status callback SMSC also posts reaches the inbox, where ``apply_hlr_callback`` matches it
to the lookup by "<id>:<phone>" (instead of retrying it as a status of an unknown message) and
records it if it settles what polling could not.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import httpx
import sqlalchemy as sa

from orchestrator_assets.consent_decisions import WITHDRAW, record_decisions
from orchestrator_assets.consent_ledger import ConsentFact, consent_state
from orchestrator_assets.contact_pii import blind_index, read_contacts
from orchestrator_assets.sends.limits import RateLimiter
from policies.consent_purposes import Purpose, SourceKind
from policies.policy import RateLimit
from resources.channels.smsc import (
    ReachabilityResult,
    SmscConnector,
    phone_digits,
    reachability,
)
from resources.opstore_schema import contacts, phone_reachability
from resources.pii import TenantCipher
from resources.sql import upsert_insert

SMS = "sms"
SOURCE = "smsc:hlr"  # the consent source of a withdrawal for a dead number
LOOKUP_TIMEOUT_S = 30.0
HLR_LOOKUP = "hlr_lookup"  # blind index kind of SMSC's lookup ids


@dataclass(frozen=True)
class DueNumber:
    contact_id: int
    phone: str  # as the contact has it


@dataclass
class Lookups:
    """What a run of lookups did: tallies, each answer, and why numbers could not be checked (not
    recorded: the next run tries them again)."""

    tally: Counter[str] = field(default_factory=Counter)
    answers: list[tuple[int, bool | None, str]] = field(default_factory=list)  # (contact id, reachable, SMSC's words)
    not_checked: list[tuple[int, str]] = field(default_factory=list)  # (contact id, why)


def due_numbers(conn: sa.Connection, cipher: TenantCipher, now: dt.datetime, recheck_after: dt.timedelta) -> list[DueNumber]:
    """Contacts whose phone needs a lookup: granted SMS consent, and never checked, checked before
    ``now - recheck_after``, or checked under another number (blind indexes differ). Never-checked
    first, then oldest; phones opened from the sealed contacts."""
    tenant = cipher.tenant
    state = consent_state(now).c
    granted_sms = sa.exists().where(state.tenant == tenant, state.contact_id == contacts.c.id, state.channel == SMS, state.granted)
    last = phone_reachability
    stale = sa.or_(last.c.contact_id.is_(None), last.c.checked_at < now - recheck_after, last.c.phone_bidx != contacts.c.phone_bidx)
    query = (
        sa.select(contacts.c.id, contacts.c.data_key, contacts.c.pii)
        .select_from(contacts.outerjoin(last, sa.and_(last.c.tenant == contacts.c.tenant, last.c.contact_id == contacts.c.id)))
        .where(contacts.c.tenant == tenant, contacts.c.merged_into.is_(None), contacts.c.phone_bidx.is_not(None), granted_sms, stale)
        .order_by(last.c.checked_at.asc().nulls_first(), contacts.c.id)
    )
    return [DueNumber(row.id, cipher.open(row.data_key, row.pii)["phone"]) for row in conn.execute(query)]


def record_result(conn: sa.Connection, cipher: TenantCipher, contact_id: int, phone: str, result: ReachabilityResult, now: dt.datetime) -> int:
    """Store the contact's latest lookup; a dead number withdraws its SMS consents (advertising and
    transactional: nothing reaches it). Returns 1 when that ended an advertising consent, else 0.
    The phone and SMSC's lookup id (which contains it) are kept as blind indexes only; the consent
    evidence refers to the lookup by SMSC's id and holds the phone as sealed identity evidence."""
    tenant = cipher.tenant
    values = {
        "phone_bidx": blind_index(cipher, "phone", phone),
        "reachable": result.reachable,
        "reason": result.reason,
        "network": json.dumps(result.network, ensure_ascii=False) if result.network else None,
        "lookup_bidx": cipher.index(HLR_LOOKUP, result.lookup_id) if result.lookup_id else None,
        "checked_at": now,
    }
    statement = upsert_insert(conn, phone_reachability).values(tenant=tenant, contact_id=contact_id, **values)
    conn.execute(statement.on_conflict_do_update(index_elements=[phone_reachability.c.tenant, phone_reachability.c.contact_id], set_=values))
    if result.reachable is not False:
        return 0
    detail = json.dumps({"status": result.status, "err": result.err, "reason": result.reason}, ensure_ascii=False)
    smsc_id = (result.lookup_id or "").partition(":")[0]
    facts = [
        ConsentFact(contact_id, SMS, purpose, WITHDRAW, SourceKind.PROVIDER_WEBHOOK, f"hlr:{smsc_id}", now, origin=SOURCE,
                    identity={"phone": phone_digits(phone)}, detail=detail)
        for purpose in (Purpose.ADVERTISING, Purpose.TRANSACTIONAL)
    ]  # fmt: skip
    return sum(record_decisions(conn, tenant, facts, now)[1][:1])


async def look_up(
    connector: SmscConnector,
    numbers: Sequence[DueNumber],
    per_second: float,
    on_result: Callable[[DueNumber, ReachabilityResult], int],
    poll_interval_s: float = 1.0,
) -> Lookups:
    """HLR lookups for ``numbers``, at most ``per_second`` started per second and each holding its
    place until its result is in; ``on_result`` records each answered lookup as it arrives and
    returns the consents it withdrew. A lookup refused before reaching the network (account,
    balance, transport) is not recorded."""
    limiter = RateLimiter(RateLimit(per_second=per_second))
    outcome = Lookups()

    async def one(client: httpx.AsyncClient, number: DueNumber) -> None:
        try:
            async with limiter.call():
                result = await connector.hlr_check(client, number.phone, interval_s=poll_interval_s)
        except httpx.HTTPError as exc:
            outcome.tally["not_checked"] += 1
            outcome.not_checked.append((number.contact_id, f"{type(exc).__name__}: {exc}"))
            return
        if result.lookup_id is None and result.reachable is None:  # never reached the network
            outcome.tally["not_checked"] += 1
            outcome.not_checked.append((number.contact_id, result.reason))
            return
        outcome.tally["sms_consents_withdrawn"] += on_result(number, result)
        outcome.tally[{True: "reachable", False: "unreachable", None: "unsettled"}[result.reachable]] += 1
        outcome.answers.append((number.contact_id, result.reachable, result.reason))

    async with httpx.AsyncClient(timeout=LOOKUP_TIMEOUT_S) as client:
        await asyncio.gather(*(one(client, number) for number in numbers))
    return outcome


def apply_hlr_callback(conn: sa.Connection, cipher: TenantCipher, provider_message_id: str | None, form: Mapping[str, Any], now: dt.datetime) -> bool:
    """True when an SMSC status callback belongs to one of our HLR lookups (so it is done with);
    its result is recorded when it settles a lookup that polling left unsettled."""
    if not provider_message_id:
        return False
    lookup = cipher.index(HLR_LOOKUP, provider_message_id)
    row = conn.execute(
        sa.select(phone_reachability).where(phone_reachability.c.tenant == cipher.tenant, phone_reachability.c.lookup_bidx == lookup)
    ).first()
    if row is None:
        return False
    phone = read_contacts(conn, cipher, [row.contact_id]).get(row.contact_id, {}).get("phone")
    if phone is None:  # erased (or the phone removed) since: nothing left to record it for
        return True
    result = replace(reachability(phone_digits(phone), form), lookup_id=provider_message_id)
    if row.reachable is None and result.reachable is not None:
        record_result(conn, cipher, row.contact_id, phone, result, now)
    return True
