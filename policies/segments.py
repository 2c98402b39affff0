"""The segments file (``segments.yaml``): named AND/OR/NOT rules over contact fields.

Rules are validated against the field they test (a number field takes numbers, a text op needs
text), so a rule that could only ever match nobody fails at load time. What a rule selects in the
operational store is ``orchestrator_assets/segment_sql.py``.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Discriminator, Field, StrictInt, StrictStr, Tag, ValidationInfo, field_validator

from policies.fields import NonBlank, Slug, StrictModel, TenantId


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
    EMAIL_DOMAIN = "email_domain"
    PHONE_COUNTRY = "phone_country"


INTEGER_FIELDS = frozenset({ContactField.TELEGRAM_CHAT_ID, ContactField.VK_USER_ID})
# Personal data is sealed in the store (docs/privacy.md): these fields are compared through keyed
# blind indexes, which answer equality and presence only; names have no index at all.
BLIND_INDEXED_FIELDS = frozenset({ContactField.EMAIL, ContactField.PHONE, ContactField.TELEGRAM_CHAT_ID, ContactField.VK_USER_ID})
SEALED_ONLY_FIELDS = frozenset({ContactField.FIRST_NAME, ContactField.LAST_NAME})


class Op(StrEnum):
    EQ = "eq"
    NE = "ne"
    IN = "in"
    NOT_IN = "not_in"
    CONTAINS = "contains"
    STARTS_WITH = "starts_with"
    IS_SET = "is_set"
    IS_NOT_SET = "is_not_set"


_LIST_OPS = frozenset({Op.IN, Op.NOT_IN})
_NO_VALUE_OPS = frozenset({Op.IS_SET, Op.IS_NOT_SET})
_TEXT_OPS = frozenset({Op.CONTAINS, Op.STARTS_WITH})

Scalar = StrictStr | StrictInt


class Condition(StrictModel):
    field: ContactField
    op: Op
    value: Scalar | list[Scalar] | None = Field(default=None, validate_default=True)

    @field_validator("value", mode="before")
    @classmethod
    def _value_fits_op_and_field(cls, value: Any, info: ValidationInfo) -> Any:
        """Types are checked against the column so a YAML ``language: no`` (a bool) or an
        unquoted phone (an int) fails here rather than silently matching nobody."""
        field, op = info.data.get("field"), info.data.get("op")
        if field is None or op is None:
            return value  # already reported on field/op
        if field in SEALED_ONLY_FIELDS:
            raise ValueError(f"{field} is encrypted at rest and cannot be selected on; segment on city, language, email_domain or phone_country")
        if op in _TEXT_OPS and field in BLIND_INDEXED_FIELDS:
            hint = "email_domain" if field == ContactField.EMAIL else "phone_country" if field == ContactField.PHONE else "eq or in"
            raise ValueError(f"{field} is encrypted at rest: only eq, ne, in, not_in, is_set and is_not_set work on it; use {hint} instead")
        if op in _NO_VALUE_OPS:
            if value is not None:
                raise ValueError(f"op {op} takes no value")
            return value
        if value is None:
            raise ValueError(f"op {op} needs a value")
        if op in _LIST_OPS:
            if not isinstance(value, list) or not value:
                raise ValueError(f"op {op} needs a non-empty list value")
            items = value
        elif isinstance(value, list):
            raise ValueError(f"op {op} needs a single value, not a list")
        else:
            items = [value]
        if op in _TEXT_OPS and field in INTEGER_FIELDS:
            raise ValueError(f"op {op} works on text fields; {field} is a number")
        if op in _TEXT_OPS and value == "":
            raise ValueError(f"op {op} with an empty value would match every contact; use is_set")
        expected = int if field in INTEGER_FIELDS else str
        for item in items:
            if isinstance(item, bool) or not isinstance(item, expected):
                hint = " (quote it in YAML)" if expected is str else ""
                raise ValueError(f"{field} compares with {expected.__name__} values, got {item!r}{hint}")
        return value


class AllRule(StrictModel):
    all: list[Rule] = Field(min_length=1)


class AnyRule(StrictModel):
    any: list[Rule] = Field(min_length=1)


class NotRule(StrictModel):
    model_config = ConfigDict(validate_by_name=True)  # merged with StrictModel's; ``not`` is a keyword

    not_: Rule = Field(alias="not")


def _rule_kind(raw: Any) -> str | None:
    """Pick the rule model by its key, so errors come from one model instead of all four."""
    if isinstance(raw, BaseModel):
        return _TAG_BY_MODEL.get(type(raw))
    if not isinstance(raw, dict):
        return None
    for key in ("all", "any", "not"):
        if key in raw:
            return f"<{key}>"
    return "<condition>"


Rule = Annotated[
    Annotated[AllRule, Tag("<all>")]
    | Annotated[AnyRule, Tag("<any>")]
    | Annotated[NotRule, Tag("<not>")]
    | Annotated[Condition, Tag("<condition>")],
    Discriminator(
        _rule_kind,
        custom_error_type="rule",
        custom_error_message="a rule is a mapping: {all: [...]}, {any: [...]}, {not: rule} or {field, op, value}",
    ),
]
_TAG_BY_MODEL = {AllRule: "<all>", AnyRule: "<any>", NotRule: "<not>", Condition: "<condition>"}
# Pydantic puts these tags into error locations; they are not YAML keys, so the loader drops them.
RULE_TAGS = frozenset(_TAG_BY_MODEL.values())

AllRule.model_rebuild()
AnyRule.model_rebuild()
NotRule.model_rebuild()


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
