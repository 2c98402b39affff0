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

from policies.schema import Channel, Provider, Tenant
from resources.channels.base import ChannelConnector
from resources.channels.mailgun import MailgunConnector
from resources.channels.telegram import TelegramConnector
from resources.settings import Settings, get_settings

PRODUCTION_BASE_URLS = {
    Provider.TELEGRAM: "https://api.telegram.org",
    Provider.MAILGUN: "https://api.mailgun.net",
}

# provider -> (account, secret reader, base url, channel) -> connector
Factory = Callable[[Any, Callable[[str], str], str, Channel], ChannelConnector]
FACTORIES: dict[Provider, Factory] = {
    Provider.TELEGRAM: lambda account, secret, base, channel: TelegramConnector(base, secret(account.bot_token_env)),
    Provider.MAILGUN: lambda account, secret, base, channel: MailgunConnector(
        base, account.domain, secret(account.api_key_env), account.sender
    ),
}


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

    def connector(self, tenant: Tenant, channel: str) -> ChannelConnector:
        """The connector for ``channel``; raises UnknownChannelError (before anything is sent) when
        the channel is unknown or the tenant has no usable account, and SettingsError when a
        production secret is missing."""
        try:
            channel = Channel(channel)
        except ValueError:
            raise UnknownChannelError(f"unknown channel {channel!r}; known: {', '.join(Channel)}") from None
        provider = tenant.accounts.provider_for(channel)
        if provider is None:
            raise UnknownChannelError(f"tenant {tenant.name!r} has no account for channel {channel} (one of: {', '.join(channel.traits.providers)})")
        factory = FACTORIES.get(provider)
        if factory is None:
            raise UnknownChannelError(f"provider {provider} has no connector yet")
        settings = get_settings()
        return factory(getattr(tenant.accounts, provider.value), settings.secret, self._base(provider, settings), channel)


def sandbox_accounts(tenants: dict[str, Tenant], gateway_url: str) -> dict[str, Any]:
    """The provider-side view of our accounts, for the sandbox to load.

    A real provider knows our tokens and where to send callbacks because we registered them in
    its dashboard (Mailgun) or via its API (Telegram ``setWebhook``); the sandbox learns the same
    facts from this mapping.
    """
    secret = get_settings().secret
    config: dict[str, list] = {"telegram": [], "mailgun": []}
    for tenant_id, tenant in sorted(tenants.items()):
        hooks = f"{gateway_url}/hooks/{tenant_id}"
        if (account := tenant.accounts.telegram) is not None:
            config["telegram"].append(
                {"token": secret(account.bot_token_env), "webhook_url": f"{hooks}/telegram", "secret_token": secret(account.webhook_secret_env)}
            )
        if (account := tenant.accounts.mailgun) is not None:
            config["mailgun"].append(
                {
                    "domain": account.domain,
                    "api_key": secret(account.api_key_env),
                    "signing_key": secret(account.signing_key_env),
                    "webhook_url": f"{hooks}/mailgun",
                }
            )
    return config
