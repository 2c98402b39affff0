"""The campaigns file (``campaigns.yaml``): what each campaign sends on which channel, to whom,
and when (a schedule) or on what (a trigger).

Message parts are Jinja2 templates, parsed here with the same sandboxed environment that renders
them (``policies/templates.py``), so a syntax error or a missing opt-out link fails at load time.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Literal

from jinja2 import TemplateSyntaxError
from pydantic import Field, PrivateAttr, StringConstraints, ValidationInfo, field_validator, model_validator

from policies.ad_marking import AdvertisingMarking
from policies.campaign_schedule import MAX_CRON_STEP_CHARS, Schedule
from policies.channels import Channel, Provider
from policies.consent_purposes import CampaignPurpose
from policies.experiments import Experiment
from policies.fields import NonBlank, Slug, StepName, StrictModel, TenantId
from policies.template_refs import MessageTemplateRef
from policies.templates import parse_template, referenced_variables, static_text_length

UNSUBSCRIBE_VARIABLE = "unsubscribe_url"


class Button(StrictModel):
    """A Telegram inline button; Telegram rejects callback_data over 64 bytes."""

    label: NonBlank
    callback_data: NonBlank

    @field_validator("callback_data")
    @classmethod
    def _fits_telegram(cls, value: str) -> str:
        size = len(value.encode("utf-8"))
        if size > 64:
            raise ValueError(f"callback_data is {size} bytes in UTF-8; Telegram allows at most 64")
        return value


class AttachmentSpec(StrictModel):
    kind: Literal["photo", "document", "video", "audio"]
    url: NonBlank  # HTTPS URL the provider fetches, or a provider media id (VK "photo-123_456")
    filename: NonBlank | None = None
    caption: NonBlank | None = None


class TemplateSpec(StrictModel):
    """A provider-approved template (WhatsApp: 360dialog template name / Twilio ContentSid);
    ``variables`` are Jinja2 templates rendered per contact into {{1}}, {{2}}, …"""

    id: NonBlank
    language: Annotated[str, StringConstraints(pattern=r"^[a-z]{2}(_[A-Z]{2})?$")] = "ru"
    variables: list[NonBlank] = []

    @field_validator("variables")
    @classmethod
    def _variables_are_templates(cls, value: list[str]) -> list[str]:
        for number, source in enumerate(value, start=1):
            _check_template(source, f"template variable {number}", None)
        return value


def _check_template(source: str, part: str, channel: Channel | None) -> None:
    """Parse with the sandboxed environment and apply the channel's static limits."""
    try:
        ast = parse_template(source)
    except TemplateSyntaxError as exc:
        raise ValueError(f"invalid Jinja2 template at template line {exc.lineno}: {exc.message}") from None
    if channel is None or part == "subject":
        return
    limit = channel.traits.max_text_chars
    if part == "text" and limit is not None and (size := static_text_length(ast)) > limit:
        raise ValueError(f"{channel} text has {size} literal characters; the limit is {limit}")
    if channel.traits.needs_unsubscribe_link and UNSUBSCRIBE_VARIABLE not in referenced_variables(ast):
        raise ValueError(f"{channel} {part} must contain {{{{ {UNSUBSCRIBE_VARIABLE} }}}} (opt-out link required by law)")


class ChannelContent(StrictModel):
    """One channel's message inside a campaign; text, subject and html are Jinja2 templates, or
    ``message_template`` pins a version of a library template (``templates.yaml``) instead."""

    channel: Channel
    message_template: MessageTemplateRef | None = None
    subject: NonBlank | None = Field(default=None, validate_default=True)
    text: NonBlank | None = Field(default=None, validate_default=True)
    html: NonBlank | None = Field(default=None, validate_default=True)
    buttons: list[Button] = Field(default_factory=list, validate_default=True)
    attachments: list[AttachmentSpec] = Field(default_factory=list, validate_default=True)
    template: TemplateSpec | None = Field(default=None, validate_default=True)

    # Set by the owning Campaign so render errors can name it.
    _campaign: str | None = PrivateAttr(default=None)

    @property
    def campaign(self) -> str | None:
        return self._campaign

    @field_validator("subject")
    @classmethod
    def _subject(cls, value: str | None, info: ValidationInfo) -> str | None:
        channel = info.data.get("channel")
        if info.data.get("message_template") is not None:
            return _from_library("subject", value)
        if channel is not None:
            if channel.traits.needs_subject and value is None:
                raise ValueError(f"{channel} needs a subject")
            if not channel.traits.needs_subject and value is not None:
                raise ValueError(f"{channel} messages have no subject")
        if value is not None:
            _check_template(value, "subject", channel)
        return value

    @field_validator("text")
    @classmethod
    def _text(cls, value: str | None, info: ValidationInfo) -> str | None:
        if info.data.get("message_template") is not None:
            return _from_library("text", value)
        if value is None:
            raise ValueError("a channel needs `text` (or `message_template` to render it from the template library)")
        _check_template(value, "text", info.data.get("channel"))
        return value

    @field_validator("html")
    @classmethod
    def _html(cls, value: str | None, info: ValidationInfo) -> str | None:
        channel = info.data.get("channel")
        if info.data.get("message_template") is not None:
            return _from_library("html", value)
        if value is None:
            return value
        if channel is not None and not channel.traits.allows_html:
            raise ValueError(f"{channel} messages have no html part")
        _check_template(value, "html", channel)
        return value

    @field_validator("buttons")
    @classmethod
    def _buttons(cls, value: list[Button], info: ValidationInfo) -> list[Button]:
        channel = info.data.get("channel")
        if value and channel is not None and not channel.traits.allows_buttons:
            raise ValueError(f"{channel} messages have no buttons")
        return value

    @field_validator("attachments")
    @classmethod
    def _attachments(cls, value: list[AttachmentSpec], info: ValidationInfo) -> list[AttachmentSpec]:
        channel = info.data.get("channel")
        if channel is None:
            return value
        allowed = channel.traits.attachment_kinds
        for attachment in value:
            if attachment.kind not in allowed:
                supported = ", ".join(sorted(allowed)) or "none"
                raise ValueError(f"{channel} cannot carry a {attachment.kind} attachment (supported: {supported})")
        if len(value) > 1:
            raise ValueError(f"{channel} messages carry at most one attachment here")
        return value

    @field_validator("template")
    @classmethod
    def _template(cls, value: TemplateSpec | None, info: ValidationInfo) -> TemplateSpec | None:
        channel = info.data.get("channel")
        if value is not None and channel is not None and not channel.traits.allows_template:
            raise ValueError(f"{channel} has no provider templates")
        return value


def _from_library(part: str, value: str | None) -> None:
    if value is not None:
        raise ValueError(f"`{part}` comes from `message_template`; give one or the other")
    return None


class TriggerEvent(StrEnum):
    """What a person does that starts a trigger campaign for them; named ``<provider>_<event>``.

    A closed set: delivery processing records each occurrence in ``trigger_events`` (see
    ``orchestrator_assets/deliveries/opt_ins.py``), so a new member needs its recording there too.
    """

    TELEGRAM_START = "telegram_start"  # /start to the tenant's bot (also an explicit opt-in)
    VK_MESSAGE_ALLOW = "vk_message_allow"  # allowed the tenant's VK community to message them
    IMPORT_FINISHED = "import_finished"  # a contact import created or changed the contact (sensors/import_triggers.py)
    CUSTOM = "custom"  # the tenant posted an event `name` for the contact (gateway POST /v1/events/<tenant>)
    SEGMENT_ENTERED = "segment_entered"  # entered the trigger's `segment` (recorded in segment_events)

    @property
    def provider(self) -> Provider | None:
        """The provider whose callbacks report this event (None: reported by no provider)."""
        source = self.value.partition("_")[0]
        return Provider(source) if source in Provider.__members__.values() else None


class Trigger(StrictModel):
    """Start the campaign for each person the moment they do ``event`` (a welcome message).

    An occurrence the trigger sensor first sees more than ``max_delay_minutes`` after it happened
    (the sensor was stopped, the callback was dead-lettered and re-driven) is skipped: a welcome
    hours late is worse than none. Each contact gets the campaign once (the send ledger's key).
    """

    event: TriggerEvent
    name: Slug | None = None  # the custom event's name (event: custom only), e.g. cart_abandoned
    max_delay_minutes: int = Field(default=60, ge=1)
    segment: Slug | None = None  # the segment whose new members a segment_entered trigger reaches

    @model_validator(mode="after")
    def _segment_for_segment_entered(self) -> Trigger:
        if (self.event is TriggerEvent.SEGMENT_ENTERED) != (self.segment is not None):
            raise ValueError("`segment` names the segment of a segment_entered trigger, and only of one")
        return self

    @model_validator(mode="after")
    def _name_for_custom(self) -> Trigger:
        if (self.event == TriggerEvent.CUSTOM) != (self.name is not None):
            raise ValueError("`name` (the custom event's name) is required with event: custom and allowed only there")
        return self

    @property
    def occurrence(self) -> str:
        """The ``trigger_events.event`` value of an occurrence: ``custom:<name>`` or the event."""
        return f"{self.event}:{self.name}" if self.name else str(self.event)


class Fallback(StrictModel):
    """Reach each contact on ONE channel: the first in ``channels`` order they have consent and an
    address for; move to the next only when that send failed (unreachable, rejected, bounced) or,
    with ``undelivered_after_minutes``, was not confirmed delivered in time. A provider without
    delivery receipts (Telegram, VK) can never confirm, so there acceptance ends the chain.
    Without a fallback block every listed channel is sent, each under its own consent."""

    undelivered_after_minutes: int | None = Field(default=None, ge=1)


class Campaign(StrictModel):
    """A message to a segment at ``schedule.start_at``, or to each person who does ``trigger.event``
    (exactly one of the two). A trigger campaign's ``segment`` is optional: when given, a triggered
    contact must also match its rule at that moment."""

    name: Slug
    tenant: TenantId
    segment: Slug | None = None
    purpose: CampaignPurpose = CampaignPurpose.ADVERTISING
    advertising: AdvertisingMarking | None = None  # 38-FZ marking; required to START an advertising campaign
    channels: list[ChannelContent] = Field(min_length=1)
    schedule: Schedule | None = None
    trigger: Trigger | None = None
    step: StepName = "main"
    fallback: Fallback | None = None
    experiment: Experiment | None = None  # an A/B test of the message (policies/experiments.py)

    @model_validator(mode="after")
    def _starts_one_way(self) -> Campaign:
        if (self.schedule is None) == (self.trigger is None):
            given = "both" if self.schedule is not None else "neither"
            raise ValueError(f"a campaign needs exactly one of `schedule` (a start time) or `trigger` (an event), got {given}")
        if self.schedule is not None and self.segment is None:
            raise ValueError("a scheduled campaign needs a `segment` (only a trigger campaign may go to whoever triggers it)")
        if self.schedule is not None and self.schedule.recurring and len(self.step) > MAX_CRON_STEP_CHARS:
            raise ValueError(f"a cron campaign's step may have at most {MAX_CRON_STEP_CHARS} characters (each occurrence is step@<date-time>)")
        return self

    @field_validator("channels")
    @classmethod
    def _one_content_per_channel(cls, channels: list[ChannelContent]) -> list[ChannelContent]:
        seen = [c.channel for c in channels]
        dupes = sorted({str(c) for c in seen if seen.count(c) > 1})
        if dupes:
            raise ValueError(f"channel(s) {dupes} listed more than once")
        return channels

    @model_validator(mode="after")
    def _name_contents(self) -> Campaign:
        for content in self.channels:
            content._campaign = self.name
        return self

    @model_validator(mode="after")
    def _experiment_fits(self) -> Campaign:
        if self.experiment is not None and (problems := self.experiment.problems_with(self.channels)):
            raise ValueError("; ".join(problems))
        return self

    def content_for(self, channel: Channel) -> ChannelContent | None:
        return next((c for c in self.channels if c.channel == channel), None)


class CampaignsFile(StrictModel):
    campaigns: list[Campaign]

    @field_validator("campaigns")
    @classmethod
    def _unique_names(cls, campaigns: list[Campaign]) -> list[Campaign]:
        keys = [(c.tenant, c.name) for c in campaigns]
        dupes = sorted({k for k in keys if keys.count(k) > 1})
        if dupes:
            raise ValueError(f"campaign(s) defined more than once: {[f'{t}/{n}' for t, n in dupes]}")
        return campaigns
