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

from collections.abc import Iterator, Mapping
from enum import StrEnum
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationInfo, field_validator, model_validator

from policies.channels import Channel
from policies.consent_purposes import ANY_CHANNEL, Purpose
from policies.fields import NonBlank, Slug, StrictModel, TenantId
from policies.segment_conditions import (
    CUSTOM_NAME,
    CUSTOM_PREFIX,
    OPS_BY_KIND,
    ContactField,
    Op,
    condition_value,
    contact_field_kind,
    custom_field_kind,
    custom_name,
)
from policies.tenants import CustomField

class Condition(StrictModel):
    field: ContactField | str
    op: Op
    value: Any = Field(default=None, validate_default=True)

    @field_validator("field", mode="before")
    @classmethod
    def _known_field(cls, field: Any) -> Any:
        if isinstance(field, str) and field.startswith(CUSTOM_PREFIX):
            if not CUSTOM_NAME.fullmatch(field.removeprefix(CUSTOM_PREFIX)):
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
