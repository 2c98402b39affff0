"""Channel connectors per tenant, pointed at the real providers or at the provider sandbox.

The connector code is identical in both cases; only the base URL differs. In the embedded default
every provider is answered by the local sandbox (``sandbox/``), which speaks the real protocol,
so the demo and tests exercise exactly the code that runs in production.
"""

from __future__ import annotations

from typing import Any

import dagster as dg
from pydantic import Field

from policies.schema import Tenant
from resources.channels.base import ChannelConnector
from resources.channels.mailgun import MailgunConnector
from resources.channels.telegram import TelegramConnector
from resources.settings import Settings, get_settings

# Which provider serves each channel (one per channel for now; the channels issue adds choice).
CHANNEL_PROVIDERS = {"telegram": "telegram", "email": "mailgun"}
PRODUCTION_BASE_URLS = {"telegram": "https://api.telegram.org", "mailgun": "https://api.mailgun.net"}


class UnknownChannelError(ValueError):
    """A campaign names a channel this tenant has no connector or account for."""


class ChannelConnectors(dg.ConfigurableResource):
    """Builds the connector for (tenant, channel) with that tenant's credentials.

    ``base_url`` overrides every provider's API root (tests, operators' dry runs); left empty it
    is the sandbox in the embedded default and the provider's own host in production.
    """

    base_url: str | None = Field(default=None, description="Override provider API roots (e.g. a sandbox URL)")

    def _base(self, provider: str, settings: Settings) -> str:
        if self.base_url:
            return self.base_url.rstrip("/")
        return settings.sandbox_url if settings.is_embedded else PRODUCTION_BASE_URLS[provider]

    def connector(self, tenant: Tenant, channel: str) -> ChannelConnector:
        settings = get_settings()
        provider = CHANNEL_PROVIDERS.get(channel)
        if provider is None:
            raise UnknownChannelError(f"unknown channel {channel!r}; known: {sorted(CHANNEL_PROVIDERS)}")
        if channel == "telegram" and tenant.accounts.telegram is not None:
            account = tenant.accounts.telegram
            return TelegramConnector(base_url=self._base(provider, settings), bot_token=settings.secret(account.bot_token_env))
        if channel == "email" and tenant.accounts.mailgun is not None:
            account = tenant.accounts.mailgun
            return MailgunConnector(
                base_url=self._base(provider, settings),
                domain=account.domain,
                api_key=settings.secret(account.api_key_env),
                sender=account.sender,
            )
        raise UnknownChannelError(f"tenant {tenant.name!r} has no {provider} account configured for channel {channel!r}")


def sandbox_accounts(tenants: dict[str, Tenant], gateway_url: str) -> dict[str, Any]:
    """The provider-side view of our accounts, for the sandbox to load.

    A real provider knows our tokens and where to send callbacks because we registered them in
    its dashboard (Mailgun) or via its API (Telegram ``setWebhook``); the sandbox learns the same
    facts from this mapping.
    """
    settings = get_settings()
    config: dict[str, Any] = {"telegram": [], "mailgun": []}
    for tenant_id, tenant in sorted(tenants.items()):
        if tenant.accounts.telegram is not None:
            account = tenant.accounts.telegram
            config["telegram"].append(
                {
                    "token": settings.secret(account.bot_token_env),
                    "webhook_url": f"{gateway_url}/hooks/{tenant_id}/telegram",
                    "secret_token": settings.secret(account.webhook_secret_env),
                }
            )
        if tenant.accounts.mailgun is not None:
            account = tenant.accounts.mailgun
            config["mailgun"].append(
                {
                    "domain": account.domain,
                    "api_key": settings.secret(account.api_key_env),
                    "signing_key": settings.secret(account.signing_key_env),
                    "webhook_url": f"{gateway_url}/hooks/{tenant_id}/mailgun",
                }
            )
    return config
