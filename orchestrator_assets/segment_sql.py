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

Every condition is two-valued (true or false, never SQL NULL): a missing field equals nothing,
is ``ne`` / ``not_in`` everything, and ``not`` is an exact complement. Plain SQL would silently
drop contacts with a NULL city from both ``city eq X`` and ``not (city eq X)``.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from orchestrator_assets.contact_pii import INDEXED, blind_index
from policies.segments import INTEGER_FIELDS, AllRule, AnyRule, Condition, NotRule, Op, Rule
from resources.pii import TenantCipher


def segment_where(rule: Rule, contacts: sa.Table, cipher: TenantCipher) -> sa.ColumnElement[bool]:
    """The WHERE clause selecting the contacts matched by ``rule`` (values as bind parameters)."""
    match rule:
        case AllRule():
            return sa.and_(*(segment_where(child, contacts, cipher) for child in rule.all))
        case AnyRule():
            return sa.or_(*(segment_where(child, contacts, cipher) for child in rule.any))
        case NotRule():
            return sa.not_(segment_where(rule.not_, contacts, cipher))
        case Condition():
            kind = INDEXED.get(rule.field.value)
            if kind is None:
                return _condition(rule, contacts.c[rule.field.value], rule.value)
            return _condition(rule, contacts.c[f"{kind}_bidx"], _indexed(cipher, kind, rule.value))
    raise TypeError(f"not a segment rule: {rule!r}")


def _indexed(cipher: TenantCipher, kind: str, value: Any) -> Any:
    """The rule's value(s) as blind indexes (a value with no canonical form matches nothing)."""
    if value is None:
        return None
    if isinstance(value, list):
        return [blind_index(cipher, kind, item) or "" for item in value]
    return blind_index(cipher, kind, value) or ""


def _condition(cond: Condition, col: sa.ColumnElement[Any], value: Any) -> sa.ColumnElement[bool]:
    present = col.is_not(None)
    absent = col.is_(None)
    if cond.field not in INTEGER_FIELDS:  # '' is "not set" for text; a number cannot be ''
        present = sa.and_(present, col != "")
        absent = sa.or_(absent, col == "")
    match cond.op:
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
        case Op.IS_SET:
            return present
        case Op.IS_NOT_SET:
            return absent
    raise ValueError(f"segment op {cond.op!r} has no SQL translation")
