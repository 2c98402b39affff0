"""The segments file (``segments.yaml``): named AND/OR/NOT rules over contacts.

A rule is ``{all: [rules]}``, ``{any: [rules]}``, ``{not: rule}`` or a leaf:

* a condition ``{field, op, value}`` on a contact column or a tenant's custom field
  (``custom.<name>``, typed in tenants.yaml ``custom_fields``);
* ``{consent: {channel, purpose}}``: the contact holds that consent now (consent ledger);
* ``{behaviour: {event, channel?, campaign?, link?, at_least?, at_most?, within_days?}}``: what
  the contact did with our messages, counted in the warehouse.

Rules are validated against what they test (a number field takes numbers, a text op needs text,
a regex must compile), so a rule that could only ever match nobody fails at load time. Custom
fields' types live in another file, so their conditions are checked by ``rule_problems`` once the
tenant is known (``policies/loader.py`` does it for every segment and for a live count's rule).
What a rule selects is ``orchestrator_assets/segment_sql.py`` (operational store) and
``orchestrator_assets/segment_behaviour.py`` (warehouse); docs/segments.md is the reference.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterator, Mapping, Sequence
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationInfo, field_validator, model_validator

from policies.channels import Channel
from policies.consent_purposes import ANY_CHANNEL, Purpose
from policies.fields import NonBlank, Slug, StrictModel, TenantId
from policies.tenants import CustomField, CustomFieldType

CUSTOM_PREFIX = "custom."
_CUSTOM_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")


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


class Condition(StrictModel):
    field: ContactField | str
    op: Op
    value: Any = Field(default=None, validate_default=True)

    @field_validator("field", mode="before")
    @classmethod
    def _known_field(cls, field: Any) -> Any:
        if isinstance(field, str) and field.startswith(CUSTOM_PREFIX):
            if not _CUSTOM_NAME.fullmatch(field.removeprefix(CUSTOM_PREFIX)):
                raise ValueError(f"{field!r} is not a custom field name (custom.<lowercase name>)")
            return field
        try:
            return ContactField(field)
        except ValueError:
            known = ", ".join(f.value for f in ContactField)
            raise ValueError(f"unknown field: use one of {known} or custom.<name> (tenants.yaml custom_fields) (got {field!r})") from None

    @field_validator("value", mode="before")
    @classmethod
    def _value_fits_op_and_field(cls, value: Any, info: ValidationInfo) -> Any:
        """Types are checked against the column so a YAML ``language: no`` (a bool) or an
        unquoted phone (an int) fails here rather than silently matching nobody. A custom
        field's type is the tenant's: ``rule_problems`` checks those conditions."""
        field, op = info.data.get("field"), info.data.get("op")
        if field is None or op is None:
            return value  # already reported on field/op
        if isinstance(field, ContactField):
            return condition_value(field, contact_field_kind(field), op, value)
        return value


class AllRule(StrictModel):
    all: list[Rule] = Field(min_length=1)


class AnyRule(StrictModel):
    any: list[Rule] = Field(min_length=1)


class NotRule(StrictModel):
    model_config = ConfigDict(validate_by_name=True)  # merged with StrictModel's; ``not`` is a keyword

    not_: Rule = Field(alias="not")


class ConsentCheck(StrictModel):
    """A consent the contact holds now (granted, not withdrawn, not expired): ``purpose`` on
    ``channel``; processing consent is not about a channel (``policies/consent_purposes.py``)."""

    purpose: Purpose
    channel: Channel | None = None

    @model_validator(mode="after")
    def _channel_fits_purpose(self) -> ConsentCheck:
        if self.purpose is Purpose.PROCESSING and self.channel is not None:
            raise ValueError("processing consent is not per channel: leave out `channel`")
        if self.purpose is not Purpose.PROCESSING and self.channel is None:
            raise ValueError(f"{self.purpose} consent is per channel: name the `channel`")
        return self

    @property
    def subject_channel(self) -> str:
        return ANY_CHANNEL if self.channel is None else self.channel.value


class ConsentRule(StrictModel):
    consent: ConsentCheck


class BehaviourEvent(StrEnum):
    """What happened to a message sent to the contact, as the warehouse records it."""

    SENT = "sent"
    DELIVERED = "delivered"
    OPENED = "opened"
    CLICKED = "clicked"
    FAILED = "failed"  # refused at send time or bounced
    COMPLAINED = "complained"


class Behaviour(StrictModel):
    """The contact had ``event`` (on ``channel``, in ``campaign``, on ``link``) between
    ``at_least`` and ``at_most`` times (both included) in the last ``within_days`` days.
    Without counts: at least once. ``at_most`` alone includes contacts with no such event."""

    event: BehaviourEvent
    channel: Channel | None = None
    campaign: Slug | None = None
    link: NonBlank | None = None  # the clicked URL, exactly as the provider reported it
    at_least: int | None = Field(default=None, ge=0)
    at_most: int | None = Field(default=None, ge=0)
    within_days: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _counts_make_sense(self) -> Behaviour:
        if self.link is not None and self.event is not BehaviourEvent.CLICKED:
            raise ValueError("`link` narrows clicks only: use it with event: clicked")
        if self.at_least is not None and self.at_most is not None and self.at_least > self.at_most:
            raise ValueError(f"at_least ({self.at_least}) is more than at_most ({self.at_most}): matches nobody")
        if self.at_least == 0 and self.at_most is None:
            raise ValueError("at_least: 0 without at_most matches every contact; drop the clause")
        return self

    @property
    def min_count(self) -> int:
        """The fewest events a member has: ``at_least``, else 0 with an ``at_most``, else 1."""
        if self.at_least is not None:
            return self.at_least
        return 0 if self.at_most is not None else 1


class BehaviourRule(StrictModel):
    behaviour: Behaviour


_KEYED = ("all", "any", "not", "consent", "behaviour")


def _rule_kind(raw: Any) -> str | None:
    """Pick the rule model by its key, so errors come from one model instead of all of them."""
    if isinstance(raw, BaseModel):
        return _TAG_BY_MODEL.get(type(raw))
    if not isinstance(raw, dict):
        return None
    return next((f"<{key}>" for key in _KEYED if key in raw), "<condition>")


Rule = Annotated[
    Annotated[AllRule, Tag("<all>")]
    | Annotated[AnyRule, Tag("<any>")]
    | Annotated[NotRule, Tag("<not>")]
    | Annotated[ConsentRule, Tag("<consent>")]
    | Annotated[BehaviourRule, Tag("<behaviour>")]
    | Annotated[Condition, Tag("<condition>")],
    Discriminator(
        _rule_kind,
        custom_error_type="rule",
        custom_error_message="a rule is a mapping: {all: [...]}, {any: [...]}, {not: rule}, {consent: ...}, {behaviour: ...} or {field, op, value}",
    ),
]
_TAG_BY_MODEL = {AllRule: "<all>", AnyRule: "<any>", NotRule: "<not>", ConsentRule: "<consent>", BehaviourRule: "<behaviour>", Condition: "<condition>"}
# Pydantic puts these tags into error locations; they are not YAML keys, so the loader drops them.
RULE_TAGS = frozenset(_TAG_BY_MODEL.values())

AllRule.model_rebuild()
AnyRule.model_rebuild()
NotRule.model_rebuild()


def walk(rule: Rule, at: str = "") -> Iterator[tuple[str, Rule]]:
    """Every node of ``rule`` with its key path below ``at`` (``all[1].any[0]``), parents first."""
    yield at, rule
    match rule:
        case AllRule() | AnyRule():
            key = "all" if isinstance(rule, AllRule) else "any"
            for i, child in enumerate(rule.all if isinstance(rule, AllRule) else rule.any):
                yield from walk(child, _join(at, f"{key}[{i}]"))
        case NotRule():
            yield from walk(rule.not_, _join(at, "not"))


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def behaviours(rule: Rule) -> list[Behaviour]:
    """The distinct behaviour clauses of ``rule``, in order: each is one warehouse query."""
    found: dict[Behaviour, None] = {}
    for _, node in walk(rule):
        if isinstance(node, BehaviourRule):
            found.setdefault(node.behaviour)
    return list(found)


def rule_problems(rule: Rule, custom_fields: Mapping[str, CustomField], at: str) -> Iterator[tuple[str, str]]:
    """(key path, reason) of each condition on a custom field the tenant does not declare, or
    whose op or value does not fit the declared type."""
    for path, node in walk(rule, at):
        if not isinstance(node, Condition) or (name := custom_name(node.field)) is None:
            continue
        declared = custom_fields.get(name)
        if declared is None:
            known = ", ".join(sorted(custom_fields)) or "none"
            yield _join(path, "field"), f"custom field {name!r} is not declared in the tenant's custom_fields (declared: {known})"
            continue
        kind = custom_field_kind(declared)
        try:
            condition_value(node.field, kind, node.op, node.value, declared.values)
        except ValueError as exc:
            yield _join(path, "op" if node.op not in OPS_BY_KIND[kind] else "value"), str(exc)


class Segment(StrictModel):
    name: Slug
    description: NonBlank
    rule: Rule


class SegmentsFile(StrictModel):
    segments: dict[TenantId, list[Segment]]

    @field_validator("segments")
    @classmethod
    def _unique_names(cls, segments: dict[str, list[Segment]]) -> dict[str, list[Segment]]:
        for tenant, items in segments.items():
            names = [s.name for s in items]
            dupes = sorted({n for n in names if names.count(n) > 1})
            if dupes:
                raise ValueError(f"tenant {tenant!r} defines segment(s) {dupes} more than once")
        return segments
