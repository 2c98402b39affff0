"""Channel connectors per tenant, pointed at the real providers or at the provider sandbox.

The connector code is identical in both cases; only the base URL differs. In the embedded default
every provider is answered by the local sandbox (``sandbox/``), which speaks the real protocol,
so the demo and tests exercise exactly the code that runs in production.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import dagster as dg
from pydantic import Field

from policies.channels import Channel, Provider
from policies.tenants import Tenant
from resources.channels.base import ChannelConnector
from resources.channels.d360 import WEBHOOK_SECRET_HEADER, D360Connector
from resources.channels.greenapi import GreenApiConnector
from resources.channels.mailgun import MailgunConnector
from resources.channels.sendgrid import SendGridConnector
from resources.channels.smsc import SmscConnector
from resources.channels.smsru import SmsRuConnector
from resources.channels.telegram import TelegramConnector
from resources.channels.twilio import TwilioConnector
from resources.channels.vk import VkConnector
from resources.embedded_keys import sendgrid_sandbox_signing_key
from resources.settings import Settings, get_settings

PRODUCTION_BASE_URLS = {
    Provider.TELEGRAM: "https://api.telegram.org",
    Provider.MAILGUN: "https://api.mailgun.net",
    Provider.SENDGRID: "https://api.sendgrid.com",
    Provider.VK: "https://api.vk.com",
    Provider.SMSC: "https://smsc.ru",
    Provider.SMSRU: "https://sms.ru",
    Provider.TWILIO: "https://api.twilio.com",
    Provider.D360: "https://waba-v2.360dialog.io",
    Provider.GREENAPI: "https://api.green-api.com",
}

# What each provider's connector class declares about the provider (delivery_receipts, …), for code
# that knows a provider by name only (a ledger row) and holds no credentials to build a connector.
CONNECTOR_CLASSES: dict[Provider, type[ChannelConnector]] = {
    Provider.TELEGRAM: TelegramConnector,
    Provider.MAILGUN: MailgunConnector,
    Provider.SENDGRID: SendGridConnector,
    Provider.VK: VkConnector,
    Provider.SMSC: SmscConnector,
    Provider.SMSRU: SmsRuConnector,
    Provider.TWILIO: TwilioConnector,
    Provider.D360: D360Connector,
    Provider.GREENAPI: GreenApiConnector,
}


def has_delivery_receipts(provider: str) -> bool:
    """True when ``provider`` reports delivery, False when acceptance is all it says (Telegram, VK).

    Raises ValueError naming the provider when no connector speaks it.
    """
    try:
        return CONNECTOR_CLASSES[Provider(provider)].delivery_receipts
    except ValueError:
        raise ValueError(f"unknown provider {provider!r}; known: {', '.join(Provider)}") from None


# provider -> (account, secret reader, base url, channel, the tenant's callback root on our gateway) -> connector
Factory = Callable[[Any, Callable[[str], str], str, Channel, str], ChannelConnector]
FACTORIES: dict[Provider, Factory] = {
    Provider.TELEGRAM: lambda account, secret, base, channel, hooks: TelegramConnector(base, secret(account.bot_token_env)),
    Provider.MAILGUN: lambda account, secret, base, channel, hooks: MailgunConnector(
        base, account.domain, secret(account.api_key_env), account.sender
    ),
    Provider.SENDGRID: lambda account, secret, base, channel, hooks: SendGridConnector(base, secret(account.api_key_env), account.sender),
    Provider.VK: lambda account, secret, base, channel, hooks: VkConnector(base, account.group_id, secret(account.access_token_env)),
    Provider.SMSC: lambda account, secret, base, channel, hooks: SmscConnector(base, account.login, secret(account.password_env), account.sender),
    Provider.SMSRU: lambda account, secret, base, channel, hooks: SmsRuConnector(base, secret(account.api_id_env), account.sender),
    Provider.TWILIO: lambda account, secret, base, channel, hooks: TwilioConnector(
        base,
        account.account_sid,
        secret(account.auth_token_env),
        account.whatsapp_sender if channel is Channel.WHATSAPP else account.sms_sender,
        # Twilio posts delivery receipts only where the message says, signed over that URL.
        status_callback=f"{hooks}/{Provider.TWILIO}",
        channel=str(channel),
    ),
    Provider.D360: lambda account, secret, base, channel, hooks: D360Connector(base, secret(account.api_key_env)),
    Provider.GREENAPI: lambda account, secret, base, channel, hooks: GreenApiConnector(base, account.id_instance, secret(account.api_token_env)),
}


def hooks_root(gateway_url: str, tenant_id: str) -> str:
    """Where the gateway takes ``tenant_id``'s provider callbacks: ``<root>/<provider>`` (gateway/app.py)."""
    return f"{gateway_url}/hooks/{tenant_id}"


class UnknownChannelError(ValueError):
    """A campaign names a channel this tenant has no connector or account for."""


class ChannelConnectors(dg.ConfigurableResource):
    """Builds the connector for (tenant, channel) with that tenant's credentials.

    ``base_url`` overrides every provider's API root (tests, operators' dry runs); left empty it
    is the sandbox in the embedded default and the provider's own host in production.
    """

    base_url: str | None = Field(default=None, description="Override provider API roots (e.g. a sandbox URL)")

    def _base(self, provider: Provider, settings: Settings) -> str:
        if self.base_url:
            return self.base_url.rstrip("/")
        return settings.sandbox_url if settings.is_embedded else PRODUCTION_BASE_URLS[provider]

    def connector(self, tenant: Tenant, channel: str, tenant_id: str) -> ChannelConnector:
        """The connector for ``channel`` of tenant ``tenant_id``; raises UnknownChannelError (before
        anything is sent) when the channel is unknown or the tenant has no usable account, and
        SettingsError when a production secret is missing. Callback URLs that travel with each
        message (Twilio StatusCallback) point at ``tenant_id``'s hooks on the public gateway URL."""
        try:
            channel = Channel(channel)
        except ValueError:
            raise UnknownChannelError(f"unknown channel {channel!r}; known: {', '.join(Channel)}") from None
        provider = tenant.accounts.provider_for(channel)
        if provider is None:
            raise UnknownChannelError(f"tenant {tenant.name!r} has no account for channel {channel} (one of: {', '.join(channel.traits.providers)})")
        return self.for_provider(tenant, provider, channel, tenant_id)

    def for_provider(self, tenant: Tenant, provider: Provider, channel: Channel, tenant_id: str) -> ChannelConnector:
        """The connector of ``tenant``'s ``provider`` account (configured) for ``channel``."""
        settings = get_settings()
        account = getattr(tenant.accounts, provider.value)
        return FACTORIES[provider](account, settings.secret, self._base(provider, settings), channel, hooks_root(settings.gateway_url, tenant_id))


def sandbox_accounts(tenants: dict[str, Tenant], gateway_url: str) -> dict[str, Any]:
    """The provider-side view of our accounts, for the sandbox to load.

    A real provider knows our credentials and where to send callbacks because we registered them
    in its dashboard or through its API (Telegram ``setWebhook``, SMS.ru ``callback/add``); the
    sandbox learns the same facts from this mapping.
    """
    secret = get_settings().secret
    config: dict[str, list] = {provider.value: [] for provider in Provider}
    for tenant_id, tenant in sorted(tenants.items()):
        hooks = hooks_root(gateway_url, tenant_id)
        accounts = tenant.accounts
        if (a := accounts.telegram) is not None:
            config["telegram"].append({"token": secret(a.bot_token_env), "webhook_url": f"{hooks}/telegram", "secret_token": secret(a.webhook_secret_env)})
        if (a := accounts.mailgun) is not None:
            config["mailgun"].append(
                {"domain": a.domain, "api_key": secret(a.api_key_env), "signing_key": secret(a.signing_key_env), "webhook_url": f"{hooks}/mailgun"}
            )
        if (a := accounts.sendgrid) is not None:
            config["sendgrid"].append(
                {"api_key": secret(a.api_key_env), "webhook_url": f"{hooks}/sendgrid", "signing_key": sendgrid_sandbox_signing_key(a.webhook_public_key_env)}
            )
        if (a := accounts.vk) is not None:
            config["vk"].append(
                {"group_id": a.group_id, "access_token": secret(a.access_token_env), "secret": secret(a.callback_secret_env), "webhook_url": f"{hooks}/vk"}
            )
        if (a := accounts.smsc) is not None:
            config["smsc"].append({"login": a.login, "password": secret(a.password_env), "webhook_url": f"{hooks}/smsc"})
        if (a := accounts.smsru) is not None:
            config["smsru"].append({"api_id": secret(a.api_id_env), "webhook_url": f"{hooks}/smsru/{secret(a.callback_secret_env)}"})
        if (a := accounts.twilio) is not None:
            # Only the numbers' incoming-message URL is registered: delivery receipts go where each
            # message's StatusCallback says, as at Twilio.
            config["twilio"].append({"account_sid": a.account_sid, "auth_token": secret(a.auth_token_env), "inbound_url": f"{hooks}/twilio"})
        if (a := accounts.d360) is not None:
            config["d360"].append(
                {"api_key": secret(a.api_key_env), "webhook_url": f"{hooks}/d360", "webhook_headers": {WEBHOOK_SECRET_HEADER: secret(a.webhook_secret_env)}}
            )
        if (a := accounts.greenapi) is not None:
            config["greenapi"].append(
                {"id_instance": a.id_instance, "api_token": secret(a.api_token_env), "webhook_url": f"{hooks}/greenapi", "webhook_token": secret(a.webhook_token_env)}
            )
    return config
