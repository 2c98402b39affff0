"""The sandbox's memory: received messages, counters, rate-limit windows, fault draws, callbacks.

One `SandboxState` per app. Everything here runs on the server's event loop thread, so plain
containers need no locks.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import random
import time
from collections import Counter, defaultdict, deque
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

from starlette.requests import Request

from sandbox.callbacks import CallbackDispatcher
from sandbox.config import SandboxConfig

# Test knobs a client may send with any provider call (never sent by the real providers' clients):
FAULT_HEADER = "X-Sandbox-Fault"  # "503": answer with that status instead of handling the call
DELAY_HEADER = "X-Sandbox-Delay"  # "1.5": wait that many seconds first (to provoke client timeouts)


@dataclass(frozen=True)
class Refusal:
    """Why a well-formed call is refused before it reaches the outcome table."""

    status: int
    description: str
    retry_after: int | None = None


@dataclass
class ProviderStats:
    accepted: int = 0
    refused: int = 0
    limit_violations: int = 0  # calls over the account's rate limit (answered the provider's way)
    button_answers: int = 0  # button presses answered (Telegram answerCallbackQuery, VK sendMessageEventAnswer)
    outcomes: Counter[str] = field(default_factory=Counter)

    def as_json(self) -> dict[str, Any]:
        return {
            "accepted": self.accepted,
            "refused": self.refused,
            "limit_violations": self.limit_violations,
            "button_answers": self.button_answers,
            "outcomes": dict(self.outcomes),
        }


class SandboxState:
    def __init__(self, config: SandboxConfig):
        self.config = config
        self.dispatcher = CallbackDispatcher(
            config.callback_delay_s, config.callback_max_attempts, config.callback_backoff_s, config.callback_concurrency
        )
        # Webhook settings per bot token (sandbox.telegram_webhook.Webhook), from setWebhook/deleteWebhook;
        # a bot without an entry uses its config. Survives /_sandbox/reset like the real bot's webhook.
        self.telegram_webhooks: dict[str, Any] = {}
        # Ids start from the clock in ms so a restarted sandbox never reuses an id a receiver has stored.
        base = int(time.time() * 1000)
        self.message_ids, self.update_ids = itertools.count(base), itertools.count(base)
        self.reset()

    def reset(self) -> None:
        self.messages: list[dict[str, Any]] = []
        self.stats: defaultdict[str, ProviderStats] = defaultdict(ProviderStats)
        self._windows: dict[tuple[str, str], deque[float]] = {}
        # Per-provider scratch space that a reset forgets too: idempotency keys, message states (VK, SMSC).
        self.memory: defaultdict[str, dict[Any, Any]] = defaultdict(dict)
        self._faults = random.Random(self.config.fault_seed)
        self.dispatcher.reset()

    def record(self, provider: str, outcome: str, accepted: bool, **fields: Any) -> None:
        """Remember one evaluated recipient (accepted or refused by its outcome, e.g. blocked)."""
        stats = self.stats[provider]
        stats.outcomes[outcome] += 1
        if accepted:
            stats.accepted += 1
        else:
            stats.refused += 1
        received_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        self.messages.append({"provider": provider, "outcome": outcome, "received_at": received_at, **fields})

    def refuse(self, provider: str) -> None:
        self.stats[provider].refused += 1

    async def admit(self, request: Request, provider: str, account: str, rate_limit: int | None) -> Refusal | None:
        """Apply the test knobs, the fault rate and the account's rate limit to an authenticated call."""
        if delay := request.headers.get(DELAY_HEADER):
            await asyncio.sleep(float(delay))
        forced = request.headers.get(FAULT_HEADER)
        if forced or (self.config.fault_rate and self._faults.random() < self.config.fault_rate):
            status = int(forced or HTTPStatus.SERVICE_UNAVAILABLE)
            return Refusal(status, HTTPStatus(status).phrase)
        if rate_limit and (wait := self._throttle((provider, account), rate_limit)):
            self.stats[provider].limit_violations += 1
            return Refusal(HTTPStatus.TOO_MANY_REQUESTS, "Too Many Requests", retry_after=wait)
        return None

    def _throttle(self, key: tuple[str, str], per_second: int) -> int | None:
        """Sliding one-second window; the whole seconds until a slot frees up, or None if admitted."""
        now = time.monotonic()
        window = self._windows.setdefault(key, deque())
        while window and now - window[0] >= 1.0:
            window.popleft()
        if len(window) >= per_second:
            return max(1, math.ceil(1.0 - (now - window[0])))
        window.append(now)
        return None
