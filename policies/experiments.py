"""A campaign's A/B test (the ``experiment:`` block of ``campaigns.yaml``) and who is in which arm.

Every contact of the campaign's audience falls, by a hash of (tenant, campaign, contact id), into
one arm: the **holdout** (gets nothing, the baseline), a **variant** (the test; the first variant
is the control), or the **rollout** remainder (waits, then gets the winner). The hash is SHA-256,
not Python's ``hash()`` (salted per process), so the same contact lands in the same arm on every
run and every machine, and arms of different campaigns are independent.

Variants override a channel's ``subject`` / ``text`` / ``html``, or, for a channel rendered from
the template library, pin another ``message_template`` version (whose every language then
carries the variant's words); a variant's message is the campaign's channel content with those
parts replaced, validated by the same rules (Jinja2 syntax, the e-mail opt-out link, the channel's
limits, the template reference).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any, Literal

from jinja2 import TemplateSyntaxError
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from policies.channels import Channel
from policies.fields import NonBlank, StrictModel
from policies.template_refs import MessageTemplateRef
from policies.templates import parse_template

HOLDOUT = "holdout"
ROLLOUT = "rollout"
GOALS = ("delivered", "clicked")
CONVERSION_PREFIX = "conversion:"
# The warehouse event a goal counts (event_type), and for a conversion its name (reason).
CONVERSION_EVENT = "conversion"


class VariantContent(StrictModel):
    """What a variant changes in one channel's message; unnamed parts stay the campaign's."""

    subject: NonBlank | None = None
    text: NonBlank | None = None
    html: NonBlank | None = None
    message_template: MessageTemplateRef | None = None

    @model_validator(mode="after")
    def _changes_something(self) -> VariantContent:
        if self.subject is None and self.text is None and self.html is None and self.message_template is None:
            raise ValueError("a variant's channel override needs at least one of subject, text, html, message_template")
        for part in ("subject", "text", "html"):
            if (source := getattr(self, part)) is not None:
                try:
                    parse_template(source)
                except TemplateSyntaxError as exc:
                    raise ValueError(f"{part}: invalid Jinja2 template at template line {exc.lineno}: {exc.message}") from None
        return self


class Variant(StrictModel):
    name: str = Field(pattern=r"^[a-z][a-z0-9_]{0,31}$")
    weight: float = Field(default=1.0, gt=0)
    channels: dict[Channel, VariantContent] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _not_reserved(cls, value: str) -> str:
        if value in (HOLDOUT, ROLLOUT):
            raise ValueError(f"{value!r} names an arm that is not a variant; choose another name")
        return value


class Experiment(StrictModel):
    """An A/B(/n) test of a campaign's message; see docs/experiments.md.

    ``holdout`` and ``test_fraction`` are shares of the whole audience (their sum at most 1); the
    rest is the rollout remainder. ``goal`` is ``delivered``, ``clicked`` or ``conversion:<event>``
    (a warehouse ``conversion`` event with that name), counted per contact within
    ``window_hours`` after its first send (on ``goal_channel`` when given: a subject-line test
    is judged by e-mail clicks, not by the campaign's Telegram button presses). ``looks`` evaluations are planned, the last one final;
    ``alpha`` is the family-wise false-positive rate over all looks and variants. With no winner
    at the final look, ``if_no_winner`` says whether the rollout gets the control or nothing.
    """

    variants: list[Variant] = Field(min_length=2, max_length=8)
    holdout: float = Field(default=0.0, ge=0, lt=1)
    test_fraction: float = Field(default=1.0, gt=0, le=1)
    goal: str = "clicked"
    goal_channel: Channel | None = None  # count only sends (and goal events) on this channel; None: any of the campaign's
    window_hours: int = Field(default=72, ge=1, le=24 * 90)
    looks: int = Field(default=3, ge=1, le=20)
    alpha: float = Field(default=0.05, gt=0, le=0.2)
    if_no_winner: Literal["send_control", "stop"] = "send_control"

    @field_validator("variants")
    @classmethod
    def _unique_names(cls, variants: list[Variant]) -> list[Variant]:
        names = [v.name for v in variants]
        if dupes := sorted({n for n in names if names.count(n) > 1}):
            raise ValueError(f"variant name(s) {dupes} used more than once")
        return variants

    @field_validator("goal")
    @classmethod
    def _known_goal(cls, value: str) -> str:
        if value in GOALS:
            return value
        event = value.removeprefix(CONVERSION_PREFIX)
        if value.startswith(CONVERSION_PREFIX) and event and event.replace("_", "").replace("-", "").isalnum():
            return value
        raise ValueError(f"goal must be one of {', '.join(GOALS)} or conversion:<event name> (letters, digits, _ or -), got {value!r}")

    @model_validator(mode="after")
    def _shares_fit(self) -> Experiment:
        if self.holdout + self.test_fraction > 1 + 1e-9:
            raise ValueError(f"holdout ({self.holdout}) + test_fraction ({self.test_fraction}) exceed the whole audience (1)")
        return self

    @property
    def control(self) -> str:
        return self.variants[0].name

    @property
    def conversion_event(self) -> str | None:
        """The conversion's name for a ``conversion:<event>`` goal, else None."""
        return self.goal.removeprefix(CONVERSION_PREFIX) if self.goal.startswith(CONVERSION_PREFIX) else None

    def variant(self, name: str) -> Variant:
        return next(v for v in self.variants if v.name == name)

    def content_for(self, name: str, content: BaseModel) -> Any:
        """The channel ``content`` as variant ``name`` sends it (the campaign's own when unchanged)."""
        override = self.variant(name).channels.get(content.channel)
        if override is None:
            return content
        merged = type(content).model_validate(content.model_dump() | override.model_dump(exclude_none=True))
        merged._campaign = content.campaign
        return merged

    def problems_with(self, contents: Sequence[BaseModel]) -> list[str]:
        """Why the variants do not fit the campaign's channel contents (empty when they do)."""
        by_channel = {c.channel: c for c in contents}
        problems = []
        if self.goal_channel is not None and self.goal_channel not in by_channel:
            problems.append(f"experiment.goal_channel: the campaign sends no {self.goal_channel} message")
        for i, variant in enumerate(self.variants):
            for channel in variant.channels:
                at = f"experiment.variants[{i}].channels.{channel}"
                if channel not in by_channel:
                    problems.append(f"{at}: the campaign sends no {channel} message to vary")
                    continue
                try:
                    self.content_for(variant.name, by_channel[channel])
                except ValidationError as exc:
                    problems += [f"{at}.{'.'.join(map(str, e['loc']))}: {e['msg'].removeprefix('Value error, ')}" for e in exc.errors()]
        return problems


def unit_interval(tenant: str, campaign: str, contact_id: int) -> float:
    """The contact's uniform draw in [0, 1) for this campaign: the first 64 bits of a SHA-256."""
    digest = hashlib.sha256(f"{tenant}\x1f{campaign}\x1f{contact_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def arm_for(experiment: Experiment, tenant: str, campaign: str, contact_id: int) -> str:
    """``holdout``, a variant's name, or ``rollout``: holdout first, then the test split by weight."""
    u = unit_interval(tenant, campaign, contact_id)
    if u < experiment.holdout:
        return HOLDOUT
    position = (u - experiment.holdout) / experiment.test_fraction
    if position >= 1.0:
        return ROLLOUT
    total = sum(v.weight for v in experiment.variants)
    cumulative = 0.0
    for variant in experiment.variants:
        cumulative += variant.weight / total
        if position < cumulative:
            return variant.name
    return experiment.variants[-1].name  # float rounding at the very top of the test share
