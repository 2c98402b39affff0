"""Status-based fallback: one channel per contact, the next only when the earlier provably failed."""

from __future__ import annotations

import datetime as dt

import pytest

from orchestrator_assets.fallback import Attempt, next_channel

NOW = dt.datetime(2026, 11, 24, 12, 0, tzinfo=dt.UTC)
ORDER = ["telegram", "vk", "sms"]
ALL = set(ORDER)


def sent(minutes_ago: int, delivery: str | None = None) -> Attempt:
    return Attempt("sent", delivery, NOW - dt.timedelta(minutes=minutes_ago))


@pytest.mark.parametrize(
    ("eligible", "attempts", "after", "expected"),
    [
        pytest.param(ALL, {}, None, "telegram", id="first channel first"),
        pytest.param({"vk", "sms"}, {}, None, "vk", id="skips channels without consent/address"),
        pytest.param(ALL, {"telegram": Attempt("failed", None, NOW)}, None, "vk", id="unreachable moves on"),
        pytest.param(ALL, {"telegram": sent(1, "delivery_failed")}, None, "vk", id="bounce moves on"),
        pytest.param(ALL, {"telegram": sent(1, "delivered")}, None, None, id="delivered stops"),
        pytest.param(ALL, {"telegram": sent(1, "clicked")}, None, None, id="clicked stops"),
        pytest.param(ALL, {"telegram": sent(5)}, dt.timedelta(minutes=30), None, id="no receipt yet waits"),
        pytest.param(ALL, {"telegram": sent(31)}, dt.timedelta(minutes=30), "vk", id="no receipt in time moves on"),
        pytest.param(ALL, {"telegram": sent(999)}, None, None, id="without a timeout never doubles up"),
        pytest.param(ALL, {"telegram": Attempt("claimed", None, None)}, None, None, id="unknown outcome waits"),
        pytest.param(ALL, {"telegram": Attempt("ambiguous", None, None)}, dt.timedelta(minutes=1), None, id="ambiguous waits"),
        pytest.param(ALL, {"telegram": Attempt("resend", None, None)}, None, "telegram", id="operator's resend: same channel again"),
        pytest.param(
            ALL, {"telegram": Attempt("failed", None, NOW), "vk": Attempt("failed", None, NOW)}, None, "sms", id="chain"
        ),
        pytest.param(ALL, {c: Attempt("failed", None, NOW) for c in ORDER}, None, None, id="nothing left"),
    ],
)
def test_next_channel(eligible, attempts, after, expected):
    assert next_channel(ORDER, eligible, attempts, NOW, after) == expected
