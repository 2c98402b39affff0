"""The send path: ledger claims, the dispatch engine and ledger answers, interleaved in batches.

Claims are made just in time, a batch of ``CLAIM_AHEAD`` times the in-flight capacity whenever
fewer than that are unanswered, and answers are written whenever the next batch is claimed or
``FLUSH_INTERVAL_S`` has passed. That bounds what a crash can strand as ambiguous (under two
batches: in flight, queued, answered but not yet written) at two statements per batch; claiming
the whole campaign up front would strand all of it.
The statements run on the event loop's thread: handing them to a worker thread measured slower
(~1,250 vs ~1,350 msg/s), the GIL hand-offs costing more than the SQLite time they overlap.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import gc
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import sqlalchemy as sa

from orchestrator_assets.contact_pii import ContactKeys
from orchestrator_assets.sends.dispatch import CIRCUIT_OPEN, Dispatcher, Outcome
from orchestrator_assets.sends.http import provider_client
from orchestrator_assets.sends.ledger import (
    AMBIGUOUS,
    SENT,
    LedgerKey,
    Wanted,
    claim,
    finalise,
    plan,
)
from orchestrator_assets.sends.limits import RateLimiter
from policies.policy import DispatchPolicy
from resources.pii import tenant_cipher
from resources.channels.base import (
    ChannelConnector,
    HttpClient,
    OutboundMessage,
    SendResult,
)

FLUSH_INTERVAL_S = 0.25
CLAIM_AHEAD = 2  # claim batch in multiples of the in-flight capacity: 2 took ~9 % less CPU a message than 1, 4 ~11 %
MAX_CLAIM_BATCH = 500
PROGRESS_EVERY_S = 10.0

# Outcome labels in reports: "sent", "ambiguous", "failed:<error class>", "failed:circuit_open";
# ledger-side counts: "already_final", "held" (ambiguous from an earlier run), "suppressed",
# "halted" (its campaign was paused or cancelled: not claimed, sent by the run that resumes it).
CounterKey = tuple[str, str]  # (campaign, channel)


@dataclass(frozen=True)
class Outgoing:
    want: Wanted
    connector: ChannelConnector
    message: OutboundMessage  # send_id is filled in once the ledger row is claimed


@dataclass
class SendReport:
    by_campaign: defaultdict[CounterKey, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    abandoned: int = 0  # rows a dead run had left claimed, found by this run
    circuit_opened: int = 0
    halted: set[str] = field(default_factory=set)  # campaigns found paused or cancelled mid-run

    @property
    def totals(self) -> Counter[str]:
        return sum(self.by_campaign.values(), Counter())


def label(outcome: Outcome) -> str:
    if outcome.status == SENT or outcome.status == AMBIGUOUS:
        return outcome.status
    return "failed:circuit_open" if outcome.result.error == CIRCUIT_OPEN else f"failed:{outcome.result.error_class}"


async def send_messages(
    engine: sa.Engine,
    tenant: str,
    run_id: str,
    outgoing: Sequence[Outgoing],
    policy: DispatchPolicy,
    client: HttpClient | None = None,
    still_allowed: Callable[[sa.Connection, list[LedgerKey]], set[LedgerKey]] | None = None,
    log: Callable[[str], None] = lambda line: None,
    halted: Callable[[sa.Connection, set[str]], frozenset[str]] | None = None,
) -> SendReport:
    """Send every ``outgoing`` message not already final or held, exactly as the ledger allows.

    ``still_allowed`` re-checks consent just before each batch is claimed (a withdrawal that
    arrives mid-campaign stops the messages not yet sent); refused ones are counted as suppressed
    and get no ledger row, so they can go out later if consent returns. ``halted`` names, of the
    campaigns it is given, those an operator paused or cancelled: asked once per batch (never per
    message), their messages are no longer claimed and are counted as halted; those already in
    flight are answered and recorded as usual.
    """
    report = SendReport()
    by_key = {item.want.key: item for item in outgoing}
    deduplicating = {item.connector.provider for item in outgoing if item.connector.provider_deduplicates}
    keyed = {item.connector.provider for item in outgoing if item.connector.ledger_dedup_ids}
    with engine.begin() as conn:
        cipher = tenant_cipher(conn, tenant)
        contact_keys = ContactKeys.load(conn, cipher, {item.want.key.contact_id for item in outgoing})
        todo = plan(conn, tenant, [item.want for item in outgoing], deduplicating, contact_keys, keyed)
    report.abandoned = todo.abandoned
    for keys, name in ((todo.final, "already_final"), (todo.held, "held")):
        for key in keys:
            report.by_campaign[(key.campaign, key.channel)][name] += 1
    if not todo.to_send:
        return report

    accounts = len({id(by_key[want.key].connector) for want, _ in todo.to_send})
    claim_batch = min(MAX_CLAIM_BATCH, CLAIM_AHEAD * policy.max_in_flight_per_account * accounts)
    tenant_limiter = [RateLimiter(policy.tenant_limit)] if policy.tenant_limit else []
    campaign_limiters: dict[str, RateLimiter] = {}
    answers: list[tuple[str, str, str, SendResult]] = []
    provider_of: dict[str, str] = {}  # send_id → provider of each message on its way
    started = last_log = time.monotonic()

    def on_done(message: OutboundMessage, outcome: Outcome) -> None:
        answers.append((message.send_id, provider_of.pop(message.send_id), outcome.status, outcome.result))
        counts = report.by_campaign[(message.campaign, message.channel)]
        counts[label(outcome)] += 1
        counts["retries"] += max(0, outcome.attempts - 1)

    def flush() -> None:
        nonlocal last_log
        if answers:
            with engine.begin() as conn:
                finalise(conn, cipher, run_id, answers, dt.datetime.now(dt.UTC))
            answers.clear()
        if time.monotonic() - last_log >= PROGRESS_EVERY_S:
            last_log = time.monotonic()
            log(f"progress after {last_log - started:.0f} s: {dict(report.totals)}")

    async def settle_below(count: int) -> None:
        while not await dispatcher.wait_below(count, FLUSH_INTERVAL_S):
            flush()

    def pacing(campaign: str) -> list[RateLimiter]:
        if policy.campaign_limit is None:
            return tenant_limiter
        limiter = campaign_limiters.get(campaign) or campaign_limiters.setdefault(campaign, RateLimiter(policy.campaign_limit))
        return [limiter, *tenant_limiter]

    own_client = client is None
    client = client or provider_client(policy.max_in_flight_per_account * accounts)
    # What is alive now (the campaign's messages, the plan, the process's imports) outlives the loop
    # below; every full collection rescanned all of it, 10-15 % of the send path's CPU at 30k messages.
    # Frozen, it is left alone until the end (unless someone else already froze objects: theirs).
    freeze = gc.get_freeze_count() == 0
    if freeze:
        gc.freeze()
    try:
        dispatcher = Dispatcher(client, policy, on_done)
        for start in range(0, len(todo.to_send), claim_batch):
            await settle_below(claim_batch)
            flush()
            batch = todo.to_send[start : start + claim_batch]
            with engine.begin() as conn:
                if halted is not None:
                    if unknown := {want.key.campaign for want, _ in batch} - report.halted:
                        report.halted |= halted(conn, unknown)
                    batch = _without_halted(batch, report)
                if still_allowed is not None:
                    allowed = still_allowed(conn, [want.key for want, _ in batch])
                    for want, _ in batch:
                        if want.key not in allowed:
                            report.by_campaign[(want.key.campaign, want.key.channel)]["suppressed"] += 1
                    batch = [(want, send_id) for want, send_id in batch if want.key in allowed]
                claimed = claim(conn, tenant, run_id, batch, dt.datetime.now(dt.UTC), contact_keys, keyed)
            for want, send_id, dedup_id in claimed:
                item = by_key[want.key]
                provider_of[send_id] = want.provider
                message = dataclasses.replace(item.message, send_id=send_id, dedup_id=dedup_id)
                await dispatcher.submit(item.connector, message, pacing(want.key.campaign))
        await settle_below(1)
        await dispatcher.close()
        report.circuit_opened = dispatcher.circuit_opened
    finally:
        flush()
        if own_client:
            await client.aclose()
        if freeze:
            gc.unfreeze()
    return report


def _without_halted(batch: list, report: SendReport) -> list:
    """``batch`` less the messages of campaigns found halted, which are counted."""
    if not report.halted:
        return batch
    kept = []
    for want, send_id in batch:
        if want.key.campaign in report.halted:
            report.by_campaign[(want.key.campaign, want.key.channel)]["halted"] += 1
        else:
            kept.append((want, send_id))
    return kept
