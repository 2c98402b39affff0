"""VK random_id from the send ledger: one number per send from a per-tenant sequence, kept on the
ledger row, so resuming a send re-uses it and VK (the sandbox, over loopback HTTP) drops the repeat.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import threading
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
import sqlalchemy as sa
import sealed
from pg import create_database, drop_database

from orchestrator_assets.sends.ledger import (
    AMBIGUOUS,
    CLAIMED,
    FAILED,
    LedgerKey,
    Wanted,
)
from orchestrator_assets.sends.run import Outgoing, SendReport, send_messages
from policies.policy import DispatchPolicy
from resources.channels.base import OutboundMessage
from resources.channels.vk import VkConnector
from resources.opstore import engine_for, migrate
from resources.opstore_schema import contacts, sends
from resources.pii import tenant_cipher
from sandbox.config import SandboxConfig, VkGroup
from sandbox.outcomes import outcome_for
from sandbox.server import running_sandbox

GROUP, TOKEN = 2001, "vk1.a.dedup-ids"


@pytest.fixture(params=["sqlite", "postgres"])
def ledger(request, algor_home, tmp_path: Path) -> Iterator[sa.Engine]:
    """A migrated, empty ledger with contacts, on SQLite and on a throw-away PostgreSQL database."""
    url = f"sqlite:///{tmp_path / 'ledger.sqlite'}" if request.param == "sqlite" else create_database()
    try:
        migrate(url)
        engine = engine_for(url)
        now = dt.datetime.now(dt.UTC)
        with engine.begin() as conn:
            ciphers = {tenant: tenant_cipher(conn, tenant) for tenant in ("t1", "t2")}
            rows = [
                {"id": n, "tenant": tenant, "external_id": f"{tenant}{n}", "data_key": ciphers[tenant].new_contact_key(), "created_at": now, "updated_at": now}
                for tenant, n in _contacts()
            ]
            conn.execute(sa.insert(contacts), rows)
        yield engine
        engine.dispose()
    finally:
        if request.param == "postgres":
            drop_database(url)


def _contacts() -> list[tuple[str, int]]:
    return [("t1", n) for n in range(1, 401)] + [("t2", n) for n in range(401, 451)]


@pytest.fixture(scope="module")
def sandbox():
    with running_sandbox(SandboxConfig(vk=[VkGroup(group_id=GROUP, access_token=TOKEN)])) as url:
        yield url


def deliverable_peers(count: int, start: int = 500_000) -> list[str]:
    peers = (str(n) for n in range(start, start + 100_000) if outcome_for("vk", str(n)) not in ("blocked",))
    return [next(peers) for _ in range(count)]


def outgoing(connector: VkConnector, peers: list[str], first_contact: int = 1, tenant: str = "t1") -> list[Outgoing]:
    return [
        Outgoing(
            Wanted(LedgerKey("promo", "main", contact, "vk"), "vk", peer),
            connector,
            OutboundMessage(send_id="", tenant=tenant, campaign="promo", channel="vk", address=peer, text=f"hi {contact}"),
        )
        for contact, peer in enumerate(peers, start=first_contact)
    ]


def send(engine: sa.Engine, items: list[Outgoing], run_id: str, tenant: str = "t1") -> SendReport:
    return asyncio.run(send_messages(engine, tenant, run_id, items, DispatchPolicy()))


def ledger_rows(engine: sa.Engine, tenant: str = "t1") -> dict[int, SimpleNamespace]:
    """The tenant's ledger rows by contact, addresses opened."""
    with engine.connect() as conn:
        return {
            row.contact_id: SimpleNamespace(**(row._asdict() | {"address": sealed.send_address(conn, row)}))
            for row in conn.execute(sa.select(sends).where(sends.c.tenant == tenant))
        }


def vk_messages(url: str) -> list[dict]:
    return httpx.get(f"{url}/_sandbox/messages", params={"provider": "vk"}).json()["messages"]


def test_every_send_gets_its_own_random_id_from_the_ledger(ledger, sandbox):
    httpx.post(f"{sandbox}/_sandbox/reset")
    connector = VkConnector(sandbox, GROUP, TOKEN)
    report = send(ledger, outgoing(connector, deliverable_peers(300)), "run-1")
    assert report.totals["sent"] == 300
    rows = ledger_rows(ledger)
    assert sorted(row.dedup_id for row in rows.values()) == list(range(1, 301))  # a sequence: no collisions
    received = {m["recipient"]: m for m in vk_messages(sandbox)}
    assert len(received) == 300
    for row in rows.values():  # VK got exactly the number the ledger recorded, and answered with a message
        assert received[row.address]["random_id"] == row.dedup_id
        assert received[row.address]["provider_message_id"] == row.provider_message_id

    # Another tenant counts on its own; the first tenant's next campaign continues its sequence.
    send(ledger, outgoing(connector, deliverable_peers(5, start=700_000), first_contact=401, tenant="t2"), "run-2", tenant="t2")
    assert sorted(row.dedup_id for row in ledger_rows(ledger, "t2").values()) == [1, 2, 3, 4, 5]
    more = [
        Outgoing(Wanted(LedgerKey("autumn", "main", item.want.key.contact_id, "vk"), "vk", item.want.address), connector, item.message)
        for item in outgoing(connector, deliverable_peers(3, start=800_000))
    ]
    send(ledger, more, "run-3")
    with ledger.connect() as conn:
        autumn = conn.execute(sa.select(sends.c.dedup_id).where(sends.c.campaign == "autumn")).scalars().all()
    assert sorted(autumn) == [301, 302, 303]


def test_resume_of_an_ambiguous_vk_send_reuses_its_random_id_and_vk_drops_the_repeat(ledger, sandbox):
    httpx.post(f"{sandbox}/_sandbox/reset")
    connector = VkConnector(sandbox, GROUP, TOKEN)
    items = outgoing(connector, deliverable_peers(20))
    assert send(ledger, items, "run-1").totals["sent"] == 20
    before = ledger_rows(ledger)
    # The run died between request and answer: its rows are still claimed, the messages went out.
    with ledger.begin() as conn:
        conn.execute(sa.update(sends).values(status=CLAIMED, run_id="run-that-died", provider_message_id=None, finished_at=None))

    report = send(ledger, items, "run-2")
    assert report.abandoned == 20  # found claimed, turned ambiguous …
    assert report.totals["sent"] == 20 and report.totals["held"] == 0  # … and resent, VK deduplicating
    after = ledger_rows(ledger)
    messages = vk_messages(sandbox)
    assert len(messages) == 20  # no second message to anyone
    by_peer = {m["recipient"]: m for m in messages}
    for contact, row in after.items():
        assert row.status == "sent" and row.run_id == "run-2"
        assert row.send_id == before[contact].send_id and row.dedup_id == before[contact].dedup_id  # same send, same random_id
        # VK answered the repeat with the first message's id, which is now on the ledger again.
        assert row.provider_message_id == before[contact].provider_message_id == by_peer[row.address]["provider_message_id"]


def test_a_retried_failure_keeps_its_random_id_and_a_keyless_ambiguous_row_is_held(ledger, sandbox):
    httpx.post(f"{sandbox}/_sandbox/reset")
    connector = VkConnector(sandbox, GROUP, TOKEN)
    items = outgoing(connector, deliverable_peers(2, start=900_000))
    now = dt.datetime.now(dt.UTC)
    with ledger.begin() as conn:
        # Contact 1: a transient failure (certainly not taken) with its number; contact 2: an
        # ambiguous row claimed before dedup ids existed (migration 0007): which random_id it went
        # out with is unknown, so it must not be repeated.
        base = {"tenant": "t1", "campaign": "promo", "step": "main", "channel": "vk", "provider": "vk", "run_id": "old", "claimed_at": now}
        conn.execute(
            sa.insert(sends),
            [
                {
                    **base,
                    "send_id": "s-failed",
                    "contact_id": 1,
                    "address": sealed.sealed_address(conn, "t1", 1, items[0].want.address),
                    "status": FAILED,
                    "error_class": "transient",
                    "dedup_id": 77,
                },
                {
                    **base,
                    "send_id": "s-keyless",
                    "contact_id": 2,
                    "address": sealed.sealed_address(conn, "t1", 2, items[1].want.address),
                    "status": AMBIGUOUS,
                    "error_class": "transient",
                    "dedup_id": None,
                },
            ],
        )
    report = send(ledger, items, "run-1")
    assert report.totals["sent"] == 1 and report.totals["held"] == 1
    rows = ledger_rows(ledger)
    assert (rows[1].status, rows[1].send_id, rows[1].dedup_id) == ("sent", "s-failed", 77)
    assert (rows[2].status, rows[2].dedup_id) == (AMBIGUOUS, None)
    [message] = vk_messages(sandbox)
    assert (message["recipient"], message["random_id"]) == (items[0].want.address, 77)


def test_runs_claiming_at_the_same_time_never_share_a_random_id(ledger, sandbox):
    """Two runs (two campaigns of one tenant) claim concurrently: the sequence row's lock gives
    each claim its own block of numbers."""
    httpx.post(f"{sandbox}/_sandbox/reset")
    connector = VkConnector(sandbox, GROUP, TOKEN)
    peers = deliverable_peers(200, start=600_000)
    batches = {
        campaign: [
            Outgoing(Wanted(LedgerKey(campaign, "main", item.want.key.contact_id, "vk"), "vk", item.want.address), connector, item.message)
            for item in outgoing(connector, peers[offset : offset + 100], first_contact=offset + 1)
        ]
        for campaign, offset in (("spring", 0), ("summer", 100))
    }
    reports: dict[str, SendReport] = {}
    threads = [threading.Thread(target=lambda c=c: reports.__setitem__(c, send(ledger, batches[c], f"run-{c}"))) for c in batches]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [reports[c].totals["sent"] for c in batches] == [100, 100]
    with ledger.connect() as conn:
        numbers = conn.execute(sa.select(sends.c.dedup_id)).scalars().all()
    assert sorted(numbers) == list(range(1, 201))
    assert sorted(m["random_id"] for m in vk_messages(sandbox)) == list(range(1, 201))
