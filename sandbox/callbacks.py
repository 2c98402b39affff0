"""Webhook delivery from the sandbox to the account's receiver, with the providers' retry behaviour.

Each accepted send may queue a chain of callbacks (e.g. delivered → opened → clicked). A chain runs
in its own asyncio task: it waits `delay_s` (so the send's HTTP answer reaches the sender first, as it
usually does in production), then POSTs each callback in order. A non-2xx answer (for VK and SMS.ru
also a 2xx without their expected body, "ok" and "100") or a connection error is retried up to
`max_attempts` POSTs with exponential backoff; Mailgun treats 406 as "rejected, do not retry".
Every attempt is rebuilt (re-signed where the signature is dated: Mailgun with a fresh timestamp and
token, SendGrid with a fresh timestamp), so a retry never trips the receiver's replay or staleness
checks.

A chain may be submitted under a group (Telegram: one per bot), so a provider can report how many of
its callbacks are still pending and drop them (Telegram's getWebhookInfo and drop_pending_updates).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx

# A callback's body and headers, built afresh for each attempt.
Build = Callable[[], tuple[Mapping[str, Any], Mapping[str, str]]]


@dataclass(frozen=True)
class Callback:
    url: str
    build: Build
    final_statuses: frozenset[int] = frozenset()  # non-2xx answers that end retrying (Mailgun: 406)
    form: bool = False  # post the body form-urlencoded (Twilio) instead of as JSON
    expected_body: str | None = None  # the answer body that counts as accepted (VK "ok", SMS.ru "100"); None: any
    # Reads an accepted answer's body: Telegram executes a Bot API call named in a webhook's answer.
    on_answer: Callable[[httpx.Response], None] | None = None
    # Told about every failed attempt (the answer, or the transport error): Telegram's getWebhookInfo
    # reports the last delivery error.
    on_error: Callable[[httpx.Response | httpx.HTTPError], None] | None = None


@dataclass
class _Progress:
    """A running chain: its group and how many of its callbacks are neither delivered nor given up."""

    group: str | None
    left: int


class CallbackDispatcher:
    """Runs callback chains in the background and counts what became of each callback."""

    def __init__(self, delay_s: float, max_attempts: int, backoff_s: float, concurrency: int):
        self._delay_s, self._max_attempts, self._backoff_s = delay_s, max_attempts, backoff_s
        self._concurrency = concurrency
        self._client: httpx.AsyncClient | None = None
        self._slots: asyncio.Semaphore | None = None
        self._chains: dict[asyncio.Task[None], _Progress] = {}
        self.queued = self.delivered = self.failed = 0

    async def start(self) -> None:
        # At most `concurrency` POSTs in flight. The rest queue on a semaphore rather than in httpx's
        # connection pool, which slows down badly (and times out) with thousands of waiters.
        self._slots = asyncio.Semaphore(self._concurrency)
        self._client = httpx.AsyncClient(limits=httpx.Limits(max_connections=self._concurrency), timeout=5.0)

    async def aclose(self) -> None:
        self.cancel_all()
        if self._client is not None:
            await self._client.aclose()

    def submit(self, chain: list[Callback], group: str | None = None) -> None:
        if not chain:
            return
        self.queued += len(chain)
        progress = _Progress(group, len(chain))
        task = asyncio.get_running_loop().create_task(self._run(chain, progress))
        self._chains[task] = progress
        task.add_done_callback(lambda done: self._chains.pop(done, None))

    def pending(self, group: str) -> int:
        """Callbacks of `group` not yet delivered nor given up."""
        return sum(progress.left for progress in self._chains.values() if progress.group == group)

    def drop(self, group: str) -> int:
        """Cancel the chains of `group`; their undelivered callbacks count as failed. Returns how many."""
        dropped = 0
        for task, progress in list(self._chains.items()):
            if progress.group == group:
                task.cancel()
                dropped += progress.left
                self.failed += progress.left
                progress.left = 0
                del self._chains[task]
        return dropped

    def cancel_all(self) -> None:
        for task in list(self._chains):
            task.cancel()
        self._chains.clear()

    def reset(self) -> None:
        self.cancel_all()
        self.queued = self.delivered = self.failed = 0

    def stats(self) -> dict[str, int]:
        pending = self.queued - self.delivered - self.failed
        return {"queued": self.queued, "delivered": self.delivered, "failed": self.failed, "pending": pending}

    async def _run(self, chain: list[Callback], progress: _Progress) -> None:
        await asyncio.sleep(self._delay_s)
        for callback in chain:
            if await self._deliver(callback):
                self.delivered += 1
            else:
                self.failed += 1
            progress.left -= 1

    async def _deliver(self, callback: Callback) -> bool:
        assert self._client is not None and self._slots is not None, "dispatcher used outside the app lifespan"
        for attempt in range(1, self._max_attempts + 1):
            try:
                async with self._slots:
                    body, headers = callback.build()
                    encoded = {"data": body} if callback.form else {"json": body}
                    response = await self._client.post(callback.url, headers=dict(headers), **encoded)
            except httpx.HTTPError as exc:  # connection refused or timed out: retried like a 5xx
                failure: httpx.Response | httpx.HTTPError = exc
            else:
                if response.is_success and callback.expected_body in (None, response.text.strip()):
                    if callback.on_answer is not None:
                        callback.on_answer(response)
                    return True
                failure = response
            if callback.on_error is not None:
                callback.on_error(failure)
            if isinstance(failure, httpx.Response) and failure.status_code in callback.final_statuses:
                return False
            if attempt < self._max_attempts:
                await asyncio.sleep(self._backoff_s * 2 ** (attempt - 1))
        return False
