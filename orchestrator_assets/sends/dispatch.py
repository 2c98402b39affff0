"""The dispatch engine: claimed messages out to the providers, one final answer back per message.

Per provider account (one connector instance: one bot token, one sending domain):

- ``max_in_flight_per_account`` workers, so the account's concurrency is bounded by construction;
- a ``RateLimiter`` for the provider's rate limit and a ``CircuitBreaker`` (``limits``);
- a batch connector gets up to ``max_batch`` queued messages per call.

Tenant and campaign limits pace how fast messages are handed to the accounts (``submit``).

What each answer leads to (the ledger status it ends in):

- accepted → sent; unreachable or rejected → failed (final).
- rate-limited → retried after the provider's ``retry_after``, and the whole account pauses that
  long (the limit is the account's, not the message's); a wait beyond ``max_delay_s`` ends the
  account's messages as failed/rate_limited for a later run rather than idling this one.
- transient and certainly not taken (5xx, refused connection) → retried with exponential backoff
  and full jitter, ``max_attempts`` calls in all, then failed/transient (a later run retries).
- transient and possibly taken (read timeout, reset after sending) → retried like that only when
  the provider deduplicates; otherwise ambiguous: held, never resent blindly.
- circuit open → not attempted: failed/transient "circuit open", which a later run retries.

A retry waits on a timer, not in a worker, so backoff never idles the account's other messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from orchestrator_assets.sends.ledger import AMBIGUOUS, FAILED, SENT
from orchestrator_assets.sends.limits import CircuitBreaker, RateLimiter
from policies.policy import DispatchPolicy
from resources.channels.base import (
    RATE_LIMITED,
    TRANSIENT,
    ChannelConnector,
    HttpClient,
    OutboundMessage,
    SendResult,
)

CIRCUIT_OPEN = "circuit open: the provider account kept failing transiently, not attempted"
TOLD_TO_WAIT = "not attempted: the provider asked us to wait {:.0f} s more, beyond retry.max_delay_s"


@dataclass(frozen=True)
class Outcome:
    status: str  # SENT | FAILED | AMBIGUOUS
    result: SendResult
    attempts: int  # calls made for this message in this run (0: never attempted)


@dataclass(eq=False)
class _Pending:
    message: OutboundMessage
    attempts: int = 0


class _Account:
    def __init__(self, connector: ChannelConnector, policy: DispatchPolicy):
        self.connector = connector
        self.queue: asyncio.Queue[_Pending] = asyncio.Queue()
        limit = policy.provider_limits.get(connector.provider)
        self.limiter = RateLimiter(limit) if limit else None
        self.breaker = CircuitBreaker(policy.circuit_breaker)
        self.max_batch = getattr(connector, "max_batch", 1) if hasattr(connector, "send_batch") else 1
        self.resume_at = 0.0  # loop time before which the provider asked us not to call


class Dispatcher:
    """Sends what is submitted; ``on_done(message, outcome)`` is called once per message."""

    def __init__(
        self,
        client: HttpClient,
        policy: DispatchPolicy,
        on_done: Callable[[OutboundMessage, Outcome], None],
        rng: random.Random | None = None,
    ):
        self._client = client
        self._policy = policy
        self._on_done = on_done
        self._rng = rng or random.Random()
        self._accounts: dict[int, _Account] = {}
        self._workers: list[asyncio.Task[None]] = []
        self._outstanding = 0
        self._progress = asyncio.Event()

    @property
    def circuit_opened(self) -> int:
        return sum(account.breaker.times_opened for account in self._accounts.values())

    async def submit(self, connector: ChannelConnector, message: OutboundMessage, pacing: Sequence[RateLimiter] = ()) -> None:
        """Queue ``message`` on its account once every pacing window (tenant, campaign) has room."""
        for limiter in pacing:
            await limiter.pace()
        account = self._accounts.get(id(connector))
        if account is None:
            account = self._accounts[id(connector)] = _Account(connector, self._policy)
            self._workers += [asyncio.create_task(self._work(account)) for _ in range(self._policy.max_in_flight_per_account)]
        self._outstanding += 1
        account.queue.put_nowait(_Pending(message))

    async def wait_below(self, count: int, timeout: float | None = None) -> bool:
        """Wait until fewer than ``count`` messages are unanswered; False if ``timeout`` passed first."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while self._outstanding >= count:
            self._progress.clear()
            remaining = None if deadline is None else deadline - loop.time()
            if remaining is not None and remaining <= 0:
                return False
            try:
                await asyncio.wait_for(self._progress.wait(), remaining)
            except TimeoutError:
                return False
        return True

    async def close(self) -> None:
        """Wait for every answer, then stop the workers."""
        await self.wait_below(1)
        for worker in self._workers:
            worker.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)

    async def _work(self, account: _Account) -> None:
        while True:
            batch = [await account.queue.get()]
            while len(batch) < account.max_batch and not account.queue.empty():
                batch.append(account.queue.get_nowait())
            await self._call(account, batch)

    async def _call(self, account: _Account, batch: list[_Pending]) -> None:
        pause = account.resume_at - asyncio.get_running_loop().time()
        if pause > self._policy.retry.max_delay_s:
            return self._give_up(batch, SendResult(ok=False, error_class=RATE_LIMITED, error=TOLD_TO_WAIT.format(pause)))
        if pause > 0:
            await asyncio.sleep(pause)
        if not account.breaker.allow():
            return self._give_up(batch, SendResult(ok=False, error_class=TRANSIENT, error=CIRCUIT_OPEN))
        connector = account.connector
        for pending in batch:
            pending.attempts += 1
        try:
            async with account.limiter.call() if account.limiter else contextlib.nullcontext():
                if len(batch) == 1:
                    results = [await connector.send(self._client, batch[0].message)]
                else:
                    results = await connector.send_batch(self._client, [pending.message for pending in batch])  # type: ignore[attr-defined]
        except Exception as exc:  # noqa: BLE001 - a connector bug: whether the request went out is unknown
            results = [SendResult(ok=False, error_class=TRANSIENT, error=f"connector raised {exc!r}", may_have_been_accepted=True)] * len(batch)
        account.breaker.record(all(result.error_class == TRANSIENT for result in results))
        for pending, result in zip(batch, results, strict=True):
            self._settle(account, pending, result)

    def _settle(self, account: _Account, pending: _Pending, result: SendResult) -> None:
        if result.ok:
            return self._finish(pending, SENT, result)
        if result.error_class not in (TRANSIENT, RATE_LIMITED):
            return self._finish(pending, FAILED, result)
        if result.may_have_been_accepted and not account.connector.provider_deduplicates:
            return self._finish(pending, AMBIGUOUS, result)
        retry = self._policy.retry
        if result.retry_after is not None:
            delay = result.retry_after
            account.resume_at = max(account.resume_at, asyncio.get_running_loop().time() + delay)
        else:
            delay = self._rng.uniform(0, min(retry.max_delay_s, retry.base_delay_s * 2 ** (pending.attempts - 1)))
        if pending.attempts >= retry.max_attempts or delay > retry.max_delay_s:
            return self._finish(pending, FAILED, result)
        asyncio.get_running_loop().call_later(delay, account.queue.put_nowait, pending)

    def _give_up(self, batch: list[_Pending], result: SendResult) -> None:
        """End messages without a call: retryable failures that a later run picks up."""
        for pending in batch:
            self._finish(pending, FAILED, result)

    def _finish(self, pending: _Pending, status: str, result: SendResult) -> None:
        self._outstanding -= 1
        self._progress.set()
        self._on_done(pending.message, Outcome(status, result, pending.attempts))
