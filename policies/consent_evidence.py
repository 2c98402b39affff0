"""How far in the future a consent decision may be dated: the one rule every consent writer applies.

A consent fact is dated by its source (a CSV's ``consent_at``, a provider's callback time). The
current state follows the newest fact, so a fact dated in 2099 would outrank every real decision
after it. Clocks of different machines disagree, though, by seconds and now and then by minutes:
a time up to ``MAX_CLOCK_SKEW`` ahead of ours is taken as given, anything further is refused.
What refusing means is the writer's to say (an import row error, a callback retried until its time
has come); whether a time is too far ahead is decided here only.
"""

from __future__ import annotations

import datetime as dt

MAX_CLOCK_SKEW = dt.timedelta(minutes=5)


def future_dated(occurred_at: dt.datetime, now: dt.datetime) -> str | None:
    """Why a decision dated ``occurred_at`` cannot be taken as given at ``now``, or None when it can.

    Both times must be timezone-aware.
    """
    if occurred_at - now <= MAX_CLOCK_SKEW:
        return None
    minutes = int(MAX_CLOCK_SKEW.total_seconds() // 60)
    return (
        f"dated {_iso(occurred_at)}, more than {minutes} minutes after now ({_iso(now)}): "
        "a consent decision cannot be dated in the future"
    )


def _iso(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
