"""Async dispatch of claimed messages through the channel connectors.

Bounded concurrency per connector keeps us inside what one provider account tolerates; a
rate-limited answer is retried after the provider's own wait hint, because the provider said
it did *not* take the message. Transient failures are not retried here: a timeout may hide a
message the provider did take, and resending it blindly is how duplicates happen.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import httpx

from resources.channels.base import ChannelConnector, OutboundMessage, SendResult

MAX_IN_FLIGHT_PER_CONNECTOR = 16
RATE_LIMIT_ATTEMPTS = 5
MAX_RETRY_AFTER_S = 30.0


@dataclass(frozen=True)
class Job:
    connector: ChannelConnector
    message: OutboundMessage


async def _send_one(client: httpx.AsyncClient, job: Job, gate: asyncio.Semaphore) -> SendResult:
    result = SendResult(ok=False, error_class="rate_limited", error="not attempted")
    for attempt in range(RATE_LIMIT_ATTEMPTS):
        async with gate:
            result = await job.connector.send(client, job.message)
        if result.error_class != "rate_limited":
            return result
        await asyncio.sleep(min(result.retry_after or 2.0**attempt, MAX_RETRY_AFTER_S))
    return result


async def dispatch(jobs: Sequence[Job], on_done: Callable[[OutboundMessage, SendResult], None]) -> None:
    """Send every job; ``on_done`` is called as each answer arrives (progress, batched ledger writes)."""
    gates: dict[int, asyncio.Semaphore] = {}
    async with httpx.AsyncClient(timeout=httpx.Timeout(15.0), limits=httpx.Limits(max_connections=64)) as client:

        async def run(job: Job) -> None:
            gate = gates.setdefault(id(job.connector), asyncio.Semaphore(MAX_IN_FLIGHT_PER_CONNECTOR))
            on_done(job.message, await _send_one(client, job, gate))

        await asyncio.gather(*(run(job) for job in jobs))
