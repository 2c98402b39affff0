"""Dispatch throughput and rate-limit accuracy against the provider sandbox in its own process.

    .venv/bin/python bench/dispatch.py [--messages 100000] [--limit 200] [--limited-seconds 10]

1. Clients: the same request loop through httpx's own pool, the send path's client
   (``orchestrator_assets.sends.http``: httpx's interface on aiohttp) and plain aiohttp.
2. Throughput: ``--messages`` Telegram messages through the full send path (ledger on a scratch
   SQLite file, limiter, connector, HTTP) with limits that never bind, and, against the same
   sandbox, a plain aiohttp loop sending as many requests, the most this machine and sandbox
   serve: ``ratio`` = msgs_per_s / raw_req_per_s (target >= 0.5). ``raw_client_req_per_s`` is the
   send path's client in the same bare loop, so ``ratio_vs_client`` is what the ledger, limiter
   and engine cost on their own.
3. Limits: the sandbox bot limited to ``--limit`` calls per second (its sliding one-second window
   answers 429 beyond that) and our provider limit set to the same number; ``limit × seconds``
   messages go through the send path, taking T seconds. ``limited_achieved_over_allowed`` = (calls
   the sandbox took / T) / limit, and ``limit_violations`` is the sandbox's own count of calls over
   its limit. (Our limiter spreads calls from the first one on, so no first-second burst inflates
   the rate; a sender bursting a whole second's calls at t=0 could show up to (T + 1) / T.)

Progress goes to stderr; the last stdout line is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import httpx
from harness import (
    TENANT,
    outgoing,
    sandbox_process,
    sandbox_reset,
    sandbox_stats,
    scratch_ledger,
)

from orchestrator_assets.sends.http import provider_client
from orchestrator_assets.sends.run import send_messages
from policies.policy import DispatchPolicy, RateLimit
from resources.channels.telegram import TelegramConnector

FAST_TOKEN, LIMITED_TOKEN = "100001:fast", "100002:limited"
NON_BINDING = RateLimit(per_second=1_000_000)


def log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


async def request_loop(post, count: int, concurrency: int) -> float:
    """Requests per second for ``count`` sendMessage calls, ``concurrency`` at a time."""
    numbers = iter(range(count))

    async def worker() -> None:
        for n in numbers:
            await post({"chat_id": 800_000_000 + n, "text": f"Hello {n}"})

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return count / (time.perf_counter() - started)


async def with_client(url: str, count: int, concurrency: int, send_path_client: bool) -> float:
    """The send path's client, or else httpx's own."""
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    client = provider_client(concurrency) if send_path_client else httpx.AsyncClient(limits=limits, timeout=15)
    async with client:

        async def post(body: dict) -> None:
            (await client.post(url, json=body)).json()

        return await request_loop(post, count, concurrency)


async def with_aiohttp(url: str, count: int, concurrency: int) -> float:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:

        async def post(body: dict) -> None:
            async with session.post(url, json=body) as response:
                await response.json()

        return await request_loop(post, count, concurrency)


def send_path(workdir: Path, name: str, url: str, token: str, count: int, policy: DispatchPolicy) -> tuple[float, dict]:
    """(seconds, outcome totals) for ``count`` messages through the send path on a fresh ledger."""
    engine = scratch_ledger(workdir / f"{name}.sqlite", count)
    items = outgoing(TelegramConnector(url, token), name, count)
    started = time.perf_counter()
    report = asyncio.run(send_messages(engine, TENANT, f"bench-{name}", items, policy))
    seconds = time.perf_counter() - started
    engine.dispose()
    return seconds, dict(report.totals)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--client-requests", type=int, default=5_000, help="requests per client in the client comparison")
    parser.add_argument("--concurrency", type=int, default=64, help="requests in flight (= max_in_flight_per_account)")
    parser.add_argument("--limit", type=int, default=200, help="calls per second allowed by the sandbox and by our limiter")
    parser.add_argument("--limited-seconds", type=int, default=10)
    args = parser.parse_args()
    config = {"telegram": [{"token": FAST_TOKEN}, {"token": LIMITED_TOKEN, "rate_limit_per_s": args.limit}]}
    result: dict = {"messages": args.messages, "concurrency": args.concurrency}
    with tempfile.TemporaryDirectory() as tmp, sandbox_process(config, Path(tmp)) as url:
        fast = f"{url}/bot{FAST_TOKEN}/sendMessage"
        clients = {}
        for name, run in (
            ("httpx", lambda: with_client(fast, args.client_requests, args.concurrency, send_path_client=False)),
            ("send_path_client", lambda: with_client(fast, args.client_requests, args.concurrency, send_path_client=True)),
            ("aiohttp", lambda: with_aiohttp(fast, args.client_requests, args.concurrency)),
        ):
            sandbox_reset(url)
            clients[name] = round(asyncio.run(run()))
            log(f"client {name}: {clients[name]} req/s")
        result["client_req_per_s"] = clients

        sandbox_reset(url)
        raw_client = asyncio.run(with_client(fast, args.messages, args.concurrency, send_path_client=True))
        log(f"raw loop, send path's client: {raw_client:.0f} req/s")
        sandbox_reset(url)
        raw = asyncio.run(with_aiohttp(fast, args.messages, args.concurrency))
        log(f"raw loop, plain aiohttp: {raw:.0f} req/s")
        sandbox_reset(url)
        open_policy = DispatchPolicy(
            max_in_flight_per_account=args.concurrency,
            provider_limits={"telegram": NON_BINDING},
            tenant_limit=NON_BINDING,
            campaign_limit=NON_BINDING,
        )
        seconds, totals = send_path(Path(tmp), "throughput", url, FAST_TOKEN, args.messages, open_policy)
        evaluated = sum(sandbox_stats(url, "telegram")["outcomes"].values())
        log(f"send path: {args.messages / seconds:.0f} msg/s, {totals}, sandbox evaluated {evaluated}")
        result.update(
            msgs_per_s=round(args.messages / seconds),
            raw_req_per_s=round(raw),
            ratio=round(args.messages / seconds / raw, 3),
            raw_client_req_per_s=round(raw_client),
            ratio_vs_client=round(args.messages / seconds / raw_client, 3),
            outcomes=totals,
            sandbox_received=evaluated,
        )

        sandbox_reset(url)
        limited_policy = DispatchPolicy(max_in_flight_per_account=args.concurrency, provider_limits={"telegram": RateLimit(per_second=args.limit)})
        count = args.limit * args.limited_seconds
        seconds, totals = send_path(Path(tmp), "limited", url, LIMITED_TOKEN, count, limited_policy)
        stats = sandbox_stats(url, "telegram")
        taken = sum(stats["outcomes"].values())
        log(f"limited: {count} messages in {seconds:.2f} s, {totals}, sandbox {stats}")
        result.update(
            limit_per_s=args.limit,
            limited_seconds=round(seconds, 2),
            limited_achieved_over_allowed=round(taken / seconds / args.limit, 3),
            limit_violations=stats["limit_violations"],
        )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
