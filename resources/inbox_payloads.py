"""Providers' callbacks as the webhook inbox keeps them: sealed, since they name people (Mailgun's
recipient, Telegram's chat and sender, a reply's text) and no contact key is known when they arrive.

The gateway seals each payload before the insert (``resources/sealing.py``, a key of its own derived
from the master key), bound to its row's tenant, provider and event key; delivery processing opens
it. A row stored before payloads were sealed is plain JSON and still reads.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from resources.sealing import derived_keys, seal, unseal

INBOX_KEY_LABEL = b"algor/webhook-inbox/v1"
PREFIX = "sealed:"  # the column is text: sealed payloads are stored as base64 after this prefix


def _where(tenant: str, provider: str, event_key: str) -> str:
    return f"webhook_inbox/{tenant}/{provider}/{event_key}"


def inbox_keys() -> list[bytes]:
    """The inbox's keys (the sealing one first). Looking them up costs more than sealing a payload
    (settings, the key file), so a writer of many rows asks once."""
    return derived_keys(INBOX_KEY_LABEL)


def seal_payload(tenant: str, provider: str, event_key: str, payload: Any, keys: list[bytes] | None = None) -> str:
    plaintext = json.dumps(payload, ensure_ascii=False).encode()
    sealed = seal((keys or inbox_keys())[0], plaintext, _where(tenant, provider, event_key))
    return PREFIX + base64.b64encode(sealed).decode("ascii")


def open_payload(tenant: str, provider: str, event_key: str, stored: str, keys: list[bytes] | None = None) -> Any:
    """The payload of an inbox row (``SealError`` when it was altered or moved to another row)."""
    if not stored.startswith(PREFIX):
        return json.loads(stored)
    sealed = base64.b64decode(stored[len(PREFIX) :])
    return json.loads(unseal(keys or inbox_keys(), sealed, _where(tenant, provider, event_key)))
