"""Delivery status ranks: statuses only move forward.

Provider callbacks arrive out of order (a ``read``/``clicked`` before its ``delivered`` is
normal), so a status replaces the current one only when its rank is higher.
"""

from __future__ import annotations

from resources import warehouse as wh

RANKS = {
    wh.SENT: 1,
    wh.DELIVERY_FAILED: 2,
    wh.DELIVERED: 3,
    wh.OPENED: 4,
    wh.CLICKED: 5,
    wh.UNSUBSCRIBED: 6,
    wh.COMPLAINED: 7,
}

# Providers that send no delivery receipts: their API's acceptance is the delivery fact we have.
# The Telegram Bot API answers sendMessage only once the message is in the chat.
DELIVERED_ON_ACCEPT = frozenset({"telegram"})


def advances(current_rank: int | None, new_status: str) -> bool:
    return new_status in RANKS and (current_rank is None or RANKS[new_status] > current_rank)
