"""The dispatch engine and the send path: limits, retries, ambiguity, circuit breaker, batching, resume.

Pure tests drive fake connectors; the rest go through the real send path (ledger on a scratch
SQLite file, limiter, connector, HTTP) to the provider sandbox on loopback.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from orchestrator_assets.sends.dispatch import Dispatcher, Outcome
from orchestrator_assets.sends.http import provider_client
from orchestrator_assets.sends.ledger import AMBIGUOUS, CLAIMED, LedgerKey, Wanted
from orchestrator_assets.sends.limits import CallWindow, CircuitBreaker, RateLimiter
from orchestrator_assets.sends.run import Outgoing, SendReport, send_messages
from policies.policy import CircuitBreakerPolicy, DispatchPolicy, RateLimit, RetryPolicy
from resources.channels.base import RATE_LIMITED, TRANSIENT, OutboundMessage, SendResult
from resources.channels.telegram import TelegramConnector
from resources.opstore import engine_for, migrate
from resources.opstore_schema import contacts, sends
from resources.pii import tenant_cipher
from sandbox.config import SandboxConfig, TelegramBot
from sandbox.outcomes import outcome_for
from sandbox.server import running_sandbox
from sandbox.state import DELAY_HEADER, FAULT_HEADER

TENANT, TOKEN = "t1", "555:dispatch"
FAST_RETRY = RetryPolicy(max_attempts=12, base_delay_s=0.01, max_delay_s=0.05)


def deliverable_chats(count: int) -> list[str]:
    """Chat ids the sandbox accepts (not "blocked"), so every send has one expected outcome."""
    chats = (str(n) for n in range(10_000, 100_000) if outcome_for("telegram", str(n)) != "blocked")
    return [next(chats) for _ in range(count)]


@pytest.fixture
def ledger(algor_home, tmp_path: Path) -> sa.Engine:
    url = f"sqlite:///{tmp_path / 'ledger.sqlite'}"
    migrate(url)
    engine = engine_for(url)
    now = dt.datetime.now(dt.UTC)
    with engine.begin() as conn:
        cipher = tenant_cipher(conn, TENANT)  # the ledger seals each address with its contact's key
        rows = [{"id": n, "tenant": TENANT, "external_id": f"c{n}", "data_key": cipher.new_contact_key(), "created_at": now, "updated_at": now} for n in range(1, 201)]
        conn.execute(sa.insert(contacts), rows)
    return engine


def outgoing(connector, addresses: list[str], campaign: str = "promo") -> list[Outgoing]:
    return [
        Outgoing(
            Wanted(LedgerKey(campaign, "main", n, connector.channel), connector.provider, address),
            connector,
            OutboundMessage(send_id="", tenant=TENANT, campaign=campaign, channel=connector.channel, address=address, text=f"hi {n}"),
        )
        for n, address in enumerate(addresses, start=1)
    ]


def send(engine: sa.Engine, items: list[Outgoing], policy: DispatchPolicy, run_id: str, client: httpx.AsyncClient | None = None) -> SendReport:
    async def go() -> SendReport:
        if client is None:
            return await send_messages(engine, TENANT, run_id, items, policy)
        async with client:
            return await send_messages(engine, TENANT, run_id, items, policy, client=client)

    return asyncio.run(go())


def statuses(engine: sa.Engine) -> dict[str, int]:
    with engine.connect() as conn:
        return {status: count for status, count in conn.execute(sa.select(sends.c.status, sa.func.count()).group_by(sends.c.status))}


def stats(url: str) -> dict:
    return httpx.get(f"{url}/_sandbox/stats").json()["providers"]["telegram"]


# --- pure --------------------------------------------------------------------------------------


def test_call_window_counts_a_call_until_one_period_after_its_answer():
    async def go() -> float:
        window = CallWindow(limit=2, period=0.2)
        await window.acquire()
        await window.acquire()
        waiter = asyncio.ensure_future(window.acquire())
        await asyncio.sleep(0.1)
        assert not waiter.done()  # both places still held: answers not in yet
        started = time.monotonic()
        window.release()
        await waiter
        return time.monotonic() - started

    assert asyncio.run(go()) >= 0.19


def test_pacing_hands_on_at_most_a_tenth_of_a_second_s_worth_at_once():
    """Tenant and campaign pacing at 50/s: bursts of at most 5 in any 0.1 s, 30 messages over 0.5 s."""

    async def go() -> list[float]:
        limiter, handed_on = RateLimiter(RateLimit(per_second=50)), []
        for _ in range(30):
            await limiter.pace()
            handed_on.append(time.monotonic())
        return handed_on

    handed_on = asyncio.run(go())
    assert handed_on[4] - handed_on[0] < 0.05  # the first five at once: room in both windows
    assert all(later - earlier >= 0.099 for earlier, later in zip(handed_on, handed_on[5:]))
    assert handed_on[-1] - handed_on[0] >= 0.49


def test_circuit_breaker_opens_half_opens_and_closes():
    now = [0.0]
    breaker = CircuitBreaker(CircuitBreakerPolicy(failure_threshold=3, reset_after_s=10), clock=lambda: now[0])
    for _ in range(3):
        assert breaker.allow()
        breaker.record(transient_failure=True)
    assert not breaker.allow() and breaker.times_opened == 1
    now[0] = 10.0
    assert breaker.allow()  # the one trial call…
    assert not breaker.allow()  # …and nothing else while it is out
    breaker.record(transient_failure=True)
    assert not breaker.allow() and breaker.times_opened == 2
    now[0] = 20.0
    assert breaker.allow()
    breaker.record(transient_failure=False)
    assert breaker.allow() and breaker.allow()


class FakeBatch:
    provider, channel, provider_deduplicates, ledger_dedup_ids, max_batch = "fakemail", "email", False, False, 10

    def __init__(self) -> None:
        self.calls: list[int] = []

    async def send(self, client, message):
        self.calls.append(1)
        return SendResult(ok=True, provider_message_id=message.send_id)

    async def send_batch(self, client, messages):
        self.calls.append(len(messages))
        return [SendResult(ok=True, provider_message_id=m.send_id) for m in messages]


def test_batch_connector_gets_up_to_max_batch_messages_per_call():
    connector = FakeBatch()
    done: list[Outcome] = []

    async def go() -> None:
        dispatcher = Dispatcher(None, DispatchPolicy(max_in_flight_per_account=1), lambda message, outcome: done.append(outcome))
        for n in range(25):
            await dispatcher.submit(connector, OutboundMessage(str(n), TENANT, "c", "email", f"u{n}@example.ru", "hi"))
        await dispatcher.close()

    asyncio.run(go())
    assert connector.calls == [10, 10, 5]
    assert len(done) == 25 and all(outcome.status == "sent" for outcome in done)


class Scripted:
    """Answers each send_id from a script of results, then accepts; remembers every call."""

    provider, channel = "scripted", "vk"
    ledger_dedup_ids = False

    def __init__(self, script: list[SendResult], deduplicates: bool) -> None:
        self.script, self.provider_deduplicates = script, deduplicates
        self.calls: list[str] = []

    async def send(self, client, message):
        self.calls.append(message.send_id)
        index = self.calls.count(message.send_id) - 1
        return self.script[index] if index < len(self.script) else SendResult(ok=True, provider_message_id=f"id-{message.send_id}")


MAYBE_TAKEN = SendResult(ok=False, error_class=TRANSIENT, error="ReadTimeout", may_have_been_accepted=True)
NOT_TAKEN = SendResult(ok=False, error_class=TRANSIENT, error="HTTP 503")


@pytest.mark.parametrize(
    ("script", "deduplicates", "status", "calls"),
    [
        ([NOT_TAKEN, NOT_TAKEN], False, "sent", 3),  # certainly not taken: retried
        ([MAYBE_TAKEN], False, AMBIGUOUS, 1),  # maybe taken, no provider dedup: held after one call
        ([MAYBE_TAKEN, MAYBE_TAKEN], True, "sent", 3),  # maybe taken, provider drops repeats: retried
        ([NOT_TAKEN] * 5, False, "failed", 4),  # max_attempts calls, then failed (retryable later)
        ([SendResult(ok=False, error_class=RATE_LIMITED, retry_after=0.05)], False, "sent", 2),
        ([SendResult(ok=False, error_class=RATE_LIMITED, retry_after=120)], False, "failed", 1),  # beyond max_delay_s
    ],
)
def test_retry_rules(script, deduplicates, status, calls):
    connector = Scripted(script, deduplicates)
    done: list[Outcome] = []
    policy = DispatchPolicy(retry=RetryPolicy(max_attempts=4, base_delay_s=0.01, max_delay_s=1))

    async def go() -> None:
        dispatcher = Dispatcher(None, policy, lambda message, outcome: done.append(outcome))
        await dispatcher.submit(connector, OutboundMessage("s1", TENANT, "c", "vk", "1", "hi"))
        await dispatcher.close()

    asyncio.run(go())
    assert [outcome.status for outcome in done] == [status]
    assert len(connector.calls) == calls == done[0].attempts


def test_resume_resends_an_abandoned_claim_only_where_the_provider_deduplicates(ledger):
    dedup, plain = Scripted([], deduplicates=True), Scripted([], deduplicates=False)
    plain.provider, plain.channel = "plain", "telegram"
    items = outgoing(dedup, ["1"]) + outgoing(plain, ["2"])
    send(ledger, items, DispatchPolicy(), "run-1", client=httpx.AsyncClient())
    with ledger.begin() as conn:  # both rows as a run that died mid-request leaves them
        conn.execute(sa.update(sends).values(status=CLAIMED, run_id="run-that-died"))
    first_ids = dedup.calls + plain.calls

    report = send(ledger, items, DispatchPolicy(), "run-2", client=httpx.AsyncClient())
    assert report.abandoned == 2
    assert dedup.calls == [first_ids[0], first_ids[0]]  # same send id: the provider drops the repeat
    assert plain.calls == [first_ids[1]]  # held, not resent
    assert report.totals["sent"] == 1 and report.totals["held"] == 1
    assert statuses(ledger) == {"sent": 1, AMBIGUOUS: 1}


def test_consent_withdrawn_before_the_claim_suppresses_without_a_ledger_row(ledger):
    connector = Scripted([], deduplicates=False)
    items = outgoing(connector, ["1", "2", "3"])

    async def go() -> SendReport:
        refuse = {items[1].want.key}
        return await send_messages(ledger, TENANT, "run-1", items, DispatchPolicy(), client=httpx.AsyncClient(), still_allowed=lambda conn, keys: set(keys) - refuse)

    report = asyncio.run(go())
    assert report.totals["suppressed"] == 1 and report.totals["sent"] == 2
    assert len(connector.calls) == 2 and statuses(ledger) == {"sent": 2}


def test_client_tells_a_disconnect_after_sending_from_a_refused_connection():
    """A provider that hangs up after reading the request may have acted on it; one that refused the
    connection cannot have (aiohttp reports both as connection errors)."""

    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.close()

    async def go() -> tuple[SendResult, SendResult]:
        server = await asyncio.start_server(hang_up, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        message = OutboundMessage("s1", TENANT, "c", "telegram", "10", "hi")
        async with server, provider_client(1) as client:
            dropped = await TelegramConnector(f"http://127.0.0.1:{port}", TOKEN).send(client, message)
        async with provider_client(1) as client:  # the server is gone: nothing listens on the port now
            refused = await TelegramConnector(f"http://127.0.0.1:{port}", TOKEN).send(client, message)
        return dropped, refused

    dropped, refused = asyncio.run(go())
    assert dropped.error_class == TRANSIENT and dropped.may_have_been_accepted
    assert refused.error_class == TRANSIENT and not refused.may_have_been_accepted


# --- against the sandbox -----------------------------------------------------------------------


def test_limiter_keeps_the_provider_within_its_limit(ledger):
    with running_sandbox(SandboxConfig(telegram=[TelegramBot(token=TOKEN, rate_limit_per_s=20)])) as url:
        policy = DispatchPolicy(max_in_flight_per_account=16, provider_limits={"telegram": RateLimit(per_second=20)})
        started = time.monotonic()
        report = send(ledger, outgoing(TelegramConnector(url, TOKEN), deliverable_chats(50)), policy, "run-1")
        elapsed = time.monotonic() - started
        assert report.totals["sent"] == 50
        assert stats(url)["limit_violations"] == 0
        assert elapsed >= 2.0  # 50 calls at 20 per second


def test_rate_limited_answer_is_retried_after_retry_after(ledger):
    with running_sandbox(SandboxConfig(telegram=[TelegramBot(token=TOKEN, rate_limit_per_s=5)])) as url:
        policy = DispatchPolicy(max_in_flight_per_account=12, retry=RetryPolicy(max_attempts=5, base_delay_s=0.01, max_delay_s=5))
        started = time.monotonic()
        report = send(ledger, outgoing(TelegramConnector(url, TOKEN), deliverable_chats(12)), policy, "run-1")
        assert report.totals["sent"] == 12 and report.totals["retries"] >= 7
        assert stats(url)["limit_violations"] >= 7  # the sandbox did refuse them…
        assert time.monotonic() - started >= 2.0  # …and we waited its retry_after (1 s) twice


def test_server_errors_are_retried_until_sent(ledger):
    config = SandboxConfig(telegram=[TelegramBot(token=TOKEN)], fault_rate=0.3, fault_seed=7)
    with running_sandbox(config) as url:
        policy = DispatchPolicy(retry=FAST_RETRY, circuit_breaker=CircuitBreakerPolicy(failure_threshold=1000))
        report = send(ledger, outgoing(TelegramConnector(url, TOKEN), deliverable_chats(40)), policy, "run-1")
        assert report.totals["sent"] == 40 and report.totals["retries"] > 0
        assert stats(url)["accepted"] == 40
    assert statuses(ledger) == {"sent": 40}


def test_read_timeout_without_provider_dedup_is_ambiguous_and_not_resent(ledger):
    with running_sandbox(SandboxConfig(telegram=[TelegramBot(token=TOKEN)])) as url:
        items = outgoing(TelegramConnector(url, TOKEN), deliverable_chats(5))
        slow = provider_client(8, timeout=httpx.Timeout(5, read=0.1), headers={DELAY_HEADER: "0.4"})
        first = send(ledger, items, DispatchPolicy(retry=FAST_RETRY), "run-1", client=slow)
        assert first.totals[AMBIGUOUS] == 5 and first.totals["retries"] == 0
        deadline = time.monotonic() + 5
        while stats(url)["accepted"] < 5 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert stats(url)["accepted"] == 5  # the sandbox took every one of them, after its delay

        again = send(ledger, items, DispatchPolicy(retry=FAST_RETRY), "run-2")
        assert again.totals["held"] == 5 and again.totals["sent"] == 0
        assert stats(url)["accepted"] == 5  # nothing sent twice
    assert statuses(ledger) == {AMBIGUOUS: 5}


def test_circuit_breaker_stops_calls_and_a_later_run_retries(ledger):
    with running_sandbox(SandboxConfig(telegram=[TelegramBot(token=TOKEN)])) as url:
        items = outgoing(TelegramConnector(url, TOKEN), deliverable_chats(20))
        policy = DispatchPolicy(
            max_in_flight_per_account=1,
            retry=RetryPolicy(max_attempts=1),
            circuit_breaker=CircuitBreakerPolicy(failure_threshold=4, reset_after_s=60),
        )
        failing = provider_client(1, headers={FAULT_HEADER: "503"})
        first = send(ledger, items, policy, "run-1", client=failing)
        assert stats(url)["refused"] == 4  # four calls, then the breaker stopped calling
        assert first.totals["failed:transient"] == 4 and first.totals["failed:circuit_open"] == 16
        assert first.circuit_opened == 1

        again = send(ledger, items, policy, "run-2")
        assert again.totals["sent"] == 20 and again.totals["already_final"] == 0
        assert stats(url)["accepted"] == 20
    assert statuses(ledger) == {"sent": 20}
