"""Webhook ingestion under load: signed callbacks into the gateway, then the inbox sensor's runs.

    .venv/bin/python bench/ingest.py [--events 100000] [--duplicates 0.1] [--concurrency 64] [--workers 1]

1. A fresh embedded deployment in a temp ALGOR_HOME (SQLite store, chDB warehouse). The send
   ledger is seeded with the messages the callbacks are about, each with the provider message id
   its provider reports, so every status applies to a real send.
2. ``python -m gateway`` as its own process on loopback (``--workers`` processes). This process
   posts ``--events`` distinct callback events, plus ``--duplicates`` of them again (whole posts,
   as a provider retries), shuffled, ``--concurrency`` at a time, each signed exactly as its
   provider signs: Telegram's secret-token header, Mailgun's HMAC (a fresh token per attempt),
   Twilio's X-Twilio-Signature over URL and form, SendGrid's ECDSA over timestamp and body (several
   events per post, as SendGrid batches). First attempts are signed before the load starts:
   providers sign on their own machines, and signing here (ECDSA above all) would take CPU from
   the gateway being measured on a 2-core machine. A 5xx or a connection error is retried like a
   provider would, re-signed then; a 4xx is a refusal and counts against ``lost``.
   ``events_per_s`` = events acknowledged (2xx, duplicates included) / load seconds; latencies are
   per POST, client side.
3. The processing the daemon would do: ``webhook_inbox_sensor`` evaluated against a real Dagster
   instance, each run request it yields executed (``delivery_processing_job``, its partition and
   run config), until the inbox is drained.
4. ``lost`` = distinct events sent whose warehouse event is missing; ``double_counted`` = warehouse
   events (``FINAL``, as the reports read it) beyond one per event id, plus events nobody sent;
   ``status_mismatches`` = deliveries whose status is not the furthest one their callbacks reported.

Progress goes to stderr; the last stdout line is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import datetime as dt
import gc
import json
import os
import random
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlencode

import aiohttp
import dagster as dg
import sqlalchemy as sa
import yaml
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from harness import FIRST_CHAT_ID, free_port, gateway_process, log, scratch_ledger

from definitions import defs
from policies.loader import load_tenants
from policies.tenants import Tenant
from resources import warehouse as wh
from resources.channels import sendgrid
from resources.embedded_keys import sendgrid_sandbox_signing_key
from resources.opstore import OperationalStore
from resources.opstore_schema import deliveries, sends, webhook_inbox
from resources.settings import get_settings
from resources.warehouse import Warehouse
from sandbox import mailgun as mailgun_side
from sandbox import twilio as twilio_side
from sensors.inbox import webhook_inbox_sensor

TENANT = "demo"  # a partition of the processing job
DEPLOYMENT_VARS = ("ALGOR_ENV", "ALGOR_DATABASE_URL", "ALGOR_WAREHOUSE_DSN", "ALGOR_SANDBOX_URL", "ALGOR_GATEWAY_URL", "ALGOR_ALLOW_SANDBOX_WITH")
JSON = {"Content-Type": "application/json"}
FORM = {"Content-Type": "application/x-www-form-urlencoded"}
# What each provider reports per message, in the order it happens; (provider, channel, statuses).
LIFECYCLES = {
    "telegram": ("telegram", ("clicked",)),  # inline-button presses; delivery is the send itself
    "mailgun": ("email", ("delivered", "opened", "clicked")),
    "twilio": ("whatsapp", ("delivered", "read")),
    "sendgrid": ("email", ("delivered", "open", "click")),
}
STATUS = {"read": wh.OPENED, "open": wh.OPENED, "click": wh.CLICKED}  # provider words -> our status
SENDGRID_EVENTS_PER_POST = 5
QUIET_RUN = {"loggers": {"console": {"config": {"log_level": "INFO"}}}}  # step events only at DEBUG
MAX_ATTEMPTS = 6
TWILIO_SID = "AC" + "b" * 32
TWILIO_SENDER = "+14155238886"


@dataclass(frozen=True)
class Message:
    """One seeded send and the callbacks its provider will make about it."""

    number: int  # contact id too
    provider: str
    send_id: str = field(default_factory=lambda: str(uuid.uuid4()))

    @property
    def channel(self) -> str:
        return LIFECYCLES[self.provider][0]

    @property
    def address(self) -> str:
        return {
            "telegram": str(FIRST_CHAT_ID + self.number),
            "email": f"c{self.number}@bench.example.ru",
            "whatsapp": f"+7916{self.number:07d}",
        }[self.channel]

    @property
    def provider_message_id(self) -> str:
        return {
            "telegram": f"{self.address}:{self.number}",
            "mailgun": f"{self.number}.bench@mg.demo.example.ru",
            "twilio": f"SM{self.number:032x}",
            "sendgrid": f"sgmsg{self.number:016x}",
        }[self.provider]

    def final_status(self) -> str:
        last = LIFECYCLES[self.provider][1][-1]
        return STATUS.get(last, last)


@dataclass
class Post:
    """One HTTP callback; ``sign`` builds body and headers as the provider does for each attempt."""

    path: str
    sign: Callable[[], tuple[bytes, dict[str, str]]]
    event_ids: tuple[str, ...]  # the warehouse event ids of its events


@dataclass
class Load:
    latencies: list[float] = field(default_factory=list)
    statuses: Counter = field(default_factory=Counter)
    acknowledged_events: int = 0
    refused_event_ids: set[str] = field(default_factory=set)
    retries: int = 0
    seconds: float = 0.0


def bench_tenant(base: Tenant) -> Tenant:
    """The demo tenant with a Twilio and a SendGrid account added (unset secrets: the run home's sandbox secrets)."""
    accounts = base.accounts.model_dump(exclude_none=True) | {
        "twilio": {"account_sid": TWILIO_SID, "auth_token_env": "ALGOR_DEMO_TWILIO_AUTH_TOKEN", "whatsapp_sender": TWILIO_SENDER},
        "sendgrid": {
            "api_key_env": "ALGOR_DEMO_SENDGRID_API_KEY",
            "webhook_public_key_env": "ALGOR_DEMO_SENDGRID_WEBHOOK_KEY",
            "sender": "shop@demo.example.ru",
        },
    }
    return Tenant.model_validate(base.model_dump(exclude_none=True) | {"accounts": accounts})


class Callbacks:
    """Builds each provider's posts, signed with the secrets the gateway verifies against."""

    def __init__(self, tenant: Tenant, gateway_url: str) -> None:
        secret, accounts = get_settings().secret, tenant.accounts
        self.gateway_url = gateway_url
        self.telegram_secret = secret(accounts.telegram.webhook_secret_env)
        self.mailgun_key = secret(accounts.mailgun.signing_key_env)
        self.twilio_token = secret(accounts.twilio.auth_token_env)
        pem = sendgrid_sandbox_signing_key(accounts.sendgrid.webhook_public_key_env)
        self.sendgrid_key = serialization.load_pem_private_key(pem.encode(), password=None)
        self._update_ids = iter(range(1, 1 << 62))

    def posts(self, messages: list[Message], rng: random.Random) -> list[Post]:
        posts: list[Post] = []
        sendgrid_events: list[dict] = []
        for message in messages:
            for status in LIFECYCLES[message.provider][1]:
                if message.provider == "sendgrid":
                    sendgrid_events.append(self._sendgrid_event(message, status))
                else:
                    posts.append(getattr(self, message.provider)(message, status))
        rng.shuffle(sendgrid_events)  # a SendGrid post mixes events of many messages
        for start in range(0, len(sendgrid_events), SENDGRID_EVENTS_PER_POST):
            posts.append(self.sendgrid(sendgrid_events[start : start + SENDGRID_EVENTS_PER_POST]))
        return posts

    def telegram(self, message: Message, status: str) -> Post:
        update_id = next(self._update_ids)
        chat = int(message.address)
        update = {
            "update_id": update_id,
            "callback_query": {
                "id": str(update_id),
                "from": {"id": chat, "is_bot": False, "first_name": "Bench"},
                "message": {"message_id": message.number, "chat": {"id": chat, "type": "private"}, "date": int(time.time())},
                "chat_instance": str(chat),
                "data": "want",
            },
        }
        body, headers = json.dumps(update).encode(), {**JSON, "X-Telegram-Bot-Api-Secret-Token": self.telegram_secret}
        return Post(f"/hooks/{TENANT}/telegram", lambda: (body, headers), (f"telegram:update:{update_id}",))

    def mailgun(self, message: Message, status: str) -> Post:
        data = {
            "id": uuid.uuid4().hex[:22],
            "event": status,
            "timestamp": round(time.time(), 6),
            "recipient": message.address,
            "message": {"headers": {"message-id": message.provider_message_id}},
            "user-variables": {"send_id": message.send_id},
        }
        if status == "clicked":
            data["url"] = "https://shop.example.ru/sale"

        def sign() -> tuple[bytes, dict[str, str]]:  # Mailgun re-signs every attempt: fresh timestamp and token
            return json.dumps({"signature": mailgun_side.signature(self.mailgun_key), "event-data": data}).encode(), JSON

        return Post(f"/hooks/{TENANT}/mailgun", sign, (f"mailgun:{data['id']}",))

    def twilio(self, message: Message, status: str) -> Post:
        path, sid = f"/hooks/{TENANT}/twilio", message.provider_message_id
        params = {
            "AccountSid": TWILIO_SID,
            "ApiVersion": twilio_side.API_VERSION,
            "From": f"whatsapp:{TWILIO_SENDER}",
            "To": f"whatsapp:{message.address}",
            "MessageSid": sid,
            "SmsSid": sid,
            "MessageStatus": status,
            "SmsStatus": status,
            "ChannelPrefix": "whatsapp",
            "ChannelToAddress": message.address,
        }
        headers = {**FORM, "X-Twilio-Signature": twilio_side.signature(self.twilio_token, self.gateway_url + path, params)}
        body = urlencode(params).encode()
        return Post(path, lambda: (body, headers), (f"twilio:{sid}:{status}",))

    def _sendgrid_event(self, message: Message, status: str) -> dict:
        return {
            "email": message.address,
            "timestamp": int(time.time()),
            "event": status,
            "sg_event_id": base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("="),
            "sg_message_id": f"{message.provider_message_id}.filterdrecv-5645d9c87f-bench-1-0",
            sendgrid.SEND_ID: message.send_id,
        }

    def sendgrid(self, events: list[dict]) -> Post:
        body = json.dumps(events).encode()

        def sign() -> tuple[bytes, dict[str, str]]:  # SendGrid signs every attempt afresh
            timestamp = str(int(time.time()))
            signature = self.sendgrid_key.sign(timestamp.encode() + body, ec.ECDSA(hashes.SHA256()))
            return body, {**JSON, sendgrid.SIGNATURE_HEADER: base64.b64encode(signature).decode(), sendgrid.TIMESTAMP_HEADER: timestamp}

        return Post(f"/hooks/{TENANT}/sendgrid", sign, tuple(f"sendgrid:{event['sg_event_id']}" for event in events))


def plan_messages(events: int) -> list[Message]:
    """Messages whose callbacks add up to at least ``events`` events, a quarter from each provider."""
    messages: list[Message] = []
    for provider, (_, statuses) in LIFECYCLES.items():
        count = -(-events // 4 // len(statuses))
        messages += [Message(len(messages) + n + 1, provider) for n in range(count)]
    return messages


def seed_ledger(home: Path, messages: list[Message]) -> sa.Engine:
    """Contacts and sent ledger rows for every message (as a finished campaign run leaves them)."""
    engine = scratch_ledger(home / "operational.sqlite3", len(messages), tenant=TENANT)
    now = dt.datetime.now(dt.UTC)
    rows = [
        {
            "send_id": m.send_id, "tenant": TENANT, "campaign": "bench", "step": "main", "contact_id": m.number, "channel": m.channel,
            "provider": m.provider, "address": m.address, "status": "sent", "run_id": "bench", "provider_message_id": m.provider_message_id,
            "claimed_at": now, "finished_at": now,
        }
        for m in messages
    ]  # fmt: skip
    with engine.begin() as conn:
        for start in range(0, len(rows), 5000):
            conn.execute(sa.insert(sends), rows[start : start + 5000])
    return engine


async def post_all(base_url: str, posts: list[Post], concurrency: int) -> Load:
    """Send every post, ``concurrency`` at a time, retrying 5xx and connection errors with backoff."""
    load, queue = Load(), iter([(post, post.sign()) for post in posts])  # each list entry its own signature
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency), timeout=timeout) as session:

        async def deliver(post: Post, signed: tuple[bytes, dict[str, str]]) -> None:
            for attempt in range(1, MAX_ATTEMPTS + 1):
                body, headers = signed if attempt == 1 else post.sign()
                started = time.perf_counter()
                try:
                    async with session.post(base_url + post.path, data=body, headers=headers) as response:
                        await response.read()
                        status = response.status
                except (TimeoutError, aiohttp.ClientError):
                    status = 0
                load.latencies.append(time.perf_counter() - started)
                load.statuses[status] += 1
                if 200 <= status < 300:
                    load.acknowledged_events += len(post.event_ids)
                    return
                if 400 <= status < 500 or attempt == MAX_ATTEMPTS:
                    load.refused_event_ids.update(post.event_ids)
                    return
                load.retries += 1
                await asyncio.sleep(0.05 * 2**attempt)

        async def worker() -> None:
            for post, signed in queue:
                await deliver(post, signed)

        async def progress() -> None:
            while True:
                await asyncio.sleep(5)
                elapsed = time.perf_counter() - started
                log(
                    f"  {len(load.latencies):,} posts, {load.acknowledged_events:,} events acknowledged, {load.acknowledged_events / elapsed:,.0f} events/s"
                )

        started = time.perf_counter()
        reporter = asyncio.create_task(progress())
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        load.seconds = time.perf_counter() - started
        reporter.cancel()
    return load


def process_inbox(instance: dg.DagsterInstance, drain_timeout_s: float) -> tuple[int, float]:
    """Evaluate the inbox sensor and execute what it requests, as the daemon would, until the inbox
    is drained (or only rows waiting past ``drain_timeout_s`` for a retry are left)."""
    job = defs.resolve_job_def("delivery_processing_job")
    opstore = OperationalStore()
    cursor, runs, started = None, 0, time.perf_counter()
    while True:
        outcome = webhook_inbox_sensor(dg.build_sensor_context(instance=instance, cursor=cursor, resources={"opstore": opstore}))
        if isinstance(outcome, dg.SkipReason):
            if not unprocessed(opstore.engine()) or time.perf_counter() - started > drain_timeout_s:
                return runs, time.perf_counter() - started
            time.sleep(1)  # rows waiting for their retry backoff
            continue
        for request in outcome.run_requests:
            log(f"  run {request.run_key}")
            tags = {**request.tags, "dagster/run_key": request.run_key}
            run_config = {**request.run_config, **QUIET_RUN}
            result = job.execute_in_process(instance=instance, partition_key=request.partition_key, run_config=run_config, tags=tags)
            if not result.success:
                raise RuntimeError(f"delivery processing run {result.run_id} failed")
            runs += 1
        cursor = outcome.cursor


def unprocessed(engine: sa.Engine) -> int:
    query = sa.select(sa.func.count()).where(webhook_inbox.c.processed_at.is_(None), webhook_inbox.c.dead_lettered_at.is_(None))
    with engine.connect() as conn:
        return conn.execute(query).scalar_one()


def warehouse_counts() -> tuple[Counter, int]:
    """(event id -> rows as the reports read them (FINAL), raw rows appended) for the tenant."""
    with Warehouse().client() as client:
        final = client.query(
            f"SELECT event_id, count() FROM {wh.EVENTS_TABLE} FINAL WHERE tenant = %(t)s GROUP BY event_id", parameters={"t": TENANT}
        )
        raw = client.query(f"SELECT count() FROM {wh.EVENTS_TABLE} WHERE tenant = %(t)s", parameters={"t": TENANT})
        return Counter(dict(final.result_rows)), raw.result_rows[0][0]


def status_mismatches(engine: sa.Engine, messages: list[Message]) -> int:
    with engine.connect() as conn:
        have = dict(conn.execute(sa.select(deliveries.c.send_id, deliveries.c.status)).all())
    return sum(1 for m in messages if have.get(m.send_id) != m.final_status())


def percentile(sorted_values: list[float], fraction: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(len(sorted_values) * fraction))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000, help="distinct callback events to send")
    parser.add_argument("--duplicates", type=float, default=0.1, help="share of posts sent twice (provider retries)")
    parser.add_argument("--concurrency", type=int, default=64, help="posts in flight")
    parser.add_argument("--workers", type=int, default=1, help="gateway worker processes (2 measured no faster on 2 cores)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--drain-timeout", type=float, default=120, help="seconds to wait for rows in retry backoff")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    for name in DEPLOYMENT_VARS:
        os.environ.pop(name, None)
    with tempfile.TemporaryDirectory(prefix="algor-ingest-") as tmp:
        home = Path(tmp) / "algor"
        os.environ["ALGOR_HOME"] = str(home)  # this process reads the same store and warehouse
        tenant = bench_tenant(load_tenants().tenants[TENANT])
        tenants_file = Path(tmp) / "tenants.yaml"
        tenants_file.write_text(
            yaml.safe_dump({"tenants": {TENANT: tenant.model_dump(mode="json", exclude_none=True)}}, allow_unicode=True)
        )

        messages = plan_messages(args.events)
        engine = seed_ledger(home, messages)
        port = free_port()
        callbacks = Callbacks(tenant, f"http://127.0.0.1:{port}")
        posts = callbacks.posts(messages, rng)
        distinct = sum(len(post.event_ids) for post in posts)
        posts += [post for post in posts if rng.random() < args.duplicates]
        rng.shuffle(posts)
        duplicates = sum(len(post.event_ids) for post in posts) - distinct
        log(f"{len(messages):,} sends seeded; {len(posts):,} posts carrying {distinct:,} events + {duplicates:,} duplicates")
        gc.freeze()  # the posts live to the end: keep the collector from rescanning them mid-load

        gateway_args = ["--workers", str(args.workers), "--tenants", str(tenants_file)]
        with gateway_process(home, port, gateway_args, Path(tmp) / "gateway.log") as url:
            log(f"gateway ({args.workers} worker(s)) at {url}; posting, {args.concurrency} in flight")
            load = asyncio.run(post_all(url, posts, args.concurrency))
        latencies = sorted(load.latencies)
        events_per_s = load.acknowledged_events / load.seconds
        log(
            f"load: {load.acknowledged_events:,} events acknowledged in {load.seconds:.1f} s = {events_per_s:,.0f} events/s; statuses {dict(load.statuses)}"
        )
        with engine.connect() as conn:
            inbox_rows = conn.execute(sa.select(sa.func.count()).select_from(webhook_inbox)).scalar_one()

        log("processing: webhook_inbox_sensor -> delivery_processing_job runs")
        (Path(tmp) / "dagster").mkdir()
        with dg.DagsterInstance.local_temp(tempdir=str(Path(tmp) / "dagster"), overrides={"telemetry": {"enabled": False}}) as instance:
            runs, processing_seconds = process_inbox(instance, args.drain_timeout)
        counts, raw_rows = warehouse_counts()
        expected = {event_id for post in posts for event_id in post.event_ids}
        lost = len(expected - counts.keys())
        double_counted = sum(n - 1 for n in counts.values()) + len(counts.keys() - expected)
        result = {
            "events_per_s": round(events_per_s),
            "p50_ms": round(percentile(latencies, 0.50) * 1000, 1),
            "p99_ms": round(percentile(latencies, 0.99) * 1000, 1),
            "lost": lost,
            "double_counted": double_counted,
            "events": distinct,
            "duplicates": duplicates,
            "posts": len(posts),
            "acknowledged_events": load.acknowledged_events,
            "refused_events": len(load.refused_event_ids),
            "retries": load.retries,
            "http_statuses": {str(status): n for status, n in sorted(load.statuses.items())},
            "seconds": round(load.seconds, 2),
            "posts_per_s": round(len(posts) / load.seconds),
            "max_ms": round(latencies[-1] * 1000, 1),
            "concurrency": args.concurrency,
            "gateway_workers": args.workers,
            "inbox_rows": inbox_rows,
            "processing_runs": runs,
            "processing_seconds": round(processing_seconds, 2),
            "processing_events_per_s": round(distinct / processing_seconds),
            "unprocessed": unprocessed(engine),
            "warehouse_rows_appended": raw_rows,
            "status_mismatches": status_mismatches(engine, messages),
        }
        engine.dispose()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
