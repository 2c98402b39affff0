"""Status-based fallback across channels: which channel (if any) a contact should get next.

Pure, so the rule is tested without a database. A channel is tried at most once per contact and
campaign (the send ledger key includes the channel), and a later channel is only used when the
earlier one demonstrably did not reach the contact: never two channels for the same message.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

# Delivery states that prove the message arrived: the contact was reached, stop here.
REACHED = frozenset({"delivered", "opened", "clicked", "complained", "unsubscribed"})


@dataclass(frozen=True)
class Attempt:
    """What the ledger and deliveries say about one earlier send of this campaign on one channel."""

    ledger_status: str  # claimed | sent | failed | ambiguous | resend
    delivery_status: str | None  # furthest delivery status, if any callback arrived
    finished_at: dt.datetime | None
    delivery_receipts: bool  # does the send's provider report delivery at all (not Telegram, VK)


def next_channel(
    order: Sequence[str],
    eligible: set[str],
    attempts: Mapping[str, Attempt],
    now: dt.datetime,
    undelivered_after: dt.timedelta | None,
) -> str | None:
    """The channel to send on now, or None (reached, still waiting, or nothing left to try)."""
    for channel in order:
        if channel not in eligible:
            continue
        attempt = attempts.get(channel)
        if attempt is None:
            return channel
        if attempt.ledger_status in ("claimed", "ambiguous"):
            return None  # outcome unknown: wait, never risk a second channel
        if attempt.ledger_status == "resend":
            return channel  # an operator allowed a second attempt on this channel
        if attempt.ledger_status == "failed" or attempt.delivery_status == "delivery_failed":
            continue
        if attempt.delivery_status in REACHED:
            return None
        if not attempt.delivery_receipts:
            # Accepted where no receipt will ever come: acceptance is all we can learn, so waiting
            # for one would move every contact on to the next channel, i.e. message them twice.
            return None
        timed_out = (
            undelivered_after is not None and attempt.finished_at is not None and now - attempt.finished_at >= undelivered_after
        )
        if not timed_out:
            return None  # sent, no receipt yet: give it time
    return None
