"""A tenant's provider accounts (``tenants.yaml`` → ``accounts``) and which one carries a channel.

Accounts hold the names of the environment variables with the secrets, never the secrets.
"""

from __future__ import annotations

from email.utils import parseaddr
from typing import Annotated

from email_validator import EmailNotValidError, validate_email
from pydantic import BeforeValidator, Field, StringConstraints, model_validator

from policies.channels import Channel, Provider
from policies.fields import EnvVarName, NonBlank, StrictModel


class _Account(StrictModel):
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


class ChannelAccounts(StrictModel):
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
