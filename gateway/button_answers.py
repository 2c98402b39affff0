"""VK button presses answered with messages.sendMessageEventAnswer, after the press is stored.

A VK callback button spins on the user's screen until the community answers the press, and the
press's id is good for about a minute. Where the answer is made, and why:

- Not in the webhook answer. Telegram takes ``answerCallbackQuery`` as the body of its webhook
  answer (``receive_telegram``), but the VK Callback API wants exactly ``ok`` there; the answer is
  an API call with the community token.
- Not in delivery processing. That runs after a sensor tick and a run's start-up, tens of seconds
  after the press: the button would spin nearly to its timeout, and a busy daemon would miss the
  minute altogether. The gateway is the one place that hears the press in time.
- Never before the gateway's own answer. The call is a background task, started only once the
  press is committed to the inbox and only by the request whose insert was new (the inbox's unique
  key decides, across workers), so a re-delivered press is stored and answered once, and VK gets its
  ``ok`` without waiting on any outbound call.
- Not durable, on purpose. The press itself is durable (the inbox row, counted as a click by
  delivery processing). The answer is worth something only within seconds: one lost to a crash
  leaves one button spinning until VK gives up, and an answer replayed from a store after a restart
  would mostly come after the press had expired. A transient failure is retried a few times while
  the press is fresh; at most ``MAX_PENDING`` presses wait, beyond that they are not answered.

Each answer leaves one JSON log line (``vk_button_answer``: tenant, press id, outcome, attempts,
error), carrying the request id of the callback that brought the press.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping

import httpx
import structlog

from policies.channels import Channel, Provider
from policies.tenants import Tenant
from resources.channels.base import REJECTED
from resources.channels.vk import VkConnector
from resources.connectors import ChannelConnectors
from resources.settings import SettingsError

PRESS_TTL_S = 60.0  # VK: a press's event_id is valid for about a minute
MAX_ATTEMPTS = 3
RETRY_WAIT_S = 0.5  # then 1 s: answers matter within seconds
TIMEOUT_S = 5.0
MAX_IN_FLIGHT = 8
MAX_PENDING = 1_000
SHUTDOWN_GRACE_S = 2.0

log = structlog.get_logger("algor.gateway.button_answers")


class ButtonAnswers:
    """Answers the VK button presses the gateway stored, each in its own background task."""

    def __init__(self, tenants: Mapping[str, Tenant]) -> None:
        self._tenants = tenants
        self._connectors = ChannelConnectors()  # the sandbox in the embedded default, VK in production
        self._client: httpx.AsyncClient | None = None
        self._slots = asyncio.Semaphore(MAX_IN_FLIGHT)
        self._tasks: set[asyncio.Task] = set()

    @property
    def in_flight(self) -> int:
        """Presses submitted and not yet answered (or given up)."""
        return len(self._tasks)

    def submit(self, tenant_id: str, press: Mapping[str, str]) -> bool:
        """Start answering ``press`` (``vk.press_answer``); returns at once, False when too many wait."""
        if len(self._tasks) >= MAX_PENDING:
            log.warning("vk_button_answer", tenant=tenant_id, press=press["event_id"], outcome="dropped", error="too many presses waiting")
            return False
        if self._client is None:  # made on the server's event loop, on first use
            self._client = httpx.AsyncClient(timeout=TIMEOUT_S)
        task = asyncio.create_task(self._answer(self._client, tenant_id, press, time.monotonic()))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True

    async def aclose(self) -> None:
        """Let answers in flight finish briefly, cancel the rest, close the HTTP client."""
        if self._tasks:
            _, late = await asyncio.wait(set(self._tasks), timeout=SHUTDOWN_GRACE_S)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def _answer(self, client: httpx.AsyncClient, tenant_id: str, press: Mapping[str, str], pressed: float) -> None:
        fields = {"tenant": tenant_id, "press": press["event_id"]}
        try:
            connector = self._connectors.for_provider(self._tenants[tenant_id], Provider.VK, Channel.VK, tenant_id)
        except SettingsError as exc:  # production without the community token: say so, answer nothing
            log.error("vk_button_answer", **fields, outcome="failed", attempts=0, error=str(exc))
            return
        assert isinstance(connector, VkConnector)
        async with self._slots:
            for attempt in range(1, MAX_ATTEMPTS + 1):
                result = await connector.answer_press(client, press)
                if result.ok or result.error_class == REJECTED or attempt == MAX_ATTEMPTS:
                    break
                wait = result.retry_after or RETRY_WAIT_S * attempt
                if time.monotonic() + wait - pressed > PRESS_TTL_S:
                    break  # the press expires before another try
                await asyncio.sleep(wait)
        outcome = "answered" if result.ok else "refused" if result.error_class == REJECTED else "failed"
        getattr(log, "info" if result.ok else "warning")("vk_button_answer", **fields, outcome=outcome, attempts=attempt, error=result.error)
