"""Tenants' outbound webhooks, over real HTTP to a loopback receiver, through real Dagster runs.

Callbacks become outbox rows in the transaction that applies them, filtered by each tenant's
subscriptions; the delivery sensor launches runs that POST them signed per Standard Webhooks; a
failing endpoint is retried with growing waits, dead-lettered (a failing check), re-queued by the
manual retry job and then delivered; every attempt is recorded; re-processing enqueues nothing
twice; two runs racing for the same rows post each row once (on PostgreSQL).
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json
import shutil
import threading
from collections import Counter
from dataclasses import dataclass

import dagster as dg
import pandas as pd
import pytest
import sqlalchemy as sa
import yaml
import sealed
from flow import process_inbox
from standardwebhooks import Webhook, WebhookVerificationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from definitions import defs
from orchestrator_assets.imports.store import record_consents, upsert_contacts
from orchestrator_assets.imports.validation import CSV_COLUMNS, validate_contact_rows
from orchestrator_assets.sends.outcomes import publish_send_outcomes
from orchestrator_assets.webhooks.assets import DEAD_LETTER_CHECK
from orchestrator_assets.webhooks.delivery import deliver_due, endpoints_for
from orchestrator_assets.webhooks.events import consent_event, message_event
from orchestrator_assets.webhooks.outbox import CANCELLED, DEAD, DELIVERED, PENDING, enqueue
from orchestrator_assets.webhooks.signing import signed_headers, signing_secret
from policies import loader
from policies.loader import PolicyError, load_bundle
from policies.policy import WebhookDeliveryPolicy
from policies.tenants import WebhookEventType, WebhookSubscription
from resources.opstore import OperationalStore, migrate
from resources.opstore_schema import contacts, metadata, sends, webhook_attempts, webhook_inbox, webhook_outbox
from consents import record
from resources.settings import SettingsError
from resources.warehouse import Warehouse
from sandbox.server import run_uvicorn_in_thread
from sensors.webhooks import webhook_delivery_sensor

NOW = dt.datetime(2026, 11, 24, 12, 0, tzinfo=dt.UTC)
GRANTED = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)  # before the callbacks (2024-05-29), which may then withdraw it
DEMO_SECRET_ENV = "ALGOR_TEST_DEMO_WEBHOOK_SECRET"
ACME_SECRET_ENV = "ALGOR_TEST_ACME_WEBHOOK_SECRET"  # left unset: derived like every embedded secret
DEMO_SECRET = "whsec_" + base64.b64encode(bytes(range(32))).decode()
TEST_POLICY = {"max_attempts": 4, "base_delay_s": 10, "max_delay_s": 600, "timeout_s": 5, "max_in_flight": 4}


# --- a tenant's endpoint on loopback ----------------------------------------------------------


@dataclass(frozen=True)
class Posted:
    path: str
    headers: dict[str, str]
    body: bytes  # raw: the signature covers these exact bytes
    status: int


class Receiver:
    """Records every POST raw and answers 200, except the POSTs to a path that ``answer_next``
    scripted (in order, with their headers) and then the first ``count`` that ``fail_first``
    scripted (503 "upstream down"); ``delay_s`` slows every answer."""

    def __init__(self, delay_s: float = 0.0):
        self.delay_s = delay_s
        self.url = ""  # set once it serves
        self._lock = threading.Lock()
        self._posts: list[Posted] = []
        self._failures: Counter[str] = Counter()
        self._scripted: dict[str, list[tuple[int, dict[str, str]]]] = {}
        self.app = Starlette(routes=[Route("/{path:path}", self._handle, methods=["POST"])])

    def fail_first(self, path: str, count: int) -> None:
        with self._lock:
            self._failures[path] = count

    def answer_next(self, path: str, *answers: tuple[int, dict[str, str]]) -> None:
        """Answer the next POSTs to ``path`` with these (status, headers), in order."""
        with self._lock:
            self._scripted.setdefault(path, []).extend(answers)

    def posts(self, path: str | None = None) -> list[Posted]:
        with self._lock:
            return [post for post in self._posts if path is None or post.path == path]

    async def _handle(self, request: Request) -> PlainTextResponse:
        body = await request.body()
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        path = "/" + request.path_params["path"]
        with self._lock:
            scripted = self._scripted.get(path)
            status, headers = scripted.pop(0) if scripted else (None, {})
            if status is None:
                failing = self._failures[path] > 0
                self._failures[path] -= failing
                status = 503 if failing else 200
            self._posts.append(Posted(path, {k.lower(): v for k, v in request.headers.items()}, body, status))
        return PlainTextResponse("upstream down" if status >= 300 else "ok", status_code=status, headers=headers)


@pytest.fixture
def endpoint():
    receiver = Receiver()
    with run_uvicorn_in_thread(receiver.app) as receiver.url:
        yield receiver


# --- policy: the shipped config plus subscriptions pointing at the receiver --------------------


def subscriptions_config(url: str) -> dict[str, list[dict]]:
    return {
        "demo": [
            {
                "name": "crm",
                "url": f"{url}/demo/crm",
                "events": ["message.sent", "message.delivered", "message.clicked", "consent.withdrawn", "consent.granted"],
                "secret_env": DEMO_SECRET_ENV,
            },
            {"name": "bounces", "url": f"{url}/demo/bounces", "events": ["message.delivery_failed", "message.send_failed"], "secret_env": DEMO_SECRET_ENV},
        ],
        "acme": [{"name": "crm", "url": f"{url}/acme/crm", "events": [t.value for t in WebhookEventType], "secret_env": ACME_SECRET_ENV}],
    }


def write_config(directory, webhooks: dict[str, list[dict]], delivery_policy: dict | None = TEST_POLICY) -> None:
    """A copy of the shipped config with these subscriptions (and delivery policy)."""
    shutil.copytree(loader.DEFAULT_CONFIG_DIR, directory, dirs_exist_ok=True)
    tenants = yaml.safe_load((directory / "tenants.yaml").read_text(encoding="utf-8"))
    for tenant, subscriptions in webhooks.items():
        tenants["tenants"][tenant]["webhooks"] = subscriptions
    (directory / "tenants.yaml").write_text(yaml.safe_dump(tenants, allow_unicode=True, sort_keys=False), encoding="utf-8")
    if delivery_policy is not None:
        policy = yaml.safe_load((directory / "policy.yaml").read_text(encoding="utf-8"))
        policy["webhook_delivery"] = delivery_policy
        (directory / "policy.yaml").write_text(yaml.safe_dump(policy, sort_keys=False), encoding="utf-8")


@pytest.fixture
def subscribed(endpoint, algor_home, tmp_path, monkeypatch):
    """Runs load the policy from a config whose tenants subscribe to the receiver."""
    config = tmp_path / "config"
    write_config(config, subscriptions_config(endpoint.url))
    monkeypatch.setattr(loader, "DEFAULT_CONFIG_DIR", config)
    monkeypatch.setenv(DEMO_SECRET_ENV, DEMO_SECRET)
    monkeypatch.delenv(ACME_SECRET_ENV, raising=False)
    return endpoint


@pytest.fixture
def engine(subscribed):
    store = OperationalStore()
    store.migrate()
    engine = store.engine()
    seed(engine)
    return engine


def seed(engine: sa.Engine) -> None:
    """Two demo contacts and one acme contact, each with a sent e-mail and a granted e-mail consent."""
    with engine.begin() as conn:
        for cid, tenant, ext in ((1, "demo", "crm-1"), (2, "demo", "crm-2"), (3, "acme", "crm-1")):
            sealed.add_contact(conn, tenant, ext, NOW, contact_id=cid, email=f"{ext}@example.ru")
        for cid, t in ((1, "demo"), (2, "demo"), (3, "acme")):
            record(conn, t, cid, "email", "grant", GRANTED)
        conn.execute(
            sa.insert(sends),
            [
                {
                    "send_id": f"s{cid}",
                    "tenant": tenant,
                    "campaign": "black_friday",
                    "step": "main",
                    "contact_id": cid,
                    "channel": "email",
                    "provider": "mailgun",
                    "address": sealed.sealed_address(conn, tenant, cid, f"c{cid}@example.ru"),
                    "status": "sent",
                    "run_id": "r",
                    "provider_message_id": f"m{cid}@mg",
                    "claimed_at": NOW,
                    "finished_at": NOW,
                    "warehouse_synced_at": NOW,
                }
                for cid, tenant in ((1, "demo"), (2, "demo"), (3, "acme"))
            ],
        )


def mailgun(event_id: str, event: str, message: str, **extra) -> dict:
    data = {"id": event_id, "event": event, "timestamp": 1717000000, "message": {"headers": {"message-id": message}}, **extra}
    return {"signature": {}, "event-data": data}


def store_inbox(engine: sa.Engine, tenant: str, *payloads: dict) -> None:
    with engine.begin() as conn:
        for payload in payloads:
            conn.execute(
                sa.insert(webhook_inbox).values(
                    tenant=tenant, provider="mailgun", account="mailgun", event_key=payload["event-data"]["id"], payload=json.dumps(payload), received_at=NOW
                )
            )


def outbox_rows(engine: sa.Engine):
    with engine.connect() as conn:
        return conn.execute(sa.select(webhook_outbox).order_by(webhook_outbox.c.id)).all()


def tick(instance, cursor):
    context = dg.build_sensor_context(instance=instance, cursor=cursor, resources={"opstore": OperationalStore()})
    result = webhook_delivery_sensor(context)
    return ([], cursor) if isinstance(result, dg.SkipReason) else (list(result.run_requests), result.cursor)


def deliver(instance, request: dg.RunRequest) -> dg.ExecuteInProcessResult:
    result = defs.resolve_job_def("webhook_delivery_job").execute_in_process(instance=instance, partition_key=request.partition_key, tags=request.tags)
    assert result.success
    return result


def check_of(result: dg.ExecuteInProcessResult, name: str):
    (check,) = [evaluation for evaluation in result.get_asset_check_evaluations() if evaluation.check_name == name]
    return check


def utc(moment: dt.datetime) -> dt.datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


# --- events in, filtered, delivered signed ----------------------------------------------------


def test_callbacks_become_signed_webhooks_for_subscribers_only_and_reprocessing_enqueues_nothing_twice(engine, subscribed, instance):
    store_inbox(
        engine,
        "demo",
        mailgun("d1", "delivered", "m1@mg"),
        mailgun("c1", "clicked", "m1@mg", url="https://shop.example.ru/sale"),
        mailgun("c2", "clicked", "m1@mg", url="https://shop.example.ru/sale"),  # every click is news
        mailgun("o1", "opened", "m1@mg"),  # a status change nobody subscribed to
        mailgun("f2", "failed", "m2@mg", severity="permanent", reason="bounce"),
        mailgun("u1", "unsubscribed", "m1@mg", recipient="crm-1@example.ru"),
    )
    store_inbox(engine, "acme", mailgun("d3", "delivered", "m3@mg"))
    requests, _ = process_inbox(instance)
    assert {r.partition_key for r in requests} == {"demo", "acme"}

    rows = outbox_rows(engine)
    by_subscription = Counter((r.tenant, r.subscription, r.event_type) for r in rows)
    assert by_subscription == {
        ("demo", "crm", "message.delivered"): 1,
        ("demo", "crm", "message.clicked"): 2,
        ("demo", "crm", "consent.withdrawn"): 1,
        ("demo", "bounces", "message.delivery_failed"): 1,
        ("acme", "crm", "message.delivered"): 1,
    }

    # Processing the same inbox rows again derives the same events; the outbox keeps one of each.
    with engine.begin() as conn:
        conn.execute(sa.update(webhook_inbox).values(processed_at=None))
    again = defs.resolve_job_def("delivery_processing_job").execute_in_process(instance=instance, partition_key="demo")
    assert again.success
    assert [r.id for r in outbox_rows(engine)] == [r.id for r in rows]
    processed = next(e for e in again.get_asset_materialization_events()).materialization.metadata
    assert processed["processed"].value == 6 and processed["webhook_events_enqueued"].value == 0

    requests, cursor = tick(instance, None)
    assert sorted(r.partition_key for r in requests) == ["acme", "demo"]
    assert tick(instance, cursor)[0] == []  # the same due rows are requested once
    results = {r.partition_key: deliver(instance, r) for r in requests}

    demo_webhook = Webhook(DEMO_SECRET)
    crm = subscribed.posts("/demo/crm")
    assert len(crm) == 4 and len(subscribed.posts("/demo/bounces")) == 1
    bodies = [demo_webhook.verify(post.body, post.headers) for post in crm]
    assert Counter(body["type"] for body in bodies) == {"message.delivered": 1, "message.clicked": 2, "consent.withdrawn": 1}
    assert {body["data"]["tenant"] for body in bodies} == {"demo"}
    assert {body["data"]["contact"]["external_id"] for body in bodies} == {"crm-1"}  # the tenant's own id
    clicked = next(body for body in bodies if body["type"] == "message.clicked")
    assert clicked["data"]["send_id"] == "s1" and clicked["data"]["reason"] == "https://shop.example.ru/sale"
    assert {post.headers["webhook-id"] for post in crm} == {r.event_id for r in rows if r.subscription == "crm" and r.tenant == "demo"}

    tampered = crm[0].body.replace(b"crm-1", b"crm-2")
    with pytest.raises(WebhookVerificationError):
        demo_webhook.verify(tampered, crm[0].headers)

    (acme_post,) = subscribed.posts("/acme/crm")  # acme hears only of its own message
    acme_body = Webhook(signing_secret(ACME_SECRET_ENV)).verify(acme_post.body, acme_post.headers)
    assert acme_body["data"]["tenant"] == "acme" and acme_body["data"]["send_id"] == "s3"
    with pytest.raises(WebhookVerificationError):
        demo_webhook.verify(acme_post.body, acme_post.headers)  # and another tenant's secret does not verify it

    assert {r.status for r in outbox_rows(engine)} == {DELIVERED}
    metadata_ = results["demo"].get_asset_materialization_events()[0].materialization.metadata
    assert metadata_["delivered"].value == 5
    assert f"| crm | {subscribed.url}/demo/crm | 4 | 0 | 0 | 4 | 0 | 0 | 0 |" in metadata_["by_subscription"].value
    check = check_of(results["demo"], DEAD_LETTER_CHECK)
    assert check.passed
    assert tick(instance, cursor)[0] == []  # nothing due any more


# --- failures: backoff, dead letter, manual retry ---------------------------------------------


def test_failing_endpoint_is_retried_with_growing_waits_then_dead_lettered_then_retried_by_hand(engine, subscribed, instance):
    subscribed.fail_first("/demo/crm", 100)
    event = consent_event("withdraw", "demo", 1, "email", "marketing", "form:unsubscribe", NOW)
    with engine.begin() as conn:
        assert enqueue(conn, "demo", load_bundle().tenants["demo"].webhooks, [event], NOW) == 1

    waits, cursor = [], None
    for attempt in range(1, TEST_POLICY["max_attempts"] + 1):
        requests, cursor = tick(instance, cursor)
        assert len(requests) == 1, f"attempt {attempt}"
        result = deliver(instance, requests[0])
        (row,) = outbox_rows(engine)
        assert row.attempts == attempt
        if row.status == PENDING:
            with engine.connect() as conn:
                last = conn.execute(sa.select(webhook_attempts).order_by(webhook_attempts.c.id.desc()).limit(1)).one()
            finished = utc(last.started_at) + dt.timedelta(milliseconds=last.latency_ms)
            waits.append((utc(row.next_attempt_at) - finished).total_seconds())
            assert tick(instance, cursor)[0] == []  # not due before its backoff ends
            with engine.begin() as conn:  # let the backoff pass
                conn.execute(sa.update(webhook_outbox).values(next_attempt_at=dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)))

    # Equal jitter on base 10 s: the n-th wait lies in [step/2, step], step = 10·2^(n-1) s, so waits grow.
    assert len(waits) == 3 and waits == sorted(waits)
    for n, wait in enumerate(waits, start=1):
        step = 10 * 2 ** (n - 1)
        assert step / 2 - 0.01 <= wait <= step + 0.01, waits

    (row,) = outbox_rows(engine)
    assert row.status == DEAD and row.dead_lettered_at is not None and row.last_error == "HTTP 503: upstream down"
    check = check_of(result, DEAD_LETTER_CHECK)
    assert not check.passed and check.metadata["dead_letters"].value == 1
    table = check.metadata["dead"].value
    assert f"| {row.id} | crm | {subscribed.url}/demo/crm | consent.withdrawn | {row.event_id} | 4 | HTTP 503: upstream down |" in table
    assert tick(instance, cursor)[0] == []  # a dead letter waits for an operator

    with engine.connect() as conn:
        attempts = conn.execute(sa.select(webhook_attempts).order_by(webhook_attempts.c.id)).all()
    assert [(a.attempt, a.status_code, a.response_excerpt) for a in attempts] == [(n, 503, "upstream down") for n in range(1, 5)]
    assert all(a.outbox_id == row.id and a.url.endswith("/demo/crm") and a.latency_ms >= 0 and a.error for a in attempts)
    assert len({a.run_id for a in attempts}) == 4

    retry_job = defs.resolve_job_def("retry_webhook_deliveries_job")
    bad = retry_job.execute_in_process(
        instance=instance, run_config={"ops": {"requeue_dead_webhooks": {"config": {"subscriptions": ["crm"]}}}}, raise_on_error=False
    )
    assert not bad.success  # "<tenant>/<subscription>", or nothing is re-queued
    subscribed.fail_first("/demo/crm", 0)
    retried = retry_job.execute_in_process(instance=instance, run_config={"ops": {"requeue_dead_webhooks": {"config": {"subscriptions": ["demo/crm"]}}}})
    assert retried.output_for_node("requeue_dead_webhooks") == 1

    (request,) = tick(instance, cursor)[0]
    result = deliver(instance, request)
    (row,) = outbox_rows(engine)
    assert row.status == DELIVERED and row.attempts == 1
    check = check_of(result, DEAD_LETTER_CHECK)
    assert check.passed
    posts = subscribed.posts("/demo/crm")
    assert [p.status for p in posts] == [503, 503, 503, 503, 200]
    assert len({p.headers["webhook-id"] for p in posts}) == 1  # one event: the receiver can drop repeats
    assert len({p.headers["webhook-timestamp"] + p.headers["webhook-signature"] for p in posts}) >= 2  # signed afresh per attempt


def test_an_endpoint_failing_its_first_posts_gets_the_event_on_a_later_attempt(engine, subscribed):
    subscribed.fail_first("/demo/bounces", 2)
    bounces = [s for s in load_bundle().tenants["demo"].webhooks if s.name == "bounces"]
    with engine.begin() as conn:
        send = conn.execute(sa.select(sends).where(sends.c.send_id == "s2")).one()
        enqueue(conn, "demo", bounces, [message_event("delivery_failed", "demo", send, "mailgun:f9", "bounce", NOW)], NOW)
    policy = WebhookDeliveryPolicy(max_attempts=5, base_delay_s=0.001, max_delay_s=0.001)
    endpoints = endpoints_for(bounces)
    for _ in range(3):
        asyncio.run(deliver_due(engine, "demo", "run-x", endpoints, policy))
        asyncio.run(asyncio.sleep(0.01))
    assert [p.status for p in subscribed.posts("/demo/bounces")] == [503, 503, 200]
    with engine.connect() as conn:
        codes = conn.execute(sa.select(webhook_attempts.c.attempt, webhook_attempts.c.status_code).order_by(webhook_attempts.c.id)).all()
    assert [tuple(c) for c in codes] == [(1, 503), (2, 503), (3, 200)]
    assert outbox_rows(engine)[0].status == DELIVERED


def test_rows_of_a_removed_subscription_are_cancelled_not_posted(engine, subscribed):
    with engine.begin() as conn:
        enqueue(conn, "demo", load_bundle().tenants["demo"].webhooks, [consent_event("withdraw", "demo", 1, "email", "marketing", "x", NOW)], NOW)
    report = asyncio.run(deliver_due(engine, "demo", "run-x", {}, WebhookDeliveryPolicy()))
    assert report.cancelled == 1 and subscribed.posts() == []
    assert outbox_rows(engine)[0].status == CANCELLED


# --- other writers of the outbox: send outcomes and consent imports ----------------------------


def test_final_send_outcomes_are_announced_once(engine, subscribed):
    def send(send_id, contact_id, channel, provider, status, message_id=None, error_class=None, error=None):
        return {
            "send_id": send_id,
            "tenant": "demo",
            "campaign": "c",
            "step": "main",
            "contact_id": contact_id,
            "channel": channel,
            "provider": provider,
            "address": b"sealed, not read here",
            "status": status,
            "run_id": "r",
            "provider_message_id": message_id,
            "error_class": error_class,
            "error": error,
            "claimed_at": NOW,
            "finished_at": NOW,
        }

    with engine.begin() as conn:
        conn.execute(
            sa.insert(sends),
            [
                send("t1", 1, "telegram", "telegram", "sent", message_id="77"),
                send("e2", 1, "email", "mailgun", "failed", error_class="unreachable", error="mailbox gone"),
                send("e3", 2, "email", "mailgun", "failed", error_class="transient", error="502"),
            ],
        )
    subscriptions = load_bundle().tenants["demo"].webhooks
    published = publish_send_outcomes(engine, Warehouse(), "demo", NOW, subscriptions)
    assert published["webhook_events_enqueued"] == 3
    assert Counter((r.subscription, r.event_type) for r in outbox_rows(engine)) == {
        ("crm", "message.sent"): 1,  # Telegram: accepted, never announced as delivered (no receipts)
        ("crm", "consent.withdrawn"): 1,  # the unreachable address
        ("bounces", "message.send_failed"): 1,  # the transient failure is not final: no event yet
    }
    assert publish_send_outcomes(engine, Warehouse(), "demo", NOW, subscriptions)["webhook_events_enqueued"] == 0


def test_imported_consent_decisions_that_change_the_state_are_announced(engine, subscribed):
    def imported(value: str, at: str) -> list:
        row = {
            **dict.fromkeys(CSV_COLUMNS, ""),
            "external_id": "new-1",
            "email": "new@example.ru",
            "consent_email": value,
            "consent_source": "crm",
            "consent_at": at,
        }
        good = validate_contact_rows(pd.DataFrame([row], columns=list(CSV_COLUMNS))).good
        events: list = []
        with engine.begin() as conn:
            upsert_contacts(conn, "demo", good, NOW)
            record_consents(conn, "demo", good, NOW, webhook_events=events)
        return [(e.type.value, e.data["occurred_at"]) for e in events]

    assert imported("yes", "2026-06-01T09:00:00Z") == [("consent.granted", "2026-06-01T09:00:00Z")]
    assert imported("no", "2026-07-01T09:00:00Z") == [("consent.withdrawn", "2026-07-01T09:00:00Z")]
    assert imported("yes", "2026-01-01T09:00:00Z") == []  # logged, but older than the withdrawal: nothing changed


# --- signatures -------------------------------------------------------------------------------


def test_signature_matches_the_standard_webhooks_test_vector_and_rejects_tampering():
    # The test vector published with the Standard Webhooks reference libraries.
    signer = Webhook("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
    at = dt.datetime.fromtimestamp(1614265330, dt.UTC)
    headers = signed_headers(signer, "msg_p5jXN8AQM9LWM0D4loKWxJek", '{"test": 2432232314}', at)
    assert headers["webhook-timestamp"] == "1614265330"
    assert headers["webhook-signature"] == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="

    now = dt.datetime.now(dt.UTC)
    fresh = signed_headers(signer, "msg_1", '{"a":1}', now)
    assert signer.verify('{"a":1}', fresh) == {"a": 1}
    for body, headers in (('{"a":2}', fresh), ('{"a":1}', {**fresh, "webhook-id": "msg_2"})):
        with pytest.raises(WebhookVerificationError):
            signer.verify(body, headers)


def test_secrets_come_from_the_named_env_var_derived_only_in_the_embedded_default(monkeypatch, algor_home):
    monkeypatch.delenv("ALGOR_X_WEBHOOK_SECRET", raising=False)
    derived = signing_secret("ALGOR_X_WEBHOOK_SECRET")
    assert derived.startswith("whsec_") and derived == signing_secret("ALGOR_X_WEBHOOK_SECRET")
    monkeypatch.setenv("ALGOR_X_WEBHOOK_SECRET", DEMO_SECRET)
    assert signing_secret("ALGOR_X_WEBHOOK_SECRET") == DEMO_SECRET
    monkeypatch.setenv("ALGOR_X_WEBHOOK_SECRET", "hunter2-hunter2")
    with pytest.raises(SettingsError, match="ALGOR_X_WEBHOOK_SECRET must hold a Standard Webhooks secret") as caught:
        signing_secret("ALGOR_X_WEBHOOK_SECRET")
    assert "hunter2" not in str(caught.value)
    monkeypatch.delenv("ALGOR_X_WEBHOOK_SECRET")
    monkeypatch.setenv("ALGOR_ENV", "production")
    monkeypatch.setenv("ALGOR_DATABASE_URL", "postgresql+psycopg://x@127.0.0.1/x")
    monkeypatch.setenv("ALGOR_WAREHOUSE_DSN", "http://x@127.0.0.1:8123/x")
    with pytest.raises(SettingsError, match="ALGOR_X_WEBHOOK_SECRET is not set"):
        signing_secret("ALGOR_X_WEBHOOK_SECRET")


# --- policy errors ----------------------------------------------------------------------------


def _subscription(**changes) -> dict:
    return {"name": "crm", "url": "https://crm.example.ru/hook", "events": ["message.delivered"], "secret_env": DEMO_SECRET_ENV, **changes}


@pytest.mark.parametrize(
    ("subscriptions", "key_path", "reason"),
    [
        pytest.param(
            [_subscription(events=["message.delivered", "message.teleported"])],
            "tenants.demo.webhooks[0].events[1]",
            "Input should be 'message.sent'",
            id="unknown event",
        ),
        pytest.param(
            [_subscription(url="ftp://crm.example.ru/hook")],
            "tenants.demo.webhooks[0].url",
            "absolute http:// or https:// URL (got 'ftp://crm.example.ru/hook')",
            id="not http",
        ),
        pytest.param([_subscription(url="crm.example.ru/hook")], "tenants.demo.webhooks[0].url", "absolute http:// or https:// URL", id="relative"),
        pytest.param(
            [_subscription(url="https://crm:s3cret@crm.example.ru/hook")], "tenants.demo.webhooks[0].url", "must not carry credentials", id="credentials"
        ),
        pytest.param([_subscription(events=[])], "tenants.demo.webhooks[0].events", "at least 1 item", id="no events"),
        pytest.param([_subscription(secret_env="whsec_abc")], "tenants.demo.webhooks[0].secret_env", "NAME of an environment variable", id="secret inline"),
        pytest.param([_subscription(), _subscription()], "tenants.demo.webhooks", "used more than once: ['crm']", id="duplicate name"),
        pytest.param(
            [_subscription(disable_after_failures=0)], "tenants.demo.webhooks[0].disable_after_failures", "greater than or equal to 1", id="never failing"
        ),
        pytest.param([_subscription(secret_env="ALGOR_ACME_MAILGUN_API_KEY")], "tenants", "used by tenants 'demo' and 'acme'", id="another tenant's secret"),
    ],
)
def test_bad_subscription_names_file_key_and_reason(tmp_path, subscriptions, key_path, reason):
    write_config(tmp_path, {"demo": subscriptions}, delivery_policy=None)
    with pytest.raises(PolicyError) as caught:
        load_bundle(tmp_path)
    message = str(caught.value)
    line = next((ln for ln in message.splitlines() if f": {key_path}: " in ln), None)
    assert line is not None and line.startswith(f"{tmp_path / 'tenants.yaml'}: "), message
    assert reason in line, message
    assert "s3cret" not in message and "whsec_abc" not in message


def test_shipped_config_subscribes_no_one():
    """The demo has no receiver: a shipped subscription would only collect dead letters."""
    assert all(not tenant.webhooks for tenant in load_bundle().tenants.values())


# --- PostgreSQL: two runs racing for the same rows --------------------------------------------


def test_two_runs_racing_on_postgres_post_each_row_once(postgres_url, tmp_path, monkeypatch):
    migrate(postgres_url)
    engine = sa.create_engine(postgres_url)
    receiver = Receiver(delay_s=0.05)
    try:
        with run_uvicorn_in_thread(receiver.app) as url:
            monkeypatch.setenv(DEMO_SECRET_ENV, DEMO_SECRET)
            subscription = WebhookSubscription.model_validate(subscriptions_config(url)["demo"][0])
            with engine.begin() as conn:
                conn.execute(sa.insert(contacts).values(id=1, tenant="demo", external_id="crm-1", created_at=NOW, updated_at=NOW))
            events = [consent_event("withdraw", "demo", 1, f"ch{n}", "marketing", "x", NOW) for n in range(40)]
            with engine.begin() as conn:
                assert enqueue(conn, "demo", [subscription], events, NOW) == 40
            with engine.begin() as conn:
                assert enqueue(conn, "demo", [subscription], events, NOW) == 0  # ON CONFLICT on PostgreSQL too

            policy = WebhookDeliveryPolicy(max_in_flight=8)
            endpoints = endpoints_for([subscription])
            reports = {}

            def run(name: str) -> None:
                reports[name] = asyncio.run(deliver_due(engine, "demo", name, endpoints, policy))

            threads = [threading.Thread(target=run, args=(name,)) for name in ("run-a", "run-b")]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(timeout=60)
        posts = receiver.posts("/demo/crm")
        assert len(posts) == 40 and len({p.headers["webhook-id"] for p in posts}) == 40
        delivered = [report.totals["delivered"] for report in reports.values()]
        assert sum(delivered) == 40 and min(delivered) > 0  # both runs posted, none a row the other had
        with engine.connect() as conn:
            assert conn.execute(sa.select(sa.func.count()).select_from(webhook_attempts)).scalar() == 40
            assert set(conn.execute(sa.select(webhook_outbox.c.status)).scalars()) == {DELIVERED}
    finally:
        metadata.drop_all(engine)
        with engine.begin() as conn:
            conn.execute(sa.text("DROP TABLE alembic_version"))
        engine.dispose()


