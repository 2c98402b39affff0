"""Segment rules compiled to SQL: every operator and nesting, on SQLite and PostgreSQL, with the
missing-value semantics (two-valued: a missing value matches no comparison, ``not`` is an exact
complement); behaviour clauses on real chDB checked against an independent pandas evaluation."""

from __future__ import annotations

import datetime as dt
import json
import random
from typing import Any

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa
from pydantic import TypeAdapter

from orchestrator_assets.contact_pii import contact_columns
from orchestrator_assets.segment_behaviour import EVENT_TYPES, behaviour_sets, warehouse_client
from orchestrator_assets.segment_membership import MembershipChange, refresh_members
from orchestrator_assets.segment_sql import RuleScope, member_ids, segment_where
from policies.loader import PolicyError, load_bundle, parse_rule
from policies.segments import Rule
from resources import warehouse as wh
from resources.opstore import engine_for, migrate
from resources.opstore_schema import consent_events, contacts, metadata
from resources.pii import TenantCipher
from resources.warehouse import Warehouse

RULE = TypeAdapter(Rule)
TENANT = "demo"
BEHAVING = "beh"  # the tenant whose contacts have events
NOW = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
CIPHER = TenantCipher(TENANT, {1: bytes([1]) * 32}, bytes([11]) * 32)
CUSTOM_FIELDS = load_bundle().tenants[TENANT].custom_fields  # loyalty_level enum, first_order date, orders int, average_check decimal, vip bool

# external_id: (city, language, email, created_at, custom fields)
CONTACTS = {
    "c1": ("Москва", "ru", "anna@mail.ru", dt.datetime(2026, 10, 30, 12, tzinfo=dt.UTC),
           {"loyalty_level": "gold", "orders": 5, "average_check": "12.5", "vip": True, "first_order": "2026-10-20"}),
    "c2": ("Санкт-Петербург", "en", None, dt.datetime(2026, 1, 1, 8, tzinfo=dt.UTC),
           {"loyalty_level": "silver", "orders": 1, "vip": False, "first_order": "2025-01-01"}),
    "c3": (None, None, "", dt.datetime(2026, 10, 31, 23, tzinfo=dt.UTC), None),
    "c4": ("Казань", "ru", "petr@example.com", dt.datetime(2025, 6, 1, tzinfo=dt.UTC), {"orders": 12, "average_check": "100"}),
}  # fmt: skip
ALL = set(CONTACTS)
# (external_id, channel, purpose, action, occurred_at): c1 holds e-mail advertising; c2 withdrew it; c2 holds processing.
CONSENTS = [
    ("c1", "email", "advertising", "grant", NOW - dt.timedelta(days=3)),
    ("c2", "email", "advertising", "grant", NOW - dt.timedelta(days=9)),
    ("c2", "email", "advertising", "withdraw", NOW - dt.timedelta(days=2)),
    ("c2", "any", "processing", "grant", NOW - dt.timedelta(days=9)),
]


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def store(request, tmp_path_factory):
    """A migrated store with CONTACTS and CONSENTS (plus another tenant's look-alike); yields
    (engine, {external_id: id})."""
    from pg import create_database, drop_database

    url = f"sqlite:///{tmp_path_factory.mktemp('segments') / 'ops.db'}" if request.param == "sqlite" else create_database()
    migrate(url)
    engine = engine_for(url)
    ids = {}
    with engine.begin() as conn:
        for tenant in (TENANT, "acme"):
            for external_id, (city, language, email, created, custom) in CONTACTS.items():
                key = CIPHER.new_contact_key()
                row = {"tenant": tenant, "external_id": external_id, "data_key": key, **contact_columns(CIPHER, key, {"email": email}),
                       "city": city, "language": language, "created_at": created, "updated_at": created,
                       "custom_fields": json.dumps(custom) if custom else None}  # fmt: skip
                contact_id = conn.execute(sa.insert(contacts).values(row).returning(contacts.c.id)).scalar_one()
                if tenant == TENANT:
                    ids[external_id] = contact_id
        beh = [{"tenant": BEHAVING, "external_id": f"b{n}", "city": "Тверь", "created_at": NOW, "updated_at": NOW} for n in range(60)]
        ids |= {row.external_id: row.id for row in conn.execute(sa.insert(contacts).returning(contacts.c.id, contacts.c.external_id), beh)}
        for n, (external_id, channel, purpose, action, at) in enumerate(CONSENTS):
            conn.execute(sa.insert(consent_events).values(
                tenant=TENANT, contact_id=ids[external_id], channel=channel, purpose=purpose, action=action, source_kind="import",
                source_ref=f"test:{n}", occurred_at=at, recorded_at=at, prev_hash=f"p{n}", hash=f"h{n}"))  # fmt: skip
    yield engine, ids
    if request.param == "postgresql":
        engine.dispose()
        drop_database(url)
    else:
        metadata.drop_all(engine)


def members(store, rule: Any, scope: RuleScope | None = None) -> set[str]:
    engine, _ = store
    rule = RULE.validate_python(rule) if isinstance(rule, dict) else rule
    scope = scope or RuleScope(now=NOW, custom_fields=CUSTOM_FIELDS)
    query = sa.select(contacts.c.external_id).where(contacts.c.tenant == TENANT, segment_where(rule, contacts, CIPHER, scope))
    with engine.connect() as conn:
        return set(conn.scalars(query))


CASES = [
    # text
    ({"field": "city", "op": "ends_with", "value": "БУРГ"}, {"c2"}),  # Unicode case folding
    ({"field": "city", "op": "regex", "value": "^(Москва|Казань)$"}, {"c1", "c4"}),
    ({"field": "email_domain", "op": "regex", "value": r"\.ru$"}, {"c1"}),
    ({"field": "language", "op": "ne", "value": "ru"}, {"c2", "c3"}),  # missing is "ne"
    # timestamps: a date is its whole UTC day
    ({"field": "created_at", "op": "gt", "value": "2026-10-30"}, {"c3"}),
    ({"field": "created_at", "op": "gte", "value": dt.date(2026, 10, 30)}, {"c1", "c3"}),
    ({"field": "created_at", "op": "lt", "value": "2026-01-01"}, {"c4"}),
    ({"field": "created_at", "op": "lte", "value": "2026-01-01"}, {"c2", "c4"}),
    ({"field": "created_at", "op": "lt", "value": "2026-01-01T08:00:00+00:00"}, {"c4"}),
    ({"field": "created_at", "op": "lte", "value": "2026-01-01T11:00:00+03:00"}, {"c2", "c4"}),
    ({"field": "created_at", "op": "between", "value": ["2026-01-01", "2026-10-30"]}, {"c1", "c2"}),
    ({"field": "created_at", "op": "within_last_days", "value": 7}, {"c1", "c3"}),
    ({"not": {"field": "created_at", "op": "within_last_days", "value": 7}}, {"c2", "c4"}),
    # custom int / decimal / bool / date / enum
    ({"field": "custom.orders", "op": "gt", "value": 4}, {"c1", "c4"}),
    ({"field": "custom.orders", "op": "between", "value": [1, 5]}, {"c1", "c2"}),
    ({"field": "custom.orders", "op": "ne", "value": 5}, {"c2", "c3", "c4"}),
    ({"field": "custom.orders", "op": "in", "value": [1, 12]}, {"c2", "c4"}),
    ({"field": "custom.orders", "op": "is_not_set"}, {"c3"}),
    ({"field": "custom.average_check", "op": "gte", "value": 12.5}, {"c1", "c4"}),
    ({"field": "custom.average_check", "op": "lt", "value": 50}, {"c1"}),
    ({"field": "custom.vip", "op": "eq", "value": True}, {"c1"}),
    ({"field": "custom.vip", "op": "eq", "value": False}, {"c2"}),
    ({"field": "custom.vip", "op": "ne", "value": True}, {"c2", "c3", "c4"}),
    ({"field": "custom.vip", "op": "is_set"}, {"c1", "c2"}),
    ({"field": "custom.first_order", "op": "within_last_days", "value": 30}, {"c1"}),
    ({"field": "custom.first_order", "op": "gt", "value": "2025-06-01"}, {"c1"}),
    ({"field": "custom.first_order", "op": "eq", "value": dt.date(2025, 1, 1)}, {"c2"}),
    ({"field": "custom.loyalty_level", "op": "in", "value": ["Gold", "bronze"]}, {"c1"}),  # the declared spelling
    ({"field": "custom.loyalty_level", "op": "not_in", "value": ["gold"]}, {"c2", "c3", "c4"}),
    ({"field": "custom.loyalty_level", "op": "ends_with", "value": "LD"}, {"c1"}),
    # consent now
    ({"consent": {"purpose": "advertising", "channel": "email"}}, {"c1"}),  # c2 withdrew
    ({"consent": {"purpose": "processing"}}, {"c2"}),
    ({"not": {"consent": {"purpose": "advertising", "channel": "email"}}}, {"c2", "c3", "c4"}),
    # nesting
    (
        {"all": [
            {"any": [{"field": "city", "op": "eq", "value": "Москва"}, {"field": "custom.orders", "op": "gt", "value": 10}]},
            {"not": {"field": "custom.vip", "op": "eq", "value": True}},
        ]},
        {"c4"},
    ),  # fmt: skip
    ({"any": [{"not": {"field": "city", "op": "is_set"}}, {"all": [{"field": "language", "op": "eq", "value": "en"}]}]}, {"c2", "c3"}),
]


@pytest.mark.parametrize(("rule", "expected"), CASES)
def test_operator_semantics(store, rule, expected):
    assert members(store, rule) == expected


@pytest.mark.parametrize("rule", [rule for rule, _ in CASES if "not" not in rule])
def test_not_is_an_exact_complement(store, rule):
    assert members(store, {"not": rule}) == ALL - members(store, rule)


@pytest.mark.parametrize(
    ("text", "where", "why"),
    [
        ("{all: [{field: city, op: eq, value: X}, {any: [{field: city, op: regex, value: '('}]}]}", "all[1].any[0].value", "regex '(' does not compile"),
        ("{field: custom.nope, op: eq, value: 1}", "field", "custom field 'nope' is not declared"),
        ("{field: custom.orders, op: contains, value: '1'}", "op", "op contains does not work on custom.orders (int)"),
        ("{field: custom.vip, op: eq, value: 'yes'}", "value", "compares with true or false"),
        ("{field: custom.loyalty_level, op: eq, value: platinum}", "value", "is one of: bronze, silver, gold"),
        ("{not: {field: created_at, op: between, value: [2026-02-01, 2026-01-01]}}", "not.value", "needs low <= high"),
        ("{field: city, op: gt, value: A}", "value", "op gt does not work on city (text)"),
        ("{field: created_at, op: within_last_days, value: 0}", "value", "1 or more"),
        ("{behaviour: {event: opened, link: 'https://x'}}", "behaviour", "use it with event: clicked"),
        ("{behaviour: {event: clicked, at_least: 3, at_most: 1}}", "behaviour", "matches nobody"),
        ("{consent: {purpose: advertising}}", "consent", "name the `channel`"),
        ("{field: email, op: ends_with, value: '.ru'}", "value", "use email_domain instead"),
    ],
)
def test_bad_rules_name_the_node_and_the_reason(text, where, why):
    with pytest.raises(PolicyError) as caught:
        parse_rule(text, load_bundle().tenants[TENANT])
    assert f"rule: {where}: " in str(caught.value) and why in str(caught.value), str(caught.value)


# --- behaviour: real chDB against pandas ------------------------------------------------------

CHANNELS, CAMPAIGNS, LINKS = ("email", "sms"), ("spring", "autumn"), ("https://shop.example/a", "https://shop.example/b")
BEHAVIOURS = [
    {"event": "clicked"},
    {"event": "clicked", "channel": "email", "within_days": 10},
    {"event": "clicked", "link": LINKS[0]},
    {"event": "opened", "campaign": "spring", "at_least": 2},
    {"event": "delivered", "at_most": 1},  # includes contacts with none
    {"event": "failed", "at_least": 1, "at_most": 2, "within_days": 20},
    {"event": "sent", "at_least": 0, "at_most": 0},  # never sent anything
    {"event": "complained"},
]


@pytest.fixture(scope="module")
def events(tmp_path_factory) -> tuple[Warehouse, pd.DataFrame]:
    """Generated events of the store's contacts (ids 1..80 cover both stores' ids) in a fresh
    chDB, a tenth of them appended twice (a re-append after a crash); plus the same frame."""
    rng = random.Random(11)
    kinds = [t for types in EVENT_TYPES.values() for t in types] + [wh.UNSUBSCRIBED]
    rows = []
    for n in range(1500):
        kind = rng.choice(kinds)
        rows.append({"tenant": rng.choice([BEHAVING, BEHAVING, TENANT]), "event_id": f"e{n}", "event_type": kind, "send_id": "", "campaign": rng.choice(CAMPAIGNS),
                     "channel": rng.choice(CHANNELS), "provider": "", "contact_id": rng.randint(1, 80), "provider_message_id": "",
                     "reason": rng.choice(LINKS) if kind == wh.CLICKED else "", "occurred_at": NOW - dt.timedelta(hours=rng.randint(0, 24 * 40))})  # fmt: skip
    frame = pd.DataFrame(rows)
    duplicates = frame.sample(frac=0.1, random_state=1)
    warehouse = Warehouse(dsn=f"chdb:///{tmp_path_factory.mktemp('warehouse') / 'ch'}")
    warehouse.append_events(pd.concat([frame, duplicates])[list(wh.EVENT_COLUMNS)].values.tolist())
    return warehouse, frame


def pandas_members(frame: pd.DataFrame, behaviour: dict, contact_ids: list[int]) -> set[int]:
    """The independent evaluation: filter, dedupe by event id, count per contact (zero for none)."""
    kinds = {"failed": {wh.SEND_FAILED, wh.DELIVERY_FAILED}}.get(behaviour["event"], {behaviour["event"]})
    selected = frame[(frame.tenant == BEHAVING) & frame.event_type.isin(kinds) & (frame.occurred_at <= NOW)]
    for key, column in (("channel", "channel"), ("campaign", "campaign"), ("link", "reason")):
        if key in behaviour:
            selected = selected[selected[column] == behaviour[key]]
    if "within_days" in behaviour:
        selected = selected[selected.occurred_at >= NOW - dt.timedelta(days=behaviour["within_days"])]
    counts = selected.drop_duplicates(["event_type", "event_id"]).groupby("contact_id").size().reindex(contact_ids, fill_value=0)
    low = behaviour.get("at_least", 0 if "at_most" in behaviour else 1)
    high = behaviour.get("at_most", np.inf)
    return set(counts[(counts >= low) & (counts <= high)].index)


@pytest.mark.parametrize("behaviour", BEHAVIOURS, ids=lambda b: "-".join(f"{k}={v}" for k, v in b.items()))
def test_behaviour_matches_pandas(store, events, behaviour):
    engine, ids = store
    warehouse, frame = events
    by_id = {contact_id: external_id for external_id, contact_id in ids.items() if external_id.startswith("b")}
    rule = RULE.validate_python({"all": [{"field": "city", "op": "ne", "value": "nowhere"}, {"behaviour": behaviour}]})
    with engine.connect() as conn:
        with warehouse_client(warehouse, rule) as client, behaviour_sets(conn, client, BEHAVING, rule, NOW) as sets:
            scope = RuleScope(now=NOW, custom_fields=CUSTOM_FIELDS, behaviour_sets=sets)
            got = set(conn.scalars(member_ids(contacts, BEHAVING, rule, CIPHER, scope)))
            negated = set(conn.scalars(member_ids(contacts, BEHAVING, RULE.validate_python({"not": rule}), CIPHER, scope)))
        conn.rollback()
    expected = pandas_members(frame, behaviour, sorted(by_id))
    assert {by_id[i] for i in got} == {by_id[i] for i in expected}
    assert got | negated == set(by_id) and not got & negated  # not: the exact complement, zero-event contacts included


def test_membership_change_counts_entered_and_left(store):
    engine, ids = store
    scope = RuleScope(now=NOW, custom_fields=CUSTOM_FIELDS)
    changes = []
    with engine.connect() as conn:
        for rule in ({"field": "language", "op": "eq", "value": "ru"}, {"field": "city", "op": "is_set"}):
            where = member_ids(contacts, TENANT, RULE.validate_python(rule), CIPHER, scope)
            changes.append(refresh_members(conn, TENANT, "probe", where, NOW))
        conn.rollback()
    assert changes == [MembershipChange(2, 2, 0), MembershipChange(3, 1, 0)]  # c1, c4; then c2 enters
