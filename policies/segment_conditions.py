"""What a segment condition ``{field, op, value}`` may say: the fields and their kinds, the ops each
kind takes, and each value checked and brought to the form the compiler compares.

Pure rules, shared by the rule model (``policies/segments.py``), which checks contact columns at
load and custom fields once the tenant's types are known, and by the compiler
(``orchestrator_assets/segment_sql.py``), which normalises values the same way.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Sequence
from decimal import Decimal
from enum import StrEnum
from typing import Any

from policies.tenants import CustomField, CustomFieldType

CUSTOM_PREFIX = "custom."
CUSTOM_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")


class ContactField(StrEnum):
    """Contact columns a segment rule may test (``contacts`` in resources/opstore_schema.py)."""

    FIRST_NAME = "first_name"
    LAST_NAME = "last_name"
    EMAIL = "email"
    PHONE = "phone"
    TELEGRAM_CHAT_ID = "telegram_chat_id"
    VK_USER_ID = "vk_user_id"
    CITY = "city"
    LANGUAGE = "language"
    TIMEZONE = "timezone"
    EMAIL_DOMAIN = "email_domain"
    PHONE_COUNTRY = "phone_country"
    CREATED_AT = "created_at"
    UPDATED_AT = "updated_at"


class Kind(StrEnum):
    """What a field holds, which decides the ops and values a condition on it may use."""

    TEXT = "text"
    ENUM = "enum"
    SEALED_TEXT = "sealed text"  # e-mail, phone: blind index only
    SEALED_NUMBER = "sealed number"  # chat/user ids: blind index only
    SEALED_NAME = "sealed name"  # no index at all
    TIMESTAMP = "timestamp"
    DATE = "date"
    INT = "int"
    DECIMAL = "decimal"
    BOOL = "bool"


INTEGER_FIELDS = frozenset({ContactField.TELEGRAM_CHAT_ID, ContactField.VK_USER_ID})
# Personal data is sealed in the store (docs/privacy.md): these fields are compared through keyed
# blind indexes, which answer equality and presence only; names have no index at all.
BLIND_INDEXED_FIELDS = frozenset({ContactField.EMAIL, ContactField.PHONE, *INTEGER_FIELDS})
SEALED_ONLY_FIELDS = frozenset({ContactField.FIRST_NAME, ContactField.LAST_NAME})
TIMESTAMP_FIELDS = frozenset({ContactField.CREATED_AT, ContactField.UPDATED_AT})
_CUSTOM_KINDS = {
    CustomFieldType.STRING: Kind.TEXT,
    CustomFieldType.ENUM: Kind.ENUM,
    CustomFieldType.INT: Kind.INT,
    CustomFieldType.DECIMAL: Kind.DECIMAL,
    CustomFieldType.BOOL: Kind.BOOL,
    CustomFieldType.DATE: Kind.DATE,
}


def contact_field_kind(field: ContactField) -> Kind:
    if field in SEALED_ONLY_FIELDS:
        return Kind.SEALED_NAME
    if field in INTEGER_FIELDS:
        return Kind.SEALED_NUMBER
    if field in BLIND_INDEXED_FIELDS:
        return Kind.SEALED_TEXT
    return Kind.TIMESTAMP if field in TIMESTAMP_FIELDS else Kind.TEXT


def custom_field_kind(field: CustomField) -> Kind:
    return _CUSTOM_KINDS[field.type]


class Op(StrEnum):
    EQ = "eq"
    NE = "ne"
    IN = "in"
    NOT_IN = "not_in"
    CONTAINS = "contains"
    STARTS_WITH = "starts_with"
    ENDS_WITH = "ends_with"
    REGEX = "regex"
    GT = "gt"
    GTE = "gte"
    LT = "lt"
    LTE = "lte"
    BETWEEN = "between"
    WITHIN_LAST_DAYS = "within_last_days"
    IS_SET = "is_set"
    IS_NOT_SET = "is_not_set"


LIST_OPS = frozenset({Op.IN, Op.NOT_IN})
NO_VALUE_OPS = frozenset({Op.IS_SET, Op.IS_NOT_SET})
TEXT_OPS = frozenset({Op.CONTAINS, Op.STARTS_WITH, Op.ENDS_WITH, Op.REGEX})
ORDER_OPS = frozenset({Op.GT, Op.GTE, Op.LT, Op.LTE, Op.BETWEEN})
_EQUALITY = frozenset({Op.EQ, Op.NE, *LIST_OPS})
OPS_BY_KIND: dict[Kind, frozenset[Op]] = {
    Kind.TEXT: _EQUALITY | NO_VALUE_OPS | TEXT_OPS,
    Kind.ENUM: _EQUALITY | NO_VALUE_OPS | TEXT_OPS,
    Kind.SEALED_TEXT: _EQUALITY | NO_VALUE_OPS,
    Kind.SEALED_NUMBER: _EQUALITY | NO_VALUE_OPS,
    Kind.SEALED_NAME: frozenset(),
    Kind.TIMESTAMP: ORDER_OPS | NO_VALUE_OPS | {Op.WITHIN_LAST_DAYS},
    Kind.DATE: _EQUALITY | NO_VALUE_OPS | ORDER_OPS | {Op.WITHIN_LAST_DAYS},
    Kind.INT: _EQUALITY | NO_VALUE_OPS | ORDER_OPS,
    Kind.DECIMAL: _EQUALITY | NO_VALUE_OPS | ORDER_OPS,
    Kind.BOOL: frozenset({Op.EQ, Op.NE}) | NO_VALUE_OPS,
}


def _refuse_op(field: str, kind: Kind, op: Op) -> str:
    if kind is Kind.SEALED_NAME:
        return f"{field} is encrypted at rest and cannot be selected on; segment on city, language, email_domain or phone_country"
    if kind in (Kind.SEALED_TEXT, Kind.SEALED_NUMBER):
        hint = "email_domain" if field == ContactField.EMAIL else "phone_country" if field == ContactField.PHONE else "eq or in"
        return f"{field} is encrypted at rest: only eq, ne, in, not_in, is_set and is_not_set work on it; use {hint} instead"
    allowed = ", ".join(o.value for o in Op if o in OPS_BY_KIND[kind])
    return f"op {op} does not work on {field} ({kind}); it takes: {allowed}"


def _scalar(field: str, kind: Kind, item: Any) -> Any:
    """One value of a condition, checked against the field's kind and brought to the form the
    compiler compares (a date for dates, an aware datetime or date for timestamps, …)."""
    if kind in (Kind.TEXT, Kind.ENUM, Kind.SEALED_TEXT):
        if not isinstance(item, str):
            raise ValueError(f"{field} compares with str values, got {item!r} (quote it in YAML)")
        return item
    if kind in (Kind.SEALED_NUMBER, Kind.INT):
        if isinstance(item, bool) or not isinstance(item, int):
            raise ValueError(f"{field} compares with int values, got {item!r}")
        return item
    if kind is Kind.DECIMAL:
        if isinstance(item, bool) or not isinstance(item, int | float | Decimal):
            raise ValueError(f"{field} compares with numbers, got {item!r}")
        return Decimal(str(item))
    if kind is Kind.BOOL:
        if not isinstance(item, bool):
            raise ValueError(f"{field} compares with true or false, got {item!r}")
        return item
    if kind is Kind.DATE:
        if isinstance(item, dt.datetime) or not isinstance(item, dt.date | str):
            raise ValueError(f"{field} compares with dates (YYYY-MM-DD), got {item!r}")
        try:
            return item if isinstance(item, dt.date) else dt.date.fromisoformat(item)
        except ValueError:
            raise ValueError(f"{field} compares with dates (YYYY-MM-DD), got {item!r}") from None
    # Kind.TIMESTAMP: a date means that whole UTC day; a time without an offset is UTC.
    if isinstance(item, str):
        try:
            item = dt.date.fromisoformat(item) if len(item) == 10 else dt.datetime.fromisoformat(item)
        except ValueError:
            raise ValueError(f"{field} compares with a date (2025-03-01) or a time (2025-03-01T10:00:00+03:00), got {item!r}") from None
    if isinstance(item, dt.datetime):
        return item if item.tzinfo else item.replace(tzinfo=dt.UTC)
    if isinstance(item, dt.date):
        return item
    raise ValueError(f"{field} compares with a date (2025-03-01) or a time (2025-03-01T10:00:00+03:00), got {item!r}")


def condition_value(field: str, kind: Kind, op: Op, value: Any, enum_values: Sequence[str] = ()) -> Any:
    """``value`` checked for a condition ``field op value`` on a field of ``kind`` and normalised
    (the compiler calls it again: it is idempotent); raises ``ValueError`` saying why not."""
    if op not in OPS_BY_KIND[kind]:
        raise ValueError(_refuse_op(field, kind, op))
    if op in NO_VALUE_OPS:
        if value is not None:
            raise ValueError(f"op {op} takes no value")
        return None
    if value is None:
        raise ValueError(f"op {op} needs a value")
    if op is Op.WITHIN_LAST_DAYS:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"op {op} needs a whole number of days (1 or more), got {value!r}")
        return value
    if op in LIST_OPS:
        if not isinstance(value, list) or not value:
            raise ValueError(f"op {op} needs a non-empty list value")
        return [_enum_value(field, _scalar(field, kind, item), enum_values) for item in value]
    if op is Op.BETWEEN:
        if not isinstance(value, list) or len(value) != 2:
            raise ValueError(f"op {op} needs a list of two values [low, high] (both included)")
        low, high = (_scalar(field, kind, item) for item in value)
        if _order_key(low) > _order_key(high):
            raise ValueError(f"op {op} needs low <= high, got {value!r}")
        return [low, high]
    if isinstance(value, list):
        raise ValueError(f"op {op} needs a single value, not a list")
    item = _scalar(field, kind, value)
    if op in TEXT_OPS and item == "":
        raise ValueError(f"op {op} with an empty value would match every contact; use is_set")
    if op is Op.REGEX:
        try:
            re.compile(item)
        except re.error as exc:
            raise ValueError(f"regex {item!r} does not compile: {exc}") from None
    return item if op in TEXT_OPS else _enum_value(field, item, enum_values)


def _enum_value(field: str, item: Any, enum_values: Sequence[str]) -> Any:
    """An enum compares in the spelling the import stored (``custom_fields.py``: the declared one)."""
    if not enum_values:
        return item
    spelled = {value.casefold(): value for value in enum_values}
    if item.casefold() not in spelled:
        raise ValueError(f"{field} is one of: {', '.join(enum_values)}; got {item!r}")
    return spelled[item.casefold()]


def _order_key(item: Any) -> Any:
    """Dates and times order together: a date stands for the start of its UTC day."""
    if isinstance(item, dt.date) and not isinstance(item, dt.datetime):
        return dt.datetime.combine(item, dt.time(), dt.UTC)
    return item


def custom_name(field: str) -> str | None:
    """``custom.loyalty`` -> ``loyalty``; None for a contact column."""
    return field.removeprefix(CUSTOM_PREFIX) if field.startswith(CUSTOM_PREFIX) else None
