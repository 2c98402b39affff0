"""Shared pieces of the benchmarks: a sandbox or gateway process, a scratch ledger, synthetic messages.

The sandbox and the gateway run as their own processes (``python -m sandbox``, ``python -m
gateway``) so the benchmarks measure a process on the other side of a real socket, as in production.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa

from orchestrator_assets.contact_pii import contact_columns
from orchestrator_assets.sends.ledger import LedgerKey, Wanted
from orchestrator_assets.sends.run import Outgoing
from resources.channels.base import ChannelConnector, OutboundMessage
from resources.opstore import engine_for, migrate
from resources.opstore_schema import contacts
from resources.pii import tenant_cipher

TENANT = "bench"
FIRST_CHAT_ID = 700_000_000


@contextmanager
def sandbox_process(config: dict[str, Any], workdir: Path) -> Iterator[str]:
    """``python -m sandbox`` on a free port with ``config``; yields its base URL."""
    path = workdir / "sandbox.json"
    path.write_text(json.dumps(config))
    process = subprocess.Popen(
        [sys.executable, "-m", "sandbox", "--config", str(path), "--port", "0"], stdout=subprocess.PIPE, text=True
    )
    try:
        line = process.stdout.readline() if process.stdout else ""
        if "listening on" not in line:
            raise RuntimeError(f"sandbox did not start: {line!r}")
        yield line.rsplit(" ", 1)[-1].strip()
    finally:
        process.terminate()
        process.wait(timeout=10)


def log(line: str) -> None:
    """Progress goes to stderr; stdout keeps only the result (its last line is one JSON object)."""
    print(line, file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def gateway_process(home: Path, port: int, args: list[str], log_path: Path, timeout_s: float = 60) -> Iterator[str]:
    """``python -m gateway`` on loopback ``port`` with ``ALGOR_HOME=home`` (its logs to ``log_path``);
    yields its base URL once ``/ready`` answers. The URL is also its public URL (Twilio signs it)."""
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "ALGOR_HOME": str(home), "ALGOR_GATEWAY_URL": url}
    with log_path.open("w") as log_file:
        process = subprocess.Popen([sys.executable, "-m", "gateway", "--port", str(port), *args], env=env, stderr=log_file)
        try:
            deadline = time.monotonic() + timeout_s
            while not _answers(f"{url}/ready"):
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"gateway did not start (see {log_path})")
                time.sleep(0.2)
            yield url
        finally:
            process.terminate()
            process.wait(timeout=30)


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def sandbox_stats(url: str, provider: str) -> dict[str, Any]:
    return httpx.get(f"{url}/_sandbox/stats", timeout=30).json()["providers"][provider]


def sandbox_reset(url: str) -> None:
    httpx.post(f"{url}/_sandbox/reset", timeout=30).raise_for_status()


def scratch_ledger(path: Path, contacts_count: int, tenant: str = TENANT) -> sa.Engine:
    """A migrated SQLite operational store with ``contacts_count`` contacts of ``tenant`` (ids 1..n,
    Telegram chat FIRST_CHAT_ID + id; the ledger references contacts)."""
    # Contacts are sealed under the installation's master key: a bench's own sits beside its scratch
    # store (a master.key in the repository's .algor/ would make `make demo` refuse that home).
    os.environ.setdefault("ALGOR_HOME", str(path.parent))
    url = f"sqlite:///{path}"
    migrate(url)
    engine = engine_for(url)
    now = dt.datetime.now(dt.UTC)
    with engine.begin() as conn:
        have = conn.execute(sa.select(sa.func.count()).select_from(contacts)).scalar_one()
        cipher = tenant_cipher(conn, tenant)
        rows = []
        for n in range(have + 1, contacts_count + 1):
            key = cipher.new_contact_key()
            sealed = contact_columns(cipher, key, {"telegram_chat_id": FIRST_CHAT_ID + n})
            rows.append({"id": n, "tenant": tenant, "external_id": f"c{n}", "data_key": key, **sealed, "created_at": now, "updated_at": now})
        for start in range(0, len(rows), 5000):
            conn.execute(sa.insert(contacts), rows[start : start + 5000])
    return engine


def outgoing(connector: ChannelConnector, campaign: str, count: int) -> list[Outgoing]:
    """``count`` messages of ``campaign`` to contacts 1..count at address FIRST_CHAT_ID + id (a
    Telegram chat id or a VK peer id)."""
    channel, items = connector.channel, []
    for contact_id in range(1, count + 1):
        address = str(FIRST_CHAT_ID + contact_id)
        message = OutboundMessage(send_id="", tenant=TENANT, campaign=campaign, channel=channel, address=address, text=f"Hello {contact_id}")
        items.append(Outgoing(Wanted(LedgerKey(campaign, "main", contact_id, channel), connector.provider, address), connector, message))
    return items
