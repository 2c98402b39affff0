"""Segment rules (``policies/segments.py``) compiled to SQLAlchemy expressions over the
``contacts`` table of the operational store.

This lives with the segments domain, not in ``policies/``: a rule's meaning is policy, but its
translation is written against one table of one store (its columns, NULL and '' as "not set",
and the case folding of ``lower()`` that ``resources/opstore.py`` gives SQLite), and it would
pull SQLAlchemy into a package that otherwise needs only pydantic to read the policy files.

``segment_where`` does NOT filter by tenant: rules are tenant-agnostic, and the caller owns the
isolation boundary, so it must always add ``contacts.c.tenant == tenant`` itself::

    sa.select(contacts.c.id).where(contacts.c.tenant == tenant, segment_where(segment.rule, contacts, cipher))

Personal fields are sealed (``orchestrator_assets.contact_pii``): a rule on an e-mail, phone or
chat/user id compares blind indexes, computed with the tenant's ``cipher`` from the rule's values,
so only equality, membership and presence can be asked (``policies.segments`` refuses the rest at
load); ``email_domain`` and ``phone_country`` are plain derived columns and take every op.

Custom fields (``custom.<name>``) are read out of the ``custom_fields`` JSON text, typed as the
tenant declares them (``json_extract`` on SQLite, ``->>`` on PostgreSQL). Consent asks the
ledger's derived state (``orchestrator_assets.consent_ledger``); a behaviour clause becomes a test
against a table of contact ids the warehouse produced (``orchestrator_assets.segment_behaviour``),
so AND/OR/NOT stay set logic in one statement. Regexes use ``REGEXP`` on SQLite (the function
SQLAlchemy's pysqlite dialect registers on every connection: Python's ``re.search``) and ``~``
on PostgreSQL: patterns in their common subset behave the same on both.

Every condition is two-valued (true or false, never SQL NULL): a missing field equals nothing,
is ``ne`` / ``not_in`` everything, and ``not`` is an exact complement. Plain SQL would silently
drop contacts with a NULL city from both ``city eq X`` and ``not (city eq X)``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.functions import FunctionElement

from orchestrator_assets.consent_ledger import consent_state, has_consent
from orchestrator_assets.contact_pii import INDEXED, blind_index
from policies.segment_conditions import Kind, Op, condition_value, contact_field_kind, custom_field_kind, custom_name
from policies.segments import AllRule, AnyRule, Behaviour, BehaviourRule, Condition, ConsentRule, NotRule, Rule
from policies.loader import load_tenants
from policies.tenants import CustomField
from resources.pii import TenantCipher


@dataclass(frozen=True)
class BehaviourSet:
    """The contact ids a behaviour clause's warehouse query returned, in a table of the store.
    ``complement``: members are the contacts NOT in it (an ``at_most`` counts zero events too)."""

    table: sa.Table
    complement: bool


@dataclass(frozen=True)
class RuleScope:
    """What a rule is evaluated against besides the contacts: the moment (relative dates,
    consent validity), the tenant's custom field types and the behaviour clauses' id sets."""

    now: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.UTC))
    custom_fields: Mapping[str, CustomField] = field(default_factory=dict)
    behaviour_sets: Mapping[Behaviour, BehaviourSet] = field(default_factory=dict)


def tenant_scope(tenant: str, now: dt.datetime, behaviour_sets: Mapping[Behaviour, BehaviourSet] | None = None) -> RuleScope:
    """The scope of ``tenant``'s rules at ``now``: its custom field types from tenants.yaml."""
    return RuleScope(now=now, custom_fields=load_tenants().tenants[tenant].custom_fields, behaviour_sets=behaviour_sets or {})


def member_ids(contacts: sa.Table, tenant: str, rule: Rule, cipher: TenantCipher, scope: RuleScope) -> sa.Select:
    """The ids of ``tenant``'s contacts that ``rule`` selects: living contacts only (a merged
    contact's tombstone and an erased contact describe nobody)."""
    where = segment_where(rule, contacts, cipher, scope)
    return sa.select(contacts.c.id).where(contacts.c.tenant == tenant, contacts.c.merged_into.is_(None), contacts.c.erased_at.is_(None), where)


def segment_where(rule: Rule, contacts: sa.Table, cipher: TenantCipher, scope: RuleScope | None = None) -> sa.ColumnElement[bool]:
    """The WHERE clause selecting the contacts matched by ``rule`` (values as bind parameters)."""
    scope = scope or RuleScope()
    match rule:
        case AllRule():
            return sa.and_(*(segment_where(child, contacts, cipher, scope) for child in rule.all))
        case AnyRule():
            return sa.or_(*(segment_where(child, contacts, cipher, scope) for child in rule.any))
        case NotRule():
            return sa.not_(segment_where(rule.not_, contacts, cipher, scope))
        case ConsentRule():
            check = rule.consent
            return has_consent(consent_state(scope.now), cipher.tenant, contacts.c.id, check.purpose.value, check.subject_channel)
        case BehaviourRule():
            found = scope.behaviour_sets.get(rule.behaviour)
            if found is None:
                raise ValueError("a behaviour clause is answered by the warehouse: evaluate the rule with orchestrator_assets.segment_behaviour")
            ids = sa.select(found.table.c.contact_id)
            return contacts.c.id.not_in(ids) if found.complement else contacts.c.id.in_(ids)
        case Condition():
            return _condition(rule, contacts, cipher, scope)
    raise TypeError(f"not a segment rule: {rule!r}")


class _CustomText(FunctionElement):
    """``custom_fields``' value under a name, as SQL text (NULL when absent)."""

    type = sa.Text()
    inherit_cache = True


class _CustomBool(_CustomText):
    """The same for a bool field, spelled ``'true'`` / ``'false'`` on both stores."""

    inherit_cache = True


@compiles(_CustomText)
def _custom_text_sqlite(element: _CustomText, compiler: Any, **kw: Any) -> str:
    column, name = (compiler.process(clause, **kw) for clause in element.clauses)
    return f"json_extract({column}, '$.' || {name})"


@compiles(_CustomBool)
def _custom_bool_sqlite(element: _CustomBool, compiler: Any, **kw: Any) -> str:
    column, name = (compiler.process(clause, **kw) for clause in element.clauses)
    return f"(CASE json_type({column}, '$.' || {name}) WHEN 'true' THEN 'true' WHEN 'false' THEN 'false' END)"


@compiles(_CustomText, "postgresql")
@compiles(_CustomBool, "postgresql")
def _custom_text_postgresql(element: _CustomText, compiler: Any, **kw: Any) -> str:
    column, name = (compiler.process(clause, **kw) for clause in element.clauses)
    return f"(CAST({column} AS JSONB) ->> {name})"


def _custom_column(contacts: sa.Table, name: str, kind: Kind) -> sa.ColumnElement[Any]:
    key = sa.literal(name, sa.Text)
    if kind is Kind.BOOL:
        return _CustomBool(contacts.c.custom_fields, key)
    text = _CustomText(contacts.c.custom_fields, key)
    if kind is Kind.INT:
        return sa.cast(text, sa.BigInteger)
    if kind is Kind.DECIMAL:
        return sa.cast(text, sa.Float)  # stored as canonical text ("12.5"), compared as numbers
    return text  # text, enum, and dates as ISO text (which sorts like the dates)


def _condition(cond: Condition, contacts: sa.Table, cipher: TenantCipher, scope: RuleScope) -> sa.ColumnElement[bool]:
    name = custom_name(cond.field)
    if name is not None:
        declared = scope.custom_fields.get(name)
        if declared is None:
            raise ValueError(f"custom field {name!r} is not declared for tenant {cipher.tenant!r}")
        kind = custom_field_kind(declared)
        value = _comparable(kind, condition_value(cond.field, kind, cond.op, cond.value, declared.values))
        return _compare(cond.op, kind, _custom_column(contacts, name, kind), value, scope.now)
    kind = contact_field_kind(cond.field)
    index = INDEXED.get(cond.field.value)
    if index is None:
        return _compare(cond.op, kind, contacts.c[cond.field.value], cond.value, scope.now)
    return _compare(cond.op, kind, contacts.c[f"{index}_bidx"], _indexed(cipher, index, cond.value), scope.now)


def _indexed(cipher: TenantCipher, kind: str, value: Any) -> Any:
    """The rule's value(s) as blind indexes (a value with no canonical form matches nothing)."""
    if value is None:
        return None
    if isinstance(value, list):
        return [blind_index(cipher, kind, item) or "" for item in value]
    return blind_index(cipher, kind, value) or ""


def _comparable(kind: Kind, value: Any) -> Any:
    """A custom field's normalised value in the form its SQL expression compares with."""
    if isinstance(value, list):
        return [_comparable(kind, item) for item in value]
    if kind is Kind.DATE and isinstance(value, dt.date):
        return value.isoformat()
    if kind is Kind.DECIMAL and value is not None and not isinstance(value, int):
        return float(value)
    if kind is Kind.BOOL and isinstance(value, bool):
        return "true" if value else "false"
    return value


def _day_start(day: dt.date, days: int = 0) -> dt.datetime:
    return dt.datetime.combine(day + dt.timedelta(days=days), dt.time(), dt.UTC)


def _timestamp_bounds(op: Op, value: Any) -> tuple[dt.datetime | None, dt.datetime | None]:
    """(inclusive low, exclusive high) of a timestamp comparison; a date is its whole UTC day."""
    if op is Op.BETWEEN:
        (low, _), (_, high) = _timestamp_bounds(Op.GTE, value[0]), _timestamp_bounds(Op.LTE, value[1])
        return low, high
    if isinstance(value, dt.datetime):
        value = value.astimezone(dt.UTC)
        epsilon = dt.timedelta(microseconds=1)
        return {Op.GT: (value + epsilon, None), Op.GTE: (value, None), Op.LT: (None, value), Op.LTE: (None, value + epsilon)}[op]
    return {Op.GT: (_day_start(value, 1), None), Op.GTE: (_day_start(value), None), Op.LT: (None, _day_start(value)), Op.LTE: (None, _day_start(value, 1))}[op]


def _compare(op: Op, kind: Kind, col: sa.ColumnElement[Any], value: Any, now: dt.datetime) -> sa.ColumnElement[bool]:
    present = col.is_not(None)
    absent = col.is_(None)
    if kind in (Kind.TEXT, Kind.ENUM, Kind.SEALED_TEXT):  # '' is "not set" for text
        present = sa.and_(present, col != "")
        absent = sa.or_(absent, col == "")
    if kind is Kind.TIMESTAMP and op in (Op.GT, Op.GTE, Op.LT, Op.LTE, Op.BETWEEN):
        low, high = _timestamp_bounds(op, value)
        return sa.and_(col.is_not(None), *([col >= low] if low else []), *([col < high] if high else []))
    match op:
        case Op.EQ:
            return sa.and_(col.is_not(None), col == value)
        case Op.NE:
            return sa.or_(col.is_(None), col != value)
        case Op.IN:
            return sa.and_(col.is_not(None), col.in_(value))
        case Op.NOT_IN:
            return sa.or_(col.is_(None), col.not_in(value))
        case Op.CONTAINS:
            return sa.and_(col.is_not(None), sa.func.lower(col).contains(value.lower(), autoescape=True))
        case Op.STARTS_WITH:
            return sa.and_(col.is_not(None), sa.func.lower(col).startswith(value.lower(), autoescape=True))
        case Op.ENDS_WITH:
            return sa.and_(col.is_not(None), sa.func.lower(col).endswith(value.lower(), autoescape=True))
        case Op.REGEX:
            return sa.and_(col.is_not(None), col.regexp_match(value))
        case Op.GT:
            return sa.and_(col.is_not(None), col > value)
        case Op.GTE:
            return sa.and_(col.is_not(None), col >= value)
        case Op.LT:
            return sa.and_(col.is_not(None), col < value)
        case Op.LTE:
            return sa.and_(col.is_not(None), col <= value)
        case Op.BETWEEN:
            return sa.and_(col.is_not(None), col >= value[0], col <= value[1])
        case Op.WITHIN_LAST_DAYS:
            if kind is Kind.TIMESTAMP:
                return sa.and_(col.is_not(None), col >= now - dt.timedelta(days=value), col <= now)
            today = now.astimezone(dt.UTC).date()
            return sa.and_(col.is_not(None), col >= (today - dt.timedelta(days=value)).isoformat(), col <= today.isoformat())
        case Op.IS_SET:
            return present
        case Op.IS_NOT_SET:
            return absent
    raise ValueError(f"segment op {op!r} has no SQL translation")
