"""Sandbox accounts and knobs, loadable from JSON or YAML.

One list of accounts per provider (Telegram bots, Mailgun sending domains, VK communities,
GREEN-API instances, …), each with the credentials the connectors must present and the webhook URL
the sandbox posts callbacks to (the real products keep these in their own settings: a bot's
setWebhook state, a Mailgun domain's webhooks, SMS.ru's callback/add). Unknown keys are refused so a
typo in a config file fails loudly instead of silently disabling a knob.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TelegramBot(_Strict):
    token: str
    webhook_url: str | None = None  # overridden at run time by setWebhook, as on the real Bot API
    secret_token: str | None = None
    rate_limit_per_s: int | None = Field(default=None, ge=1)  # None: no limit; over it → 429 retry_after


class MailgunDomain(_Strict):
    domain: str
    api_key: str
    signing_key: str  # the "HTTP webhook signing key" callbacks are signed with
    webhook_url: str | None = None  # one URL for every event type of this domain
    rate_limit_per_s: int | None = Field(default=None, ge=1)


class VkGroup(_Strict):
    group_id: int
    access_token: str  # community token presented as access_token on every method call
    secret: str | None = None  # Callback API secret, sent inside every event body
    webhook_url: str | None = None
    rate_limit_per_s: int | None = Field(default=None, ge=1)  # VK: 20 req/s per community token


class SendGridAccount(_Strict):
    api_key: str  # "Authorization: Bearer <key>"
    webhook_url: str | None = None  # Event Webhook URL; events are ECDSA-signed by the sandbox's own key
    rate_limit_per_s: int | None = Field(default=None, ge=1)
    # PEM of the P-256 private key the Event Webhook is signed with. None: one derived from api_key,
    # so the public key (GET /v3/user/webhooks/event/settings/signed) survives sandbox restarts.
    signing_key: str | None = None


class SmscAccount(_Strict):
    login: str
    password: str
    webhook_url: str | None = None  # status handler URL from the account settings
    rate_limit_per_s: int | None = Field(default=None, ge=1)


class SmsRuAccount(_Strict):
    api_id: str
    webhook_url: str | None = None  # registered with callback/add
    rate_limit_per_s: int | None = Field(default=None, ge=1)


class TwilioAccount(_Strict):
    account_sid: str
    auth_token: str  # HTTP Basic password and the X-Twilio-Signature HMAC key
    webhook_url: str | None = None  # default StatusCallback when a message names none
    rate_limit_per_s: int | None = Field(default=None, ge=1)
    inbound_url: str | None = None  # the sender's incoming-message URL (replies such as STOP); None: webhook_url


class D360Account(_Strict):
    api_key: str  # D360-API-KEY header
    webhook_url: str | None = None
    webhook_headers: dict[str, str] = {}  # custom headers 360dialog adds to each webhook (our auth)
    rate_limit_per_s: int | None = Field(default=None, ge=1)


class GreenApiInstance(_Strict):
    id_instance: int
    api_token: str  # in the path: /waInstance{id}/sendMessage/{token}
    webhook_url: str | None = None
    webhook_token: str | None = None  # sent back as "Authorization: Bearer <token>" on each webhook
    rate_limit_per_s: int | None = Field(default=None, ge=1)
    yellow_card_recipients: list[str] = []  # phones (any format) whose send draws a yellowCard status


class SandboxConfig(_Strict):
    telegram: list[TelegramBot] = []
    mailgun: list[MailgunDomain] = []
    vk: list[VkGroup] = []
    sendgrid: list[SendGridAccount] = []
    smsc: list[SmscAccount] = []
    smsru: list[SmsRuAccount] = []
    twilio: list[TwilioAccount] = []
    d360: list[D360Account] = []
    greenapi: list[GreenApiInstance] = []
    callback_delay_s: float = Field(default=0.05, ge=0)  # accepted send → first callback POST
    callback_max_attempts: int = Field(default=5, ge=1)  # POSTs per callback before it counts as failed
    callback_backoff_s: float = Field(default=0.2, ge=0)  # wait before retry n is backoff * 2**(n-1)
    callback_concurrency: int = Field(default=40, ge=1)  # POSTs in flight (Telegram's max_connections default)
    fault_rate: float = Field(default=0.0, ge=0, le=1)  # share of sends answered with a provider-shaped 503
    fault_seed: int = 0  # seeds the fault draw so a run is repeatable

    @classmethod
    def from_file(cls, path: str | Path) -> SandboxConfig:
        """Read a `.json` file as JSON and anything else as YAML."""
        text = Path(path).read_text(encoding="utf-8")
        data = json.loads(text) if str(path).endswith(".json") else yaml.safe_load(text)
        return cls.model_validate(data or {})
