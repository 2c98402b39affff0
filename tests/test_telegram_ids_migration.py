"""Migration 0015 rewrites Telegram message ids stored chat first into the number-first form, so a
callback for a message sent before the upgrade still finds its ledger row (SQLite and PostgreSQL)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.config import Config

from orchestrator_assets.contact_pii import blind_index
from orchestrator_assets.provider_ids import stored_id
from pg import create_database, drop_database
from resources.opstore import MIGRATIONS_DIR, engine_for
from resources.opstore_schema import contacts, sends
from resources.pii import tenant_cipher

NOW = dt.datetime(2026, 12, 5, tzinfo=dt.UTC)


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, algor_home: Path, tmp_path: Path):
    url = f"sqlite:///{tmp_path / 'store.db'}" if request.param == "sqlite" else create_database("algor_migration")
    yield url
    if request.param == "postgresql":
        drop_database(url)


def _upgrade(engine: sa.Engine, revision: str) -> None:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["engine"] = engine
    command.upgrade(config, revision)


def test_ids_stored_chat_first_are_rewritten_to_what_a_callback_now_looks_up(store_url):
    engine = engine_for(store_url)
    _upgrade(engine, "0014")
    with engine.begin() as conn:
        cipher = tenant_cipher(conn, "demo")
        conn.execute(sa.insert(contacts).values(id=1, tenant="demo", external_id="c1", data_key=cipher.new_contact_key(), created_at=NOW, updated_at=NOW))
        chat_first = f"tg:{blind_index(cipher, 'telegram', '555000111')}:4242"  # how 0010–0014 stored "555000111:4242"
        for send_id, provider, message_id in (("s1", "telegram", chat_first), ("s2", "vk", "4242"), ("s3", "telegram", None)):
            conn.execute(
                sa.insert(sends).values(
                    send_id=send_id, tenant="demo", campaign=f"c-{send_id}", step="main", contact_id=1, channel=provider, provider=provider,
                    address=b"sealed", status="sent", run_id="r", claimed_at=NOW, provider_message_id=message_id,
                )
            )  # fmt: skip

    _upgrade(engine, "head")

    with engine.connect() as conn:
        stored = dict(conn.execute(sa.select(sends.c.send_id, sends.c.provider_message_id)).all())
        looked_up = stored_id(tenant_cipher(conn, "demo"), "telegram", "555000111:4242")
    assert stored == {"s1": looked_up, "s2": "4242", "s3": None} and looked_up.startswith("tg:4242:")
    engine.dispose()
