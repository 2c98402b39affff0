"""Outbound webhook endpoints that push back or keep failing, over real HTTP to a loopback receiver.

A 429/503 with Retry-After (seconds or an HTTP-date) holds the row and its whole endpoint that
long, capped, and never shorter than the backoff; time is moved with the delivery's clock, never
slept. After a subscription's ``disable_after_failures`` failed attempts in a row the endpoint is
disabled: its deliveries wait (not lost, not dead-lettered), the disabling is recorded and told to
the tenant as a ``webhook.endpoint_disabled`` event, a check fails, and after an operator enables it
(recorded with who and why) everything that waited goes out. A success in between resets the count.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from email.utils import format_datetime

import dagster as dg
import pytest
import sqlalchemy as sa
from standardwebhooks import Webhook
from test_webhooks import DEMO_SECRET, DEMO_SECRET_ENV, NOW, Receiver, check_of, deliver, outbox_rows, seed, tick, utc, write_config

from definitions import defs
from orchestrator_assets.webhooks.assets import DEAD_LETTER_CHECK, DISABLED_CHECK
from orchestrator_assets.webhooks.delivery import deliver_due, endpoints_for, retry_after
from orchestrator_assets.webhooks.endpoints import ENDPOINT_DISABLED, ENDPOINT_ENABLED
from orchestrator_assets.webhooks.events import consent_event
from orchestrator_assets.webhooks.outbox import DELIVERED, PENDING, enqueue
from policies import loader
from policies.loader import load_bundle
from policies.policy import WebhookDeliveryPolicy
from policies.tenants import WebhookSubscription
from resources.opstore import OperationalStore, migrate
from resources.opstore_schema import contacts, metadata, webhook_attempts, webhook_endpoint_events, webhook_endpoints, webhook_outbox
from sandbox.server import run_uvicorn_in_thread
from sensors.webhooks import delivery_run_requests

THRESHOLD = 3
ONE_AT_A_TIME = {"max_attempts": 10, "base_delay_s": 1, "max_delay_s": 600, "timeout_s": 5, "max_in_flight": 1}  # posts in outbox order
UPSTREAM_DOWN = "HTTP 503: upstream down"


@pytest.fixture
def tenant_receiver():
    """The tenant's endpoints on loopback (not conftest's ``receiver``, which records the sandbox's callbacks)."""
    receiver = Receiver()
    with run_uvicorn_in_thread(receiver.app) as receiver.url:
        yield receiver


@pytest.fixture
def engine(tenant_receiver, algor_home, tmp_path, monkeypatch):
    """demo subscribes ``crm`` (disabled after THRESHOLD failures in a row) and ``alerts``, which
    asks only for webhook.endpoint_disabled; the store is seeded like test_webhooks'."""
    config = tmp_path / "config"
    subscriptions = [
        {"name": "crm", "url": f"{tenant_receiver.url}/demo/crm", "events": ["consent.withdrawn"], "secret_env": DEMO_SECRET_ENV, "disable_after_failures": THRESHOLD},
        {"name": "alerts", "url": f"{tenant_receiver.url}/demo/alerts", "events": ["webhook.endpoint_disabled"], "secret_env": DEMO_SECRET_ENV},
    ]
    write_config(config, {"demo": subscriptions}, delivery_policy=ONE_AT_A_TIME)
    monkeypatch.setattr(loader, "DEFAULT_CONFIG_DIR", config)
    monkeypatch.setenv(DEMO_SECRET_ENV, DEMO_SECRET)
    store = OperationalStore()
    store.migrate()
    engine = store.engine()
    seed(engine)
    return engine


def enqueue_withdrawals(engine: sa.Engine, count: int) -> None:
    """``count`` consent.withdrawn events for crm (one per channel name), due now."""
    events = [consent_event("withdraw", "demo", 1, f"ch{n}", "marketing", "form:unsubscribe", NOW) for n in range(count)]
    with engine.begin() as conn:
        assert enqueue(conn, "demo", load_bundle().tenants["demo"].webhooks, events, NOW) == count


def run_at(engine: sa.Engine, moment: dt.datetime, policy: WebhookDeliveryPolicy | None = None):
    """One delivery pass for demo with the clock stopped at ``moment``."""
    endpoints = endpoints_for(load_bundle().tenants["demo"].webhooks)
    return asyncio.run(deliver_due(engine, "demo", "run-x", endpoints, policy or WebhookDeliveryPolicy(**ONE_AT_A_TIME), clock=lambda: moment))


def endpoint(engine: sa.Engine, name: str = "crm"):
    with engine.connect() as conn:
        return conn.execute(sa.select(webhook_endpoints).where(webhook_endpoints.c.subscription == name)).one_or_none()


def endpoint_events(engine: sa.Engine) -> list:
    with engine.connect() as conn:
        return conn.execute(sa.select(webhook_endpoint_events).order_by(webhook_endpoint_events.c.id)).all()


def sensor_wants_a_run(engine: sa.Engine, moment: dt.datetime) -> bool:
    with engine.connect() as conn:
        return bool(delivery_run_requests(conn, {}, moment)[0])


# --- Retry-After -----------------------------------------------------------------------------------


def test_retry_after_seconds_hold_the_row_and_its_endpoint_until_then(engine, tenant_receiver):
    tenant_receiver.answer_next("/demo/crm", (429, {"Retry-After": "30"}))
    enqueue_withdrawals(engine, 2)
    t0 = dt.datetime.now(dt.UTC)

    first = run_at(engine, t0)
    assert [p.status for p in tenant_receiver.posts("/demo/crm")] == [429]
    assert first.held == 1  # the second row: the endpoint asked everyone to wait
    (attempt,) = attempts(engine)
    assert (attempt.status_code, attempt.retry_after_s) == (429, 30)
    row = next(r for r in outbox_rows(engine) if r.attempts == 1)
    assert utc(row.next_attempt_at) >= t0 + dt.timedelta(seconds=30)  # the backoff alone would be 0.5–1 s

    for seconds in (1, 15, 29):  # neither the row nor its endpoint is due before 30 s
        assert run_at(engine, t0 + dt.timedelta(seconds=seconds)).totals == {}
        assert not sensor_wants_a_run(engine, t0 + dt.timedelta(seconds=seconds))
    assert len(tenant_receiver.posts("/demo/crm")) == 1

    assert sensor_wants_a_run(engine, t0 + dt.timedelta(seconds=31))
    assert run_at(engine, t0 + dt.timedelta(seconds=31)).totals == {"delivered": 2}
    assert [p.status for p in tenant_receiver.posts("/demo/crm")] == [429, 200, 200]


def test_retry_after_as_an_http_date(engine, tenant_receiver):
    t0 = dt.datetime.now(dt.UTC).replace(microsecond=0)
    tenant_receiver.answer_next("/demo/crm", (503, {"Retry-After": format_datetime(t0 + dt.timedelta(seconds=45), usegmt=True)}))
    enqueue_withdrawals(engine, 1)
    run_at(engine, t0)
    assert run_at(engine, t0 + dt.timedelta(seconds=44)).totals == {}
    assert run_at(engine, t0 + dt.timedelta(seconds=46)).totals == {"delivered": 1}
    assert [p.status for p in tenant_receiver.posts("/demo/crm")] == [503, 200]


def test_a_retry_after_beyond_the_longest_wait_is_capped(engine, tenant_receiver):
    tenant_receiver.answer_next("/demo/crm", (429, {"Retry-After": "86400"}))  # a day
    enqueue_withdrawals(engine, 1)
    t0 = dt.datetime.now(dt.UTC)
    run_at(engine, t0)
    (attempt,) = attempts(engine)
    finished = utc(attempt.started_at) + dt.timedelta(milliseconds=attempt.latency_ms)
    cap = dt.timedelta(seconds=ONE_AT_A_TIME["max_delay_s"])
    (row,) = outbox_rows(engine)
    assert (attempt.retry_after_s, utc(row.next_attempt_at) - finished, utc(endpoint(engine).paused_until) - finished) == (86400, cap, cap)
    assert run_at(engine, finished + cap - dt.timedelta(seconds=1)).totals == {}
    assert run_at(engine, finished + cap + dt.timedelta(seconds=1)).totals == {"delivered": 1}


def attempts(engine: sa.Engine) -> list:
    with engine.connect() as conn:
        return conn.execute(sa.select(webhook_attempts).order_by(webhook_attempts.c.id)).all()


def test_retry_after_parsing():
    now = dt.datetime(2026, 10, 21, 7, 27, 15, tzinfo=dt.UTC)
    assert retry_after(429, "30", now) == dt.timedelta(seconds=30)
    assert retry_after(503, " 120 ", now) == dt.timedelta(seconds=120)
    assert retry_after(503, "Wed, 21 Oct 2026 07:28:00 GMT", now) == dt.timedelta(seconds=45)
    assert retry_after(429, "Wed, 21 Oct 2026 07:00:00 GMT", now) == dt.timedelta(0)  # already past: no wait of its own
    for status, value in ((500, "30"), (200, "30"), (429, None), (429, ""), (429, "soon"), (429, "-5"), (429, "1.5"), (429, "٣٠")):
        assert retry_after(status, value, now) is None, (status, value)


# --- auto-disable ----------------------------------------------------------------------------------


def test_failures_in_a_row_disable_the_endpoint_keep_its_deliveries_tell_the_tenant_until_enabled(engine, tenant_receiver, instance):
    tenant_receiver.fail_first("/demo/crm", 100)
    enqueue_withdrawals(engine, 5)

    (request,) = tick(instance, None)[0]
    result = deliver(instance, request)
    assert [p.status for p in tenant_receiver.posts("/demo/crm")] == [503] * THRESHOLD  # then nothing more this run
    metadata = result.get_asset_materialization_events()[0].materialization.metadata
    assert metadata["endpoints_disabled_by_this_run"].value == ["crm"] and metadata["held_endpoint_paused_or_disabled"].value == 2
    assert "| crm |" in metadata["by_subscription"].value and "disabled since" in metadata["by_subscription"].value
    reason = f"{THRESHOLD} failed attempts in a row (disable_after_failures: {THRESHOLD}); last: {UPSTREAM_DOWN}"
    disabled_check = check_of(result, DISABLED_CHECK)
    assert not disabled_check.passed and disabled_check.metadata["disabled_endpoints"].value == 1
    assert f"| crm | {tenant_receiver.url}/demo/crm |" in disabled_check.metadata["disabled"].value
    assert f"| {reason} | 5 |" in disabled_check.metadata["disabled"].value  # why, and the deliveries waiting
    assert check_of(result, DEAD_LETTER_CHECK).passed  # nothing was given up

    crm_rows = [r for r in outbox_rows(engine) if r.subscription == "crm"]
    assert [r.status for r in crm_rows] == [PENDING] * 5 and [r.attempts for r in crm_rows] == [1, 1, 1, 0, 0]
    state = endpoint(engine)
    assert state.disabled_at is not None and state.disabled_reason == reason and state.consecutive_failures == THRESHOLD
    (disabled,) = endpoint_events(engine)
    assert (disabled.event, disabled.subscription, disabled.url, disabled.reason, disabled.actor, disabled.run_id) == (
        ENDPOINT_DISABLED, "crm", f"{tenant_receiver.url}/demo/crm", reason, "webhook_delivery_job", result.run_id
    )

    # The tenant hears of it on the subscription that asked, signed like every webhook; crm gets nothing while disabled.
    with engine.begin() as conn:
        conn.execute(sa.update(webhook_outbox).values(next_attempt_at=dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)))
    requests, cursor = tick(instance, None)
    (request,) = requests
    deliver(instance, request)
    (alert,) = tenant_receiver.posts("/demo/alerts")
    body = Webhook(DEMO_SECRET).verify(alert.body, alert.headers)
    assert body["type"] == "webhook.endpoint_disabled" and body["data"]["contact"] is None
    assert {k: body["data"][k] for k in ("tenant", "subscription", "url", "reason", "consecutive_failures")} == {
        "tenant": "demo", "subscription": "crm", "url": f"{tenant_receiver.url}/demo/crm", "reason": reason, "consecutive_failures": THRESHOLD
    }
    assert len(tenant_receiver.posts("/demo/crm")) == THRESHOLD
    assert tick(instance, cursor)[0] == []  # crm's due rows launch nothing while it is disabled

    # An operator enables it again, saying who and why; everything that waited goes out.
    job = defs.resolve_job_def("enable_webhook_endpoints_job")

    def enable(config: dict) -> dg.ExecuteInProcessResult:
        return job.execute_in_process(instance=instance, run_config={"ops": {"enable_webhook_endpoints": {"config": config}}}, raise_on_error=False)

    who = {"operator": "anna@ops.example.ru", "reason": "CRM back up (ticket 4711)"}
    assert not enable({**who, "subscriptions": ["crm"]}).success  # <tenant>/<subscription>
    assert not enable({**who, "subscriptions": ["demo/nope"]}).success  # not in tenants.yaml
    assert not enable({**who, "operator": " ", "subscriptions": ["demo/crm"]}).success  # who decides is recorded
    assert endpoint(engine).disabled_at is not None
    tenant_receiver.fail_first("/demo/crm", 0)
    enabled = enable({**who, "subscriptions": ["demo/crm", "demo/alerts"]})
    assert enabled.success and enabled.output_for_node("enable_webhook_endpoints") == 1  # alerts was never disabled
    assert [(e.event, e.actor, e.reason, e.consecutive_failures) for e in endpoint_events(engine)] == [
        (ENDPOINT_DISABLED, "webhook_delivery_job", reason, THRESHOLD),
        (ENDPOINT_ENABLED, "anna@ops.example.ru", "CRM back up (ticket 4711)", THRESHOLD),
    ]
    assert endpoint_events(engine)[-1].run_id == enabled.run_id
    assert (endpoint(engine).disabled_at, endpoint(engine).consecutive_failures) == (None, 0)

    (request,) = tick(instance, cursor)[0]
    result = deliver(instance, request)
    assert [r.status for r in outbox_rows(engine) if r.subscription == "crm"] == [DELIVERED] * 5
    assert [p.status for p in tenant_receiver.posts("/demo/crm")] == [503] * THRESHOLD + [200] * 5
    assert len({p.headers["webhook-id"] for p in tenant_receiver.posts("/demo/crm")}) == 5
    assert check_of(result, DISABLED_CHECK).passed and check_of(result, DEAD_LETTER_CHECK).passed


def test_a_success_in_between_resets_the_count(engine, tenant_receiver):
    tenant_receiver.answer_next("/demo/crm", *[(503, {}), (503, {}), (200, {}), (503, {}), (503, {}), (503, {})])
    enqueue_withdrawals(engine, 5)
    t0 = dt.datetime.now(dt.UTC)

    report = run_at(engine, t0)
    assert [p.status for p in tenant_receiver.posts("/demo/crm")] == [503, 503, 200, 503, 503]
    assert report.disabled == [] and endpoint(engine).consecutive_failures == 2  # not 4: the 200 reset it
    assert endpoint(engine).disabled_at is None and endpoint_events(engine) == []

    report = run_at(engine, t0 + dt.timedelta(hours=1))  # the four failed rows are due again
    assert [p.status for p in tenant_receiver.posts("/demo/crm")][5:] == [503]  # the third in a row …
    assert report.disabled == ["crm"] and report.held == 3  # … disables it; the rest wait
    assert endpoint(engine).disabled_at is not None and [e.event for e in endpoint_events(engine)] == [ENDPOINT_DISABLED]


# --- PostgreSQL: the same bookkeeping on the production store ---------------------------------------


def test_pause_and_disable_on_postgres(postgres_url, tenant_receiver, monkeypatch):
    migrate(postgres_url)
    engine = sa.create_engine(postgres_url)
    monkeypatch.setenv(DEMO_SECRET_ENV, DEMO_SECRET)
    crm = WebhookSubscription(name="crm", url=f"{tenant_receiver.url}/demo/crm", events=["consent.withdrawn"], secret_env=DEMO_SECRET_ENV, disable_after_failures=2)
    alerts = WebhookSubscription(name="alerts", url=f"{tenant_receiver.url}/demo/alerts", events=["webhook.endpoint_disabled"], secret_env=DEMO_SECRET_ENV)
    policy = WebhookDeliveryPolicy(**ONE_AT_A_TIME)
    try:
        with engine.begin() as conn:
            conn.execute(sa.insert(contacts).values(id=1, tenant="demo", external_id="crm-1", created_at=NOW, updated_at=NOW))
            events = [consent_event("withdraw", "demo", 1, f"ch{n}", "marketing", "x", NOW) for n in range(3)]
            enqueue(conn, "demo", [crm, alerts], events, NOW)
        tenant_receiver.answer_next("/demo/crm", (429, {"Retry-After": "30"}), (503, {}))
        endpoints = endpoints_for([crm, alerts])
        t0 = dt.datetime.now(dt.UTC)

        def run(moment: dt.datetime):
            return asyncio.run(deliver_due(engine, "demo", "run-pg", endpoints, policy, clock=lambda: moment))

        assert run(t0).held == 2  # paused by its Retry-After
        state = endpoint(engine)
        assert state.consecutive_failures == 1 and utc(state.paused_until) >= t0 + dt.timedelta(seconds=30) and state.disabled_at is None
        assert run(t0 + dt.timedelta(seconds=29)).totals == {}
        report = run(t0 + dt.timedelta(seconds=31))
        assert report.disabled == ["crm"] and report.held == 2  # the second failure in a row
        assert [e.event for e in endpoint_events(engine)] == [ENDPOINT_DISABLED]
        assert {(r.subscription, r.event_type, r.status) for r in outbox_rows(engine)} == {
            ("crm", "consent.withdrawn", PENDING), ("alerts", "webhook.endpoint_disabled", PENDING)
        }
        assert run(t0 + dt.timedelta(seconds=32)).totals == {"delivered": 1}  # only the alert goes out
    finally:
        metadata.drop_all(engine)
        with engine.begin() as conn:
            conn.execute(sa.text("DROP TABLE alembic_version"))
        engine.dispose()
