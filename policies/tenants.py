"""The tenants file (``tenants.yaml``): each tenant's identity, timezone, provider accounts and
outbound webhook subscriptions."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BeforeValidator, Field, StringConstraints, field_validator, model_validator

from policies.accounts import ChannelAccounts
from policies.fields import EnvVarName, NonBlank, StepName, StrictModel, TenantId


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


class WebhookSubscription(StrictModel):
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


class ImportMode(StrEnum):
    """What a contact import does with a file that has rejected rows (docs/imports.md)."""

    ALL_OR_NOTHING = "all_or_nothing"  # any rejected row: nothing is written, the run fails with the report
    VALID_ROWS_ONLY = "valid_rows_only"  # the valid rows are committed, the rejected ones reported


class CustomFieldType(StrEnum):
    """What a tenant's own contact field holds; an import cell that is not one is a row error."""

    STRING = "string"
    INT = "int"
    DECIMAL = "decimal"  # "12.5" or Russian Excel's "12,5"
    BOOL = "bool"  # yes/no, да/нет, true/false, 1/0
    DATE = "date"  # 2025-03-01 or 01.03.2025
    ENUM = "enum"  # one of ``values``, any case


class CustomField(StrictModel):
    """A tenant's own contact field (loyalty level, birthday, …), read from the import column of the
    same name or of one of its ``aliases`` (header spellings as in the tenant's CRM export)."""

    type: CustomFieldType
    values: list[NonBlank] = []  # the allowed values of an enum
    aliases: list[NonBlank] = []
    required: bool = False  # every row must have it (an import without the column is refused)

    @model_validator(mode="after")
    def _values_for_enums_only(self) -> CustomField:
        if (self.type is CustomFieldType.ENUM) != bool(self.values):
            raise ValueError("values are required for an enum field and allowed for no other type")
        if len({value.casefold() for value in self.values}) != len(self.values):
            raise ValueError("an enum value is listed more than once (values compare case-insensitively)")
        return self


# ISO 3166-1 alpha-2, upper case: the region phonenumbers reads numbers without +country in.
CountryCode = Annotated[str, StringConstraints(pattern=r"^[A-Z]{2}$")]


class Tenant(StrictModel):
    name: NonBlank
    operator_legal_entity: NonBlank  # the personal-data operator named in consent texts
    timezone: str
    # Where the tenant's contacts live: imported phones written without +country code are numbers
    # of this country. Required, not defaulted: guessing Russia for a tenant in Germany turned
    # every national German number into an error or, worse, a valid Russian one.
    country: CountryCode
    accounts: ChannelAccounts
    webhooks: list[WebhookSubscription] = []
    # The default of the tenant's contact imports; a run's config can override it.
    import_mode: ImportMode = ImportMode.VALID_ROWS_ONLY
    # Contact fields of the tenant's own, by name (slugs like step names). A header that is one of
    # our columns or its aliases (phone, Телефон, …) always means our column; a custom field named
    # like one of our columns makes imports refuse to run until it is renamed.
    custom_fields: dict[StepName, CustomField] = {}

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


class TenantsFile(StrictModel):
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
