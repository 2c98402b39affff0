"""Segment evaluation at scale: a live count and a materialisation over 1M contacts and 10M events.

    .venv/bin/python bench/segment.py [--contacts 1000000] [--events 10000000] [--skip-postgres]

1. A fresh embedded deployment in a temp ALGOR_HOME. ``--contacts`` contacts of tenant ``demo``
   are bulk-inserted into the operational store (SQLite, then a throw-away PostgreSQL database on
   127.0.0.1): city, language, created_at, the custom field ``orders`` (JSON, 70 % of them), an
   e-mail blind index and domain (80 %). The shortcut, stated: the sealed ``pii`` blob and contact
   key are left empty. Rules never open them (they compare blind indexes), so evaluation costs the
   same; only the five-contact masked sample opens them, and it shows empty cells here.
2. ``--events`` events are generated inside chDB by one ``INSERT … SELECT`` over ``numbers()``
   (types: 40 % sent, 35 % delivered, 13 % opened, 8 % clicked, 3 % delivery_failed, 1 %
   complained; three channels, 20 campaigns, the last 180 days, contact ids uniform over the store's).
3. The rule, five clauses with one behaviour clause::

       all: [city in [Москва, Санкт-Петербург, Казань],
             any: [language eq ru, custom.orders gte 3],
             created_at within_last_days 365,
             behaviour: clicked on email at least once within 30 days]

   ``live_count_seconds``: ``orchestrator_assets.segment_count.live_count`` (the job's and the CLI's
   code: warehouse query, id table, count and masked sample, rolled back), median of 3 runs.
   ``materialize_seconds``: the ``segment_members`` asset's work for that segment (warehouse query,
   new members, entered/left into ``segment_events``, ``segment_members`` written, committed), the
   first time (everyone enters: the worst case); ``rematerialize_seconds``: once more, unchanged.
4. The machine's limit in the same run: a raw chDB ``SELECT count()`` over the events and a raw
   ``SELECT count(*)`` over the contacts, and the ratios of the measured times to them.

Progress goes to stderr; the last stdout line is one JSON object.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import psycopg
import sqlalchemy as sa
from psycopg import sql

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

TENANT = "demo"
RULE = """
all:
  - {field: city, op: in, value: [Москва, Санкт-Петербург, Казань]}
  - any: [{field: language, op: eq, value: ru}, {field: custom.orders, op: gte, value: 3}]
  - {field: created_at, op: within_last_days, value: 365}
  - {behaviour: {event: clicked, channel: email, within_days: 30}}
"""
CITIES = np.array(["Москва", "Санкт-Петербург", "Казань", "Новосибирск", "Екатеринбург", "Самара", "Омск", "Тверь"])
CITY_WEIGHTS = np.array([0.3, 0.2, 0.1, 0.1, 0.1, 0.1, 0.05, 0.05])
PG_SERVER = os.environ.get("ALGOR_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")
EVENTS_SQL = """
INSERT INTO algor.events (tenant, event_id, event_type, send_id, campaign, channel, provider, contact_id, provider_message_id, reason, occurred_at)
SELECT '{tenant}', toString(number),
       multiIf(r < 40, 'sent', r < 75, 'delivered', r < 88, 'opened', r < 96, 'clicked', r < 99, 'delivery_failed', 'complained') AS kind,
       toString(number), concat('campaign_', toString(cityHash64(number, 3) % 20)),
       ['email', 'sms', 'telegram'][1 + cityHash64(number, 2) % 3], 'bench', 1 + cityHash64(number, 4) % {contacts}, '',
       if(kind = 'clicked', concat('https://shop.example/p', toString(cityHash64(number, 6) % 10)), ''),
       now64(3) - toIntervalSecond(cityHash64(number, 5) % (180 * 86400))
FROM (SELECT number, cityHash64(number, 1) % 100 AS r FROM numbers({events}))
"""


def log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def timed(fn, *args):
    started = time.perf_counter()
    value = fn(*args)
    return time.perf_counter() - started, value


def contact_rows(n: int, now: dt.datetime) -> list[tuple]:
    """(id, tenant, external_id, email_bidx, email_domain, city, language, created_at, custom_fields)."""
    rng = np.random.default_rng(7)
    cities = rng.choice(CITIES, size=n, p=CITY_WEIGHTS)
    languages = rng.choice(np.array(["ru", "en", None], dtype=object), size=n, p=[0.6, 0.3, 0.1])
    ages = rng.integers(0, 730 * 86400, size=n)
    orders = rng.integers(0, 10, size=n)
    has_orders = rng.random(n) < 0.7
    has_email = rng.random(n) < 0.8
    base = now.replace(tzinfo=None)
    rows = []
    for i in range(n):
        created = (base - dt.timedelta(seconds=int(ages[i]))).isoformat(sep=" ", timespec="microseconds")
        rows.append((i + 1, TENANT, f"bench-{i + 1}", f"{i + 1:032x}" if has_email[i] else None, "mail.ru" if has_email[i] else None,
                     str(cities[i]), languages[i], created, f'{{"orders": {int(orders[i])}}}' if has_orders[i] else None))  # fmt: skip
    return rows


COLUMNS = ("id", "tenant", "external_id", "email_bidx", "email_domain", "city", "language", "created_at", "updated_at", "custom_fields")


def load_sqlite(engine: sa.Engine, rows: list[tuple]) -> None:
    raw = engine.raw_connection()
    try:
        raw.executemany(f"INSERT INTO contacts ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})", (r[:8] + (r[7], r[8]) for r in rows))
        raw.commit()
    finally:
        raw.close()


def load_postgres(engine: sa.Engine, rows: list[tuple]) -> None:
    raw = engine.raw_connection()
    try:
        with raw.cursor() as cursor, cursor.copy(f"COPY contacts ({', '.join(COLUMNS)}) FROM STDIN") as copy:
            for r in rows:
                copy.write_row((*r[:7], r[7] + "+00", r[7] + "+00", r[8]))
        with raw.cursor() as cursor:
            cursor.execute("SELECT setval(pg_get_serial_sequence('contacts', 'id'), (SELECT max(id) FROM contacts))")
            cursor.execute("ANALYZE contacts")
        raw.commit()
    finally:
        raw.close()


def measure(engine: sa.Engine, client, rule, now: dt.datetime) -> dict:
    from orchestrator_assets.segment_behaviour import behaviour_sets
    from orchestrator_assets.segment_count import live_count
    from orchestrator_assets.segment_membership import refresh_members, refresh_planner_statistics
    from orchestrator_assets.segment_sql import member_ids, tenant_scope
    from resources.opstore_schema import contacts
    from resources.pii import tenant_cipher

    with engine.begin() as conn:
        tenant_cipher(conn, TENANT)  # the tenant's keys exist before anything is timed, as in a deployment
        refresh_planner_statistics(conn)  # as every segment_members materialisation leaves them
    counts = [live_count(engine, client, TENANT, rule, now) for _ in range(3)]
    log(f"  live count: {counts[0].count} contacts, {[round(c.seconds, 3) for c in counts]} s")

    def materialize():
        with engine.begin() as conn:
            cipher = tenant_cipher(conn, TENANT)
            with behaviour_sets(conn, client, TENANT, rule, now) as sets:
                return refresh_members(conn, TENANT, "bench", member_ids(contacts, TENANT, rule, cipher, tenant_scope(TENANT, now, sets)), now)

    first, change = timed(materialize)
    again, unchanged = timed(materialize)
    log(f"  materialise: {first:.3f} s ({change}), again {again:.3f} s ({unchanged})")
    assert change.members == counts[0].count == change.entered and unchanged.entered == unchanged.left == 0
    with engine.connect() as conn:
        raw_contacts, _ = timed(lambda: conn.exec_driver_sql("SELECT count(*) FROM contacts").scalar_one())
    return {
        "live_count_seconds": round(statistics.median(c.seconds for c in counts), 3),
        "materialize_seconds": round(first, 3),
        "rematerialize_seconds": round(again, 3),
        "members": change.members,
        "raw_count_contacts_seconds": round(raw_contacts, 3),
    }


def measure_postgres(rows: list[tuple], client, rule, now: dt.datetime) -> dict:
    """``measure`` on a throw-away PostgreSQL database holding the same contacts."""
    from resources.opstore import engine_for, migrate

    name = f"algor_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_SERVER, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = sa.make_url(PG_SERVER).set(drivername="postgresql+psycopg", database=name).render_as_string(hide_password=False)
    try:
        migrate(url)
        engine = engine_for(url)
        seconds, _ = timed(load_postgres, engine, rows)
        log(f"PostgreSQL + chDB (contacts loaded in {seconds:.1f} s)")
        measured = measure(engine, client, rule, now)
        engine.dispose()
        return measured
    finally:
        with psycopg.connect(PG_SERVER, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--contacts", type=int, default=1_000_000)
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--skip-postgres", action="store_true")
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="algor-bench-segment-"))
    for name in ("ALGOR_ENV", "ALGOR_DATABASE_URL", "ALGOR_WAREHOUSE_DSN"):
        os.environ.pop(name, None)
    os.environ["ALGOR_HOME"] = str(home / "algor")

    from orchestrator_assets.segment_behaviour import warehouse_client
    from policies.loader import load_bundle, parse_rule
    from resources.opstore import engine_for, migrate
    from resources.settings import get_settings
    from resources.warehouse import EVENTS_TABLE, Warehouse

    now = dt.datetime.now(dt.UTC)
    rule = parse_rule(RULE, load_bundle().tenants[TENANT])
    warehouse = Warehouse()
    log(f"generating {args.events:,} events in chDB …")
    with warehouse.client() as client:
        warehouse.ensure_schema(client)
        seconds, _ = timed(client.command, EVENTS_SQL.format(tenant=TENANT, contacts=args.contacts, events=args.events))
        log(f"  {seconds:.1f} s")
        raw_events, events = timed(lambda: client.query(f"SELECT count() FROM {EVENTS_TABLE}").result_rows[0][0])
    log(f"generating {args.contacts:,} contacts …")
    rows = contact_rows(args.contacts, now)

    url = get_settings().database_url
    migrate(url)
    engine = engine_for(url)
    seconds, _ = timed(load_sqlite, engine, rows)
    log(f"SQLite + chDB (contacts loaded in {seconds:.1f} s)")
    started = time.perf_counter()
    with warehouse_client(warehouse, rule) as client:  # opened once, as a ClickHouse server connection would be
        opening = time.perf_counter() - started
        result = {"contacts": args.contacts, "events": events, **measure(engine, client, rule, now), "raw_count_events_seconds": round(raw_events, 3)}
        result["warehouse_open_seconds"] = round(opening, 3)
        if not args.skip_postgres:
            result["postgres"] = measure_postgres(rows, client, rule, now)

    result["ratios"] = {
        "live_count_to_raw_events_count": round(result["live_count_seconds"] / max(raw_events, 1e-6), 1),
        "materialize_to_raw_contacts_count": round(result["materialize_seconds"] / max(result["raw_count_contacts_seconds"], 1e-6), 1),
    }
    result["targets_met"] = result["live_count_seconds"] <= 1 and result["materialize_seconds"] <= 5 and (
        "postgres" not in result or (result["postgres"]["live_count_seconds"] <= 1 and result["postgres"]["materialize_seconds"] <= 5)
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
