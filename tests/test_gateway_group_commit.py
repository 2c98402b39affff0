"""Group commit of the webhook inbox: concurrent requests share transactions, each learns how many
of its events were new, nothing is acknowledged before it is committed, and one bad request
does not cost the others of its batch."""

from __future__ import annotations

import asyncio
import concurrent.futures
import sqlite3
import time

import httpx
import pytest
import sqlalchemy as sa
from pg import create_database, drop_database

from gateway.app import create_app
from gateway.inbox import InboxWriter
from policies.loader import load_tenants
from resources.event_keys import stored_event_key
from resources.opstore import engine_for, migrate
from resources.opstore_schema import webhook_inbox
from resources.settings import get_settings
from sandbox.server import run_uvicorn_in_thread


def store_engine() -> sa.Engine:
    url = get_settings().database_url
    migrate(url)
    return engine_for(url)


def count_commits(engine: sa.Engine) -> list[None]:
    commits: list[None] = []
    sa.event.listen(engine, "commit", lambda conn: commits.append(None))
    return commits


def inbox_keys(engine: sa.Engine) -> list[str]:
    with engine.connect() as conn:
        return conn.execute(sa.select(webhook_inbox.c.event_key).order_by(webhook_inbox.c.event_key)).scalars().all()


def telegram_update(n: int) -> tuple[str, dict]:
    return f"update:{n}", {"update_id": n}


def test_concurrent_posts_share_commits_and_each_new_event_is_credited_once(algor_home):
    engine = store_engine()
    writer = InboxWriter(engine)
    commits = count_commits(engine)
    # 40 posts at once; neighbours overlap, so every update but the first comes in two posts.
    posts = [[telegram_update(n), telegram_update(n + 1)] for n in range(40)]

    async def store_all(batch: list[list[tuple[str, dict]]]) -> list[int]:
        return await asyncio.gather(*(writer.store("demo", "telegram", events) for events in batch))

    new = asyncio.run(store_all(posts))
    assert len(commits) < len(posts)  # they shared transactions
    assert sum(new) == 41 and new[0] == 2 and set(new[1:]) == {1}
    assert inbox_keys(engine) == sorted(stored_event_key("demo", "telegram", f"update:{n}") for n in range(41))

    retried = asyncio.run(store_all(posts[:5] + [[telegram_update(99)]]))  # provider retries and one new event
    assert retried == [0, 0, 0, 0, 0, 1]
    assert len(inbox_keys(engine)) == 42


def test_the_same_event_id_is_one_event_per_tenant_and_names_no_one(algor_home):
    """The inbox keeps a keyed hash of each event id (an SMSC id spells the phone): a redelivery is
    still dropped, and the same id from another tenant or provider is another event."""
    engine = store_engine()
    writer = InboxWriter(engine)
    raw = "900001:79161234567:1"
    posts = [("demo", "smsc"), ("acme", "smsc"), ("demo", "smsru"), ("demo", "smsc")]

    async def store_all() -> list[int]:
        return [await writer.store(tenant, provider, [(raw, {"id": "900001"})]) for tenant, provider in posts]

    assert asyncio.run(store_all()) == [1, 1, 1, 0]
    keys = inbox_keys(engine)
    assert len(set(keys)) == 3 and not any("79161234567" in key for key in keys)


@pytest.fixture
def gateway(algor_home):
    with run_uvicorn_in_thread(create_app()) as url:
        yield url


def telegram_post(gateway: str, update_id: int) -> httpx.Response:
    secret = get_settings().secret(load_tenants().tenants["demo"].accounts.telegram.webhook_secret_env)
    return httpx.post(
        f"{gateway}/hooks/demo/telegram", json={"update_id": update_id}, headers={"X-Telegram-Bot-Api-Secret-Token": secret}, timeout=60
    )


def test_no_acknowledgement_before_the_commit(gateway):
    path = get_settings().database_url.removeprefix("sqlite:///")
    blocker = sqlite3.connect(path)
    blocker.execute("BEGIN IMMEDIATE")  # another writer holds the store's write lock
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        answer = pool.submit(telegram_post, gateway, 7)
        time.sleep(1.0)
        assert not answer.done()  # the provider is kept waiting, not told "stored"
        blocker.rollback()
        assert answer.result(timeout=30).status_code == 200
    blocker.close()
    assert inbox_keys(engine_for(get_settings().database_url)) == [stored_event_key("demo", "telegram", "update:7")]


def test_store_down_fails_every_request_of_the_batch_with_503(algor_home):
    url = create_database()
    app = create_app(database_url=url)
    drop_database(url)
    engine_for(url).dispose()

    async def post_many(gateway: str) -> list[int]:
        secret = get_settings().secret(load_tenants().tenants["demo"].accounts.telegram.webhook_secret_env)
        async with httpx.AsyncClient(timeout=30) as client:
            answers = await asyncio.gather(
                *(
                    client.post(
                        f"{gateway}/hooks/demo/telegram", json={"update_id": n}, headers={"X-Telegram-Bot-Api-Secret-Token": secret}
                    )
                    for n in range(20)
                )
            )
        return [answer.status_code for answer in answers]

    with run_uvicorn_in_thread(app) as gateway:
        assert asyncio.run(post_many(gateway)) == [503] * 20


def test_a_row_the_store_refuses_fails_only_its_own_request(postgres_url):
    migrate(postgres_url)
    engine = engine_for(postgres_url)
    writer = InboxWriter(engine)
    tag = str(time.time_ns())
    posts = [("demo", [(f"{tag}:{n}", {"n": n})]) for n in range(5)] + [("t" * 65, [(tag, {"n": "a tenant id too long for its column"})])]

    async def store_all() -> list[int | BaseException]:
        return await asyncio.gather(*(writer.store(tenant, "mailgun", events) for tenant, events in posts), return_exceptions=True)

    *good, bad = asyncio.run(store_all())
    assert good == [1] * 5
    assert isinstance(bad, sa.exc.DBAPIError)
    with engine.connect() as conn:
        keys = [stored_event_key("demo", "mailgun", f"{tag}:{n}") for n in range(5)]
        stored = conn.execute(sa.select(sa.func.count()).where(webhook_inbox.c.event_key.in_(keys))).scalar_one()
    assert stored == 5
