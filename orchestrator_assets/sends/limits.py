"""Rate windows and circuit breakers for provider calls.

Providers count calls in a sliding window on *their* side, at the moment a request reaches them,
and that moment lies somewhere between our send and their answer. A limiter that only counts send
times on our side (aiolimiter's leaky bucket, pyrate-limiter's sliding-window log) therefore lets
the provider see X+1 calls inside one second whenever transit or queueing time varies. Measured
(a one-off script: 64 workers calling through each limiter for 10 s) against the sandbox with its
limit equal to ours, X = 200/s:

    aiolimiter 1.3.0 AsyncLimiter(X, 1 s)        225 limit violations, 0.99 of the allowed rate
    pyrate-limiter 4.5.1 Rate(X, 1 s) (log)      3 violations (82 with two CPU hogs running), 0.97
    either with a 2-3 % send-time margin         still 1-48 violations per run
    CallWindow below                             0 violations (0 with the CPU hogs), 0.99-1.0

So ``CallWindow`` is hand-rolled: a call holds its place from before the request until one period
after the answer, which bounds what the provider can count *whatever* the transit time was; a
send-time margin can only make that likely, at a fixed throughput cost. ``bench/dispatch.py``
re-measures the whole limiter on every run (``limit_violations``, ``limited_achieved_over_allowed``).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Callable

from policies.policy import CircuitBreakerPolicy, RateLimit

SPREAD_S = 0.1  # default burst: a tenth of a second's worth of calls


class CallWindow:
    """At most ``limit`` calls in any ``period`` seconds, as the far end counts them.

    ``acquire()`` before the request, ``release()`` after the answer (or the failure): the call is
    counted from the first until ``period`` after the second. Waiters are served first come, first
    served (an ``asyncio.Lock`` queues fairly).
    """

    def __init__(self, limit: int, period: float):
        self.limit = limit
        self.period = period
        self._open = 0  # acquired, not yet released
        # When each released call leaves the window, oldest first: every expiry is the release time
        # plus the same period, so appending keeps the order. (A heap took ~2 µs a call per window
        # holding a second's calls, ~5 % of a send's CPU with provider, tenant and campaign limits.)
        self._expiries: deque[float] = deque()
        self._queue = asyncio.Lock()
        self._released = asyncio.Event()

    def _has_room(self, now: float) -> bool:
        expiries = self._expiries
        while expiries and expiries[0] <= now:
            expiries.popleft()
        return self._open + len(expiries) < self.limit

    def free(self, now: float) -> bool:
        """A place is free at loop time ``now`` and no one is queued for one (so no one waits)."""
        return not self._queue.locked() and self._has_room(now)

    def take(self, now: float) -> None:
        """Count a call that has no answer to wait for from ``now``, when ``free(now)``."""
        self._expiries.append(now + self.period)

    async def acquire(self) -> None:
        loop = asyncio.get_running_loop()
        if self._queue.locked() or not self._has_room(loop.time()):
            async with self._queue:
                while not self._has_room(now := loop.time()):
                    if self._expiries:
                        await asyncio.sleep(self._expiries[0] - now)
                    else:  # every place is held by a call still waiting for its answer
                        self._released.clear()
                        await self._released.wait()
        self._open += 1

    def release(self) -> None:
        self._open -= 1
        self._expiries.append(asyncio.get_running_loop().time() + self.period)
        self._released.set()

    async def pace(self) -> None:
        """Take a place for something that has no answer to wait for (counted from now)."""
        now = asyncio.get_running_loop().time()
        if self.free(now):
            self.take(now)
            return
        await self.acquire()
        self.release()


class RateLimiter:
    """A policy ``RateLimit`` (``per_second``, optional ``burst``) as two windows.

    ``window`` is what the far end counts: ``per_second`` calls in any second (rates below one per
    second: one call per ``1 / per_second`` s; a ``burst`` above ``per_second`` widens it to
    ``burst`` calls in ``burst / per_second`` s), each call held until one period after its answer.
    ``spread`` keeps a full window from leaving in one burst: at most ``burst`` calls (default a
    tenth of a second's worth) in any ``burst / per_second`` s, counted at send time. A burst of a
    whole second's calls would queue behind our own in-flight bound, inflate every answer's latency
    and so, through ``window``, the pause before the next second; spread calls keep answers fast.
    """

    def __init__(self, limit: RateLimit):
        size = max(1, math.floor(limit.per_second), limit.burst or 0)
        self.window = CallWindow(size, size / limit.per_second)
        burst = limit.burst or max(1, round(limit.per_second * SPREAD_S))
        self.spread = CallWindow(burst, burst / limit.per_second) if burst < size else None

    def call(self) -> _HeldCall:
        """``async with limiter.call():`` holds a place for the duration of one provider call."""
        return _HeldCall(self)

    async def pace(self) -> None:
        """Take a place for a message handed on now (tenant and campaign pacing)."""
        now = asyncio.get_running_loop().time()
        if self.window.free(now) and (self.spread is None or self.spread.free(now)):  # most calls: no waiting
            self.window.take(now)
            if self.spread is not None:
                self.spread.take(now)
            return
        if self.spread is not None:
            await self.spread.pace()
        await self.window.pace()


class _HeldCall:
    """``RateLimiter.call()`` as a plain class: an ``asynccontextmanager`` cost ~1.5 µs more a call."""

    __slots__ = ("_limiter",)

    def __init__(self, limiter: RateLimiter):
        self._limiter = limiter

    async def __aenter__(self) -> None:
        window, spread = self._limiter.window, self._limiter.spread
        await window.acquire()
        if spread is not None:
            try:
                await spread.pace()
            except BaseException:
                window.release()
                raise

    async def __aexit__(self, *exc_info: object) -> None:
        self._limiter.window.release()


class CircuitBreaker:
    """Stops calling a provider account that keeps failing transiently.

    Closed: calls go through; ``failure_threshold`` consecutive transient failures open it. Open:
    ``allow()`` is False, so sends are not attempted. After ``reset_after_s`` one trial call is let
    through (half-open): its success closes the breaker, its failure opens it again. Any answer that
    is not a transient failure (sent, rejected, rate-limited…) proves the provider is up and resets
    the count.
    """

    def __init__(self, policy: CircuitBreakerPolicy, clock: Callable[[], float] = time.monotonic):
        self._threshold = policy.failure_threshold
        self._reset_after = policy.reset_after_s
        self._clock = clock
        self._failures = 0
        self._opened_at: float | None = None
        self._trial = False
        self.times_opened = 0

    def allow(self) -> bool:
        if self._opened_at is None:
            return True
        if self._trial or self._clock() - self._opened_at < self._reset_after:
            return False
        self._trial = True
        return True

    def record(self, transient_failure: bool) -> None:
        if not transient_failure:
            self._failures, self._opened_at = 0, None
        else:
            self._failures += 1
            if self._trial or (self._opened_at is None and self._failures >= self._threshold):
                self._opened_at = self._clock()
                self.times_opened += 1
        self._trial = False
