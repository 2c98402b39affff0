"""What happens to a message, decided by its recipient alone, so every run is reproducible.

    bucket = int(sha256(recipient.encode()).hexdigest()[:8], 16) % 100

E-mail (provider "mailgun"); a local part starting with "bounce", "complain", "click" or "deliver"
(e.g. ``bounce+3@example.ru``) forces that outcome, otherwise the bucket decides:

    bucket   outcome    what the sandbox does after accepting the send
    0–3      bounce     `failed` severity=permanent, reason "bounce", delivery-status code 550
    4–5      complain   `delivered`, then `complained`
    6–29     click      `delivered`, `opened`, `clicked`
    30–99    deliver    `delivered`

Telegram (provider "telegram", recipient = chat id as a string):

    bucket   outcome    what the sandbox does
    0–2      blocked    sendMessage answers 403 "Forbidden: bot was blocked by the user"; no callbacks
    3–24     click      accepts; then a `callback_query` update pressing the first button
    25–99    deliver    accepts; no callback (the Bot API reports no deliveries)
"""

from __future__ import annotations

import hashlib

TELEGRAM = "telegram"
MAILGUN = "mailgun"

BOUNCE, COMPLAIN, CLICK, DELIVER, BLOCKED = "bounce", "complain", "click", "deliver", "blocked"

_EMAIL_OVERRIDES = (BOUNCE, COMPLAIN, CLICK, DELIVER)
_EMAIL_TABLE = ((4, BOUNCE), (6, COMPLAIN), (30, CLICK), (100, DELIVER))
_TELEGRAM_TABLE = ((3, BLOCKED), (25, CLICK), (100, DELIVER))


def bucket(recipient: str) -> int:
    """0–99, from the first 32 bits of the recipient's SHA-256 (the address exactly as sent)."""
    return int(hashlib.sha256(recipient.encode()).hexdigest()[:8], 16) % 100


def outcome_for(provider: str, recipient: str) -> str:
    """The outcome of a send to `recipient` through `provider` ("telegram" or "mailgun")."""
    if provider == MAILGUN:
        local_part = recipient.split("@", 1)[0].lower()
        forced = next((name for name in _EMAIL_OVERRIDES if local_part.startswith(name)), None)
        return forced or _lookup(_EMAIL_TABLE, bucket(recipient))
    if provider == TELEGRAM:
        return _lookup(_TELEGRAM_TABLE, bucket(recipient))
    raise ValueError(f"unknown provider {provider!r}")


def _lookup(table: tuple[tuple[int, str], ...], value: int) -> str:
    return next(name for upper, name in table if value < upper)
