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


def advances(current_rank: int | None, new_status: str) -> bool:
    return new_status in RANKS and (current_rank is None or RANKS[new_status] > current_rank)
