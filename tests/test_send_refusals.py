"""Bad input stops a campaign before its first message: a blocked sender or a message the
provider would refuse fails the run with the reason, and nothing is claimed."""

from __future__ import annotations

import datetime as dt

import dagster as dg
import pytest
import sqlalchemy as sa

from orchestrator_assets.sends.assets import refuse_before_sending
from orchestrator_assets.sends.run import Outgoing
from resources.channels.base import Attachment, OutboundMessage
from resources.channels.telegram import TelegramConnector
from resources.opstore import OperationalStore
from resources.opstore_schema import blocked_senders, sends


@pytest.fixture
def engine(algor_home):
    store = OperationalStore()
    store.migrate()
    return store.engine()


def outgoing(connector, **fields) -> Outgoing:
    message = OutboundMessage(**{"send_id": "", "tenant": "demo", "campaign": "c", "channel": "telegram", "address": "1001", "text": "hi", **fields})
    return Outgoing(want=None, connector=connector, message=message)


def test_message_the_provider_would_refuse_fails_the_run_with_reasons(engine):
    connector = TelegramConnector("http://127.0.0.1:9", "1:t")
    good = outgoing(connector)
    video = outgoing(connector, attachments=(Attachment(kind="video", url="https://x.example/a.mp4"),))
    too_long = outgoing(connector, text="я" * 4097)
    with pytest.raises(dg.Failure) as failure:
        refuse_before_sending(engine, "demo", {"telegram": connector}, [good, video, too_long])
    assert "2 message(s) would be refused" in str(failure.value)
    table = failure.value.metadata["problems"].value
    assert "video" in table and "4096" in table
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(sends)).scalar_one() == 0


def test_blocked_sender_fails_the_run_before_anything_is_sent(engine):
    connector = TelegramConnector("http://127.0.0.1:9", "1:t")
    with engine.begin() as conn:
        conn.execute(sa.insert(blocked_senders).values(tenant="demo", provider="telegram", reason="yellowCard", blocked_at=dt.datetime.now(dt.UTC)))
    with pytest.raises(dg.Failure, match="telegram sender for telegram is blocked .*yellowCard"):
        refuse_before_sending(engine, "demo", {"telegram": connector}, [outgoing(connector)])
    refuse_before_sending(engine, "acme", {"telegram": connector}, [outgoing(connector)])  # other tenants unaffected
