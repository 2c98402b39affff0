"""Typed shape of the policy files (tenants, segments, campaigns, send policy).

Everything an operator writes in ``policies/config/*.yaml`` is validated here before any send
can depend on it, so a typo fails at load time with a precise path instead of mid-campaign.
Every model forbids unknown keys: a misspelt optional key (``subjcet:``) would otherwise be
silently dropped. Secrets never appear in these files, only the NAMES of the environment
variables that hold them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from email.utils import parseaddr
from enum import StrEnum
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from email_validator import EmailNotValidError, validate_email
from jinja2 import TemplateSyntaxError
from pydantic import (
    AwareDatetime,
    BeforeValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    PrivateAttr,
    StrictBool,
    StrictInt,
    StrictStr,
    StringConstraints,
    Tag,
    ValidationInfo,
    field_validator,
    model_validator,
)

from policies.templates import parse_template, referenced_variables, static_text_length

TenantId = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{1,63}$")]
# Segment/campaign/step/purpose names end up in ledger keys and URLs: keep them slugs that fit
# the operational-store columns (segment and campaign are String(128), step String(64)).
Slug = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,127}$")]
StepName = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,63}$")]
_ENV_VAR_NAME = re.compile(r"[A-Z][A-Z0-9_]{2,127}")


def _env_var_name(value: Any) -> str:
    """Reject anything but an env-var name without echoing it: it may be a pasted secret."""
    if not isinstance(value, str) or not _ENV_VAR_NAME.fullmatch(value):
        raise ValueError("must be the NAME of an environment variable (A-Z, 0-9, _), not a secret (value not shown)")
    return value


EnvVarName = Annotated[str, BeforeValidator(_env_var_name)]
NonBlank = Annotated[str, StringConstraints(min_length=1, pattern=r"\S")]

UNSUBSCRIBE_VARIABLE = "unsubscribe_url"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Provider(StrEnum):
    """An external delivery service; each tenant holds at most one account per provider."""

    TELEGRAM = "telegram"
    MAILGUN = "mailgun"
    SENDGRID = "sendgrid"
    VK = "vk"
    SMSC = "smsc"
    SMSRU = "smsru"
    TWILIO = "twilio"
    D360 = "d360"
    GREENAPI = "greenapi"


@dataclass(frozen=True)
class ChannelTraits:
    """What a channel's messages may contain; the validators and the renderer read only this."""

    providers: tuple[Provider, ...]  # who can carry this channel, in default preference order
    needs_subject: bool = False
    allows_html: bool = False
    allows_buttons: bool = False
    max_text_chars: int | None = None
    needs_unsubscribe_link: bool = False
    allows_template: bool = False  # provider-approved templates (WhatsApp outside the 24-hour window)
    attachment_kinds: frozenset[str] = frozenset()  # what every provider of the channel can attach
    max_sms_segments: int | None = None  # GSM-7/UCS-2 segments, checked after rendering


class Channel(StrEnum):
    """A messaging channel; validation and rendering follow from its traits."""

    TELEGRAM = "telegram", ChannelTraits(
        providers=(Provider.TELEGRAM,),
        allows_buttons=True,
        max_text_chars=4096,  # the user leaves by blocking the bot: no unsubscribe link needed
        attachment_kinds=frozenset({"photo", "document"}),
    )
    EMAIL = "email", ChannelTraits(
        providers=(Provider.MAILGUN, Provider.SENDGRID),
        needs_subject=True,
        allows_html=True,
        needs_unsubscribe_link=True,
    )
    # VK attachments are media ids uploaded beforehand ("photo-123_456").
    VK = "vk", ChannelTraits(
        providers=(Provider.VK,), allows_buttons=True, max_text_chars=4096, attachment_kinds=frozenset({"photo", "document"})
    )
    SMS = "sms", ChannelTraits(providers=(Provider.SMSC, Provider.SMSRU, Provider.TWILIO), max_sms_segments=6)
    WHATSAPP = "whatsapp", ChannelTraits(
        providers=(Provider.D360, Provider.TWILIO, Provider.GREENAPI),
        allows_buttons=True,
        max_text_chars=4096,
        allows_template=True,
        attachment_kinds=frozenset({"photo", "document"}),
    )

    traits: ChannelTraits

    def __new__(cls, value: str, traits: ChannelTraits) -> Channel:
        member = str.__new__(cls, value)
        member._value_ = value
        member.traits = traits
        return member


# --- tenants ---------------------------------------------------------------------------------


class _Account(_Strict):
    @property
    def env_names(self) -> tuple[str, ...]:
        """The env-var names this account reads (every ``*_env`` field)."""
        return tuple(value for key, value in self if key.endswith("_env") and value)


def _sender_is_an_address(value: str) -> str:
    """``Name <addr@domain>`` or a bare address; a broken From is rejected by every provider."""
    _, address = parseaddr(value)
    try:
        validate_email(address, check_deliverability=False)
    except EmailNotValidError as exc:
        raise ValueError(f"sender {value!r} is not 'Name <address>' or an address: {exc}") from None
    return value


EmailSender = Annotated[str, BeforeValidator(_sender_is_an_address)]
Domain = Annotated[str, StringConstraints(max_length=253, pattern=r"^([a-z0-9-]+\.)+[a-z]{2,63}$")]
E164 = Annotated[str, StringConstraints(pattern=r"^\+[1-9][0-9]{6,14}$")]


class TelegramAccount(_Account):
    bot_token_env: EnvVarName
    webhook_secret_env: EnvVarName


class MailgunAccount(_Account):
    domain: Domain
    api_key_env: EnvVarName
    signing_key_env: EnvVarName
    sender: EmailSender


class SendGridAccount(_Account):
    api_key_env: EnvVarName
    webhook_public_key_env: EnvVarName  # Event Webhook verification key (base64 DER), from SendGrid
    sender: EmailSender


class VkAccount(_Account):
    group_id: int = Field(gt=0)
    access_token_env: EnvVarName
    callback_secret_env: EnvVarName
    confirmation_code_env: EnvVarName


class SmscAccount(_Account):
    login: NonBlank
    password_env: EnvVarName
    sender: NonBlank | None = None


class SmsRuAccount(_Account):
    api_id_env: EnvVarName
    callback_secret_env: EnvVarName  # SMS.ru signs nothing: the callback URL carries this secret
    sender: NonBlank | None = None


class TwilioAccount(_Account):
    account_sid: Annotated[str, StringConstraints(pattern=r"^AC[0-9a-fA-F]{32}$")]
    auth_token_env: EnvVarName
    sms_sender: E164 | None = None
    whatsapp_sender: E164 | None = None


class D360Account(_Account):
    api_key_env: EnvVarName
    webhook_secret_env: EnvVarName  # sent back by 360dialog as a custom webhook header


class GreenApiAccount(_Account):
    id_instance: int = Field(gt=0)
    api_token_env: EnvVarName
    webhook_token_env: EnvVarName


class ChannelAccounts(_Strict):
    """Provider accounts, one field per ``Provider`` value, plus which provider carries a channel
    when several could (default: the first configured in the channel's preference order)."""

    telegram: TelegramAccount | None = None
    mailgun: MailgunAccount | None = None
    sendgrid: SendGridAccount | None = None
    vk: VkAccount | None = None
    smsc: SmscAccount | None = None
    smsru: SmsRuAccount | None = None
    twilio: TwilioAccount | None = None
    d360: D360Account | None = None
    greenapi: GreenApiAccount | None = None
    channel_providers: dict[Channel, Provider] = {}

    @model_validator(mode="after")
    def _consistent(self) -> ChannelAccounts:
        if not self.configured():
            raise ValueError(f"configure at least one account ({', '.join(Provider)})")
        for channel, provider in self.channel_providers.items():
            if provider not in channel.traits.providers:
                raise ValueError(f"{provider} cannot carry {channel} (it can: {', '.join(channel.traits.providers)})")
            if getattr(self, provider.value) is None:
                raise ValueError(f"channel_providers.{channel} names {provider}, but no {provider} account is configured")
        if self.twilio and not (self.twilio.sms_sender or self.twilio.whatsapp_sender):
            raise ValueError("twilio needs sms_sender or whatsapp_sender")
        return self

    def configured(self) -> list[_Account]:
        return [account for provider in Provider if (account := getattr(self, provider.value))]

    def provider_for(self, channel: Channel) -> Provider | None:
        """The provider that carries ``channel`` for this tenant, or None when none is configured."""
        if channel in self.channel_providers:
            return self.channel_providers[channel]
        return next((p for p in channel.traits.providers if self._carries(p, channel)), None)

    def _carries(self, provider: Provider, channel: Channel) -> bool:
        account = getattr(self, provider.value)
        if provider is Provider.TWILIO and account is not None:
            return bool(account.whatsapp_sender if channel is Channel.WHATSAPP else account.sms_sender)
        return account is not None

    def for_channel(self, channel: Channel) -> _Account | None:
        provider = self.provider_for(channel)
        return None if provider is None else getattr(self, provider.value)

    @property
    def env_names(self) -> tuple[str, ...]:
        return tuple(name for account in self.configured() for name in account.env_names)


class WebhookEventType(StrEnum):
    """What a tenant's webhook subscription can ask for (orchestrator_assets/webhooks/events.py)."""

    MESSAGE_SENT = "message.sent"  # the provider accepted a campaign message
    MESSAGE_SEND_FAILED = "message.send_failed"  # the provider finally refused it
    # Delivery status changes (a status only moves forward; see delivery_status.py) …
    MESSAGE_DELIVERED = "message.delivered"
    MESSAGE_DELIVERY_FAILED = "message.delivery_failed"  # bounced / undeliverable
    MESSAGE_OPENED = "message.opened"  # opened / read
    MESSAGE_UNSUBSCRIBED = "message.unsubscribed"
    MESSAGE_COMPLAINED = "message.complained"
    # … except clicks: every click is an event, not only the first.
    MESSAGE_CLICKED = "message.clicked"
    CONSENT_GRANTED = "consent.granted"
    CONSENT_WITHDRAWN = "consent.withdrawn"  # opt-outs, complaints, unreachable answers, imports
    WEBHOOK_ENDPOINT_DISABLED = "webhook.endpoint_disabled"  # one of the tenant's endpoints failed too often in a row


def _webhook_url(value: Any) -> str:
    """An absolute http(s) URL with a host; credentials never (they would sit in YAML in the clear)."""
    if not isinstance(value, str) or any(ch.isspace() for ch in value):
        raise ValueError(f"url must be an http:// or https:// URL without spaces (got {value!r})")
    parts = urlsplit(value)
    if parts.username or parts.password:
        raise ValueError("url must not carry credentials (value not shown); the receiver checks our signature instead")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"url must be an absolute http:// or https:// URL (got {value!r})")
    try:
        parts.port  # noqa: B018 - raises on a malformed port
    except ValueError:
        raise ValueError(f"url has an invalid port (got {value!r})") from None
    return value


WebhookUrl = Annotated[str, BeforeValidator(_webhook_url)]


class WebhookSubscription(_Strict):
    """A tenant's endpoint for outbound webhooks: which events it gets, signed (Standard Webhooks)
    with the secret held by the env var ``secret_env``."""

    name: StepName  # part of the outbox's unique key; names the subscription in the UI and retry job
    url: WebhookUrl
    events: list[WebhookEventType] = Field(min_length=1)
    secret_env: EnvVarName
    # Failed attempts in a row (any row; a 2xx resets) after which the endpoint is disabled until an
    # operator enables it (enable_webhook_endpoints_job); its pending deliveries wait meanwhile.
    disable_after_failures: int = Field(default=20, ge=1, le=10_000)

    @field_validator("events")
    @classmethod
    def _unique_events(cls, events: list[WebhookEventType]) -> list[WebhookEventType]:
        if len(set(events)) != len(events):
            raise ValueError("an event type is listed more than once")
        return events


class Tenant(_Strict):
    name: NonBlank
    operator_legal_entity: NonBlank  # the personal-data operator named in consent texts
    timezone: str
    accounts: ChannelAccounts
    webhooks: list[WebhookSubscription] = []

    @field_validator("webhooks")
    @classmethod
    def _unique_subscription_names(cls, webhooks: list[WebhookSubscription]) -> list[WebhookSubscription]:
        names = [subscription.name for subscription in webhooks]
        dupes = sorted({name for name in names if names.count(name) > 1})
        if dupes:
            raise ValueError(f"webhook subscription name(s) used more than once: {dupes}")
        return webhooks

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown IANA timezone {value!r} (e.g. Europe/Moscow)") from None
        return value


class TenantsFile(_Strict):
    tenants: dict[TenantId, Tenant] = Field(min_length=1)

    @field_validator("tenants")
    @classmethod
    def _no_shared_credentials(cls, tenants: dict[str, Tenant]) -> dict[str, Tenant]:
        """Two tenants on one secret or one Mailgun domain would see each other's traffic."""
        owners: dict[str, str] = {}
        for tenant_id, tenant in tenants.items():
            keys = [f"env var {n}" for n in (*tenant.accounts.env_names, *(w.secret_env for w in tenant.webhooks))]
            if tenant.accounts.mailgun:
                keys.append(f"mailgun domain {tenant.accounts.mailgun.domain}")
            for key in keys:
                if key in owners and owners[key] != tenant_id:
                    raise ValueError(f"{key} is used by tenants {owners[key]!r} and {tenant_id!r}")
                owners[key] = tenant_id
        return tenants


# --- segments --------------------------------------------------------------------------------


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


INTEGER_FIELDS = frozenset({ContactField.TELEGRAM_CHAT_ID, ContactField.VK_USER_ID})


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


class Condition(_Strict):
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


class AllRule(_Strict):
    all: list[Rule] = Field(min_length=1)


class AnyRule(_Strict):
    any: list[Rule] = Field(min_length=1)


class NotRule(_Strict):
    model_config = ConfigDict(validate_by_name=True)  # merged with _Strict's; ``not`` is a keyword

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


class Segment(_Strict):
    name: Slug
    description: NonBlank
    rule: Rule


class SegmentsFile(_Strict):
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


# --- campaigns -------------------------------------------------------------------------------


class Button(_Strict):
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


class AttachmentSpec(_Strict):
    kind: Literal["photo", "document", "video", "audio"]
    url: NonBlank  # HTTPS URL the provider fetches, or a provider media id (VK "photo-123_456")
    filename: NonBlank | None = None
    caption: NonBlank | None = None


class TemplateSpec(_Strict):
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


class ChannelContent(_Strict):
    """One channel's message inside a campaign; text, subject and html are Jinja2 templates."""

    channel: Channel
    subject: NonBlank | None = Field(default=None, validate_default=True)
    text: NonBlank
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
    def _text(cls, value: str, info: ValidationInfo) -> str:
        _check_template(value, "text", info.data.get("channel"))
        return value

    @field_validator("html")
    @classmethod
    def _html(cls, value: str | None, info: ValidationInfo) -> str | None:
        channel = info.data.get("channel")
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


class Schedule(_Strict):
    start_at: AwareDatetime  # naive times are ambiguous across tenant timezones


class TriggerEvent(StrEnum):
    """What a person does that starts a trigger campaign for them; named ``<provider>_<event>``.

    A closed set: delivery processing records each occurrence in ``trigger_events`` (see
    ``orchestrator_assets/deliveries/opt_ins.py``), so a new member needs its recording there too.
    """

    TELEGRAM_START = "telegram_start"  # /start to the tenant's bot (also an explicit opt-in)
    VK_MESSAGE_ALLOW = "vk_message_allow"  # allowed the tenant's VK community to message them

    @property
    def provider(self) -> Provider:
        """The provider whose callbacks report this event."""
        return Provider(self.value.partition("_")[0])


class Trigger(_Strict):
    """Start the campaign for each person the moment they do ``event`` (a welcome message).

    An occurrence the trigger sensor first sees more than ``max_delay_minutes`` after it happened
    (the sensor was stopped, the callback was dead-lettered and re-driven) is skipped: a welcome
    hours late is worse than none. Each contact gets the campaign once (the send ledger's key).
    """

    event: TriggerEvent
    max_delay_minutes: int = Field(default=60, ge=1)


class Fallback(_Strict):
    """Reach each contact on ONE channel: the first in ``channels`` order they have consent and an
    address for; move to the next only when that send failed (unreachable, rejected, bounced) or,
    with ``undelivered_after_minutes``, was not confirmed delivered in time. Without a fallback
    block every listed channel is sent, each under its own consent."""

    undelivered_after_minutes: int | None = Field(default=None, ge=1)


class Campaign(_Strict):
    """A message to a segment at ``schedule.start_at``, or to each person who does ``trigger.event``
    (exactly one of the two). A trigger campaign's ``segment`` is optional: when given, a triggered
    contact must also match its rule at that moment."""

    name: Slug
    tenant: TenantId
    segment: Slug | None = None
    purpose: Slug = "marketing"
    channels: list[ChannelContent] = Field(min_length=1)
    schedule: Schedule | None = None
    trigger: Trigger | None = None
    step: StepName = "main"
    fallback: Fallback | None = None

    @model_validator(mode="after")
    def _starts_one_way(self) -> Campaign:
        if (self.schedule is None) == (self.trigger is None):
            given = "both" if self.schedule is not None else "neither"
            raise ValueError(f"a campaign needs exactly one of `schedule` (a start time) or `trigger` (an event), got {given}")
        if self.schedule is not None and self.segment is None:
            raise ValueError("a scheduled campaign needs a `segment` (only a trigger campaign may go to whoever triggers it)")
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

    def content_for(self, channel: Channel) -> ChannelContent | None:
        return next((c for c in self.channels if c.channel == channel), None)


class CampaignsFile(_Strict):
    campaigns: list[Campaign]

    @field_validator("campaigns")
    @classmethod
    def _unique_names(cls, campaigns: list[Campaign]) -> list[Campaign]:
        keys = [(c.tenant, c.name) for c in campaigns]
        dupes = sorted({k for k in keys if keys.count(k) > 1})
        if dupes:
            raise ValueError(f"campaign(s) defined more than once: {[f'{t}/{n}' for t, n in dupes]}")
        return campaigns


# --- send policy -----------------------------------------------------------------------------


class ConsentPolicy(_Strict):
    """Sends on ``channels_requiring_consent`` need a granted consent row for
    (tenant, contact, channel, ``required_purpose``); every campaign must declare that purpose."""

    required_purpose: Slug
    channels_requiring_consent: list[Channel]

    @field_validator("channels_requiring_consent")
    @classmethod
    def _unique(cls, channels: list[Channel]) -> list[Channel]:
        if len(set(channels)) != len(channels):
            raise ValueError("a channel is listed more than once")
        return channels


class SuppressionPolicy(_Strict):
    # A spam complaint on one channel is a withdrawal of trust, not just of that channel.
    complaint_suppresses_all_channels: StrictBool


class RetryPolicy(_Strict):
    """Exponential backoff with full jitter for sends the provider refused transiently or for rate.

    A send whose request may have reached the provider (read timeout, reset) is only retried when
    the provider deduplicates; otherwise it is held as ambiguous, whatever this policy says.
    """

    max_attempts: int = Field(default=4, ge=1, le=20)
    base_delay_s: float = Field(default=0.5, gt=0)
    max_delay_s: float = Field(default=30.0, gt=0)


class RateLimit(_Strict):
    """``per_second`` sustained, at most ``burst`` calls in any tenth of a second (default: a tenth
    of a second's worth), counted the way the provider counts them (see sends/limits.py)."""

    per_second: float = Field(gt=0)
    burst: int | None = Field(default=None, ge=1)


class CircuitBreakerPolicy(_Strict):
    """Stop calling a provider account after ``failure_threshold`` consecutive transient failures;
    try one call again after ``reset_after_s``."""

    failure_threshold: int = Field(default=20, ge=1)
    reset_after_s: float = Field(default=30.0, gt=0)


class DispatchPolicy(_Strict):
    max_in_flight_per_account: int = Field(default=64, ge=1)
    retry: RetryPolicy = RetryPolicy()
    circuit_breaker: CircuitBreakerPolicy = CircuitBreakerPolicy()
    # Limits by provider name (one bucket per provider *account*), per tenant and per campaign.
    provider_limits: dict[str, RateLimit] = {}
    tenant_limit: RateLimit | None = None
    campaign_limit: RateLimit | None = None


class WebhookDeliveryPolicy(_Strict):
    """Tenants' outbound webhooks: a failed POST is tried again after exponential backoff with
    jitter (persisted as the row's next attempt time, so no run sleeps) and dead-lettered after
    ``max_attempts``; at most ``max_in_flight`` POSTs per run, each given ``timeout_s``."""

    max_attempts: int = Field(default=12, ge=1, le=50)
    base_delay_s: float = Field(default=10.0, gt=0)
    max_delay_s: float = Field(default=7200.0, gt=0)
    timeout_s: float = Field(default=10.0, gt=0, le=120)
    max_in_flight: int = Field(default=16, ge=1, le=256)


class Policy(_Strict):
    consent: ConsentPolicy
    suppression: SuppressionPolicy
    dispatch: DispatchPolicy = DispatchPolicy()
    webhook_delivery: WebhookDeliveryPolicy = WebhookDeliveryPolicy()

    def requires_consent(self, channel: Channel) -> bool:
        return channel in self.consent.channels_requiring_consent

