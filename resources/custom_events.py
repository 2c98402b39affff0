"""Custom events a tenant's own systems post to the gateway (``POST /v1/events/<tenant>``).

One shape for both ends: the gateway validates a post into ``PostedEvent`` and stores it in the
webhook inbox under the source ``events`` with its ``idempotency_key`` as the event id (so a retried
post is stored once); delivery processing reads it back from there, records it as a trigger
occurrence ``custom:<name>`` and, for a conversion, appends it to the warehouse.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints, model_validator

from resources.channels.base import CLOCK_SKEW_S

EVENTS = "events"  # the inbox source of posted events
CONVERSION = "conversion"  # the warehouse event_type of an event posted with conversion: true

EventName = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,127}$")]
IdempotencyKey = Annotated[str, StringConstraints(pattern=r"^[\x21-\x7e]{1,128}$")]


def events_secret_env(tenant: str) -> str:
    """The env var holding the tenant's Standard Webhooks secret for its event posts."""
    return f"ALGOR_EVENTS_SECRET_{tenant.upper()}"


class PostedEvent(BaseModel):
    """One event about one contact: named by our ``contact_id`` or the tenant's ``external_id``
    (exactly one). ``conversion: true`` also counts it as a conversion (reason = ``name``) for
    A/B goals and attribution. ``properties`` are kept sealed in the inbox and used by nothing yet."""

    model_config = ConfigDict(extra="forbid")

    name: EventName
    contact_id: int | None = Field(default=None, gt=0)
    external_id: Annotated[str, StringConstraints(min_length=1, max_length=128)] | None = None
    occurred_at: AwareDatetime
    properties: dict[str, Any] = Field(default_factory=dict)
    conversion: bool = False
    idempotency_key: IdempotencyKey

    @model_validator(mode="after")
    def _one_contact_reference(self) -> PostedEvent:
        if (self.contact_id is None) == (self.external_id is None):
            raise ValueError("name the contact by exactly one of `contact_id` or `external_id`")
        if self.occurred_at > dt.datetime.now(dt.UTC) + dt.timedelta(seconds=CLOCK_SKEW_S):
            raise ValueError(f"`occurred_at` is more than {CLOCK_SKEW_S} s in the future")
        return self

    @property
    def occurrence(self) -> str:
        """The ``trigger_events.event`` value its occurrence is recorded under."""
        return f"custom:{self.name}"
