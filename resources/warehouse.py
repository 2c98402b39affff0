"""The analytical warehouse: chDB in-process by default, a ClickHouse server in production.

Only run steps touch it, through :class:`Warehouse`, which opens a client late and closes it
early: chDB lets one process at a time hold a data path, so a client left open would lock out
dbt and every other run. Assets that use it declare ``pool=WAREHOUSE_POOL``; the embedded
``dagster.yaml`` limits every pool to one step at a time across runs.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import clickhouse_connect
import dagster as dg
from pydantic import Field

from resources.settings import get_settings

WAREHOUSE_POOL = "warehouse"
DATABASE = "algor"
EVENTS_TABLE = f"{DATABASE}.events"

# One append-only fact table for everything that happens to a message. ``event_id`` is the
# idempotency key (the send id for send outcomes, the provider's event id for callbacks, as
# ``resources/event_keys.py`` stores it), and ReplacingMergeTree on it means re-appending after a
# crash never double counts; dbt staging still deduplicates explicitly because merges are eventual.
EVENT_COLUMNS: tuple[str, ...] = (
    "tenant",
    "event_id",
    "event_type",
    "send_id",
    "campaign",
    "channel",
    "provider",
    "contact_id",
    "provider_message_id",
    "reason",
    "occurred_at",
)
EVENTS_DDL = f"""
CREATE TABLE IF NOT EXISTS {EVENTS_TABLE}
(
    tenant LowCardinality(String),
    event_id String,
    event_type LowCardinality(String),
    send_id String,
    campaign String,
    channel LowCardinality(String),
    provider LowCardinality(String),
    contact_id UInt64,
    provider_message_id String,
    reason String,
    occurred_at DateTime64(3, 'UTC'),
    ingested_at DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(ingested_at)
PARTITION BY toYYYYMM(occurred_at)
ORDER BY (tenant, event_type, event_id)
"""

# A/B test results (orchestrator_assets/experiments): one row per (tenant, campaign, look, arm),
# written by each look of the evaluation, for reports. Written once per look; the replacing key
# makes a re-run of the same look replace its rows instead of adding to them.
EXPERIMENT_RESULTS_TABLE = f"{DATABASE}.experiment_results"
EXPERIMENT_RESULTS_DDL = f"""
CREATE TABLE IF NOT EXISTS {EXPERIMENT_RESULTS_TABLE}
(
    tenant LowCardinality(String),
    campaign String,
    look UInt16,
    looks UInt16,
    arm String,
    role LowCardinality(String),
    goal String,
    n UInt64,
    successes UInt64,
    rate Nullable(Float64),
    lift Nullable(Float64),
    lift_low Nullable(Float64),
    lift_high Nullable(Float64),
    z Nullable(Float64),
    boundary Nullable(Float64),
    p_value Nullable(Float64),
    significant UInt8,
    decision String,
    winner String,
    evaluated_at DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(evaluated_at)
ORDER BY (tenant, campaign, look, arm)
"""

# Event types written to the warehouse; dbt's accepted_values test lists the same set.
SENT = "sent"                # provider accepted the message
SEND_FAILED = "send_failed"  # provider refused it at send time (reason says why)
DELIVERED = "delivered"
DELIVERY_FAILED = "delivery_failed"
OPENED = "opened"
CLICKED = "clicked"
COMPLAINED = "complained"
UNSUBSCRIBED = "unsubscribed"


class Warehouse(dg.ConfigurableResource):
    """ClickHouse through clickhouse-connect: ``chdb:///path`` (embedded) or ``http(s)://…`` (server).

    ``dsn`` defaults to the environment helper's ``warehouse_dsn`` when left empty.
    """

    dsn: str | None = Field(default=None, description="chdb:///abs/path or http(s)://user:pass@host:port")

    def resolved_dsn(self) -> str:
        return self.dsn or get_settings().warehouse_dsn

    @contextmanager
    def client(self) -> Iterator[Any]:
        """Open a client for the duration of the block and always close it (chDB path lock)."""
        client = clickhouse_connect.get_client(dsn=self.resolved_dsn())
        try:
            yield client
        finally:
            client.close()

    def ensure_schema(self, client: Any) -> None:
        client.command(f"CREATE DATABASE IF NOT EXISTS {DATABASE}")
        client.command(EVENTS_DDL)
        client.command(EXPERIMENT_RESULTS_DDL)

    def append_events(self, rows: Sequence[Sequence[Any]]) -> int:
        """Append event rows (in ``EVENT_COLUMNS`` order); returns how many were written."""
        if not rows:
            return 0
        with self.client() as client:
            self.ensure_schema(client)
            client.insert(EVENTS_TABLE, list(rows), column_names=list(EVENT_COLUMNS))
        return len(rows)
