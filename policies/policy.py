"""The send policy (``policy.yaml``): consent, suppression, dispatch limits and retries,
outbound webhook delivery, and the policies that protect recipients (per tenant)."""

from __future__ import annotations

from pydantic import Field, StrictBool, field_validator

from policies.channels import Channel
from policies.fields import StrictModel
from policies.send_policy import RecipientPolicies


class ConsentPolicy(StrictModel):
    """Sends need a granted consent of the campaign's purpose on the channel
    (``policies.consent_purposes``) and, with ``require_processing``, a granted 152-FZ processing
    consent as well."""

    require_processing: StrictBool
    channels_requiring_consent: list[Channel]

    @field_validator("channels_requiring_consent")
    @classmethod
    def _unique(cls, channels: list[Channel]) -> list[Channel]:
        if len(set(channels)) != len(channels):
            raise ValueError("a channel is listed more than once")
        return channels


class SuppressionPolicy(StrictModel):
    # A spam complaint on one channel is a withdrawal of trust, not just of that channel.
    complaint_suppresses_all_channels: StrictBool


class RetryPolicy(StrictModel):
    """Exponential backoff with full jitter for sends the provider refused transiently or for rate.

    A send whose request may have reached the provider (read timeout, reset) is only retried when
    the provider deduplicates; otherwise it is held as ambiguous, whatever this policy says.
    """

    max_attempts: int = Field(default=4, ge=1, le=20)
    base_delay_s: float = Field(default=0.5, gt=0)
    max_delay_s: float = Field(default=30.0, gt=0)


class RateLimit(StrictModel):
    """``per_second`` sustained, at most ``burst`` calls in any tenth of a second (default: a tenth
    of a second's worth), counted the way the provider counts them (see sends/limits.py)."""

    per_second: float = Field(gt=0)
    burst: int | None = Field(default=None, ge=1)


class CircuitBreakerPolicy(StrictModel):
    """Stop calling a provider account after ``failure_threshold`` consecutive transient failures;
    try one call again after ``reset_after_s``."""

    failure_threshold: int = Field(default=20, ge=1)
    reset_after_s: float = Field(default=30.0, gt=0)


class DispatchPolicy(StrictModel):
    max_in_flight_per_account: int = Field(default=64, ge=1)
    retry: RetryPolicy = RetryPolicy()
    circuit_breaker: CircuitBreakerPolicy = CircuitBreakerPolicy()
    # Limits by provider name (one bucket per provider *account*), per tenant and per campaign.
    provider_limits: dict[str, RateLimit] = {}
    tenant_limit: RateLimit | None = None
    campaign_limit: RateLimit | None = None


class WebhookDeliveryPolicy(StrictModel):
    """Tenants' outbound webhooks: a failed POST is tried again after exponential backoff with
    jitter (persisted as the row's next attempt time, so no run sleeps) and dead-lettered after
    ``max_attempts``; at most ``max_in_flight`` POSTs per run, each given ``timeout_s``."""

    max_attempts: int = Field(default=12, ge=1, le=50)
    base_delay_s: float = Field(default=10.0, gt=0)
    max_delay_s: float = Field(default=7200.0, gt=0)
    timeout_s: float = Field(default=10.0, gt=0, le=120)
    max_in_flight: int = Field(default=16, ge=1, le=256)


class Policy(StrictModel):
    consent: ConsentPolicy
    suppression: SuppressionPolicy
    dispatch: DispatchPolicy = DispatchPolicy()
    webhook_delivery: WebhookDeliveryPolicy = WebhookDeliveryPolicy()
    # Quiet hours, frequency caps, tenant caps (policies/send_policy.py, docs/policies.md).
    recipients: RecipientPolicies = RecipientPolicies()

    def requires_consent(self, channel: Channel) -> bool:
        return channel in self.consent.channels_requiring_consent
