"""Signed per-recipient links (one-click unsubscribe), so a link names its recipient unforgeably.

A token is ``base64url(json payload) . base64url(HMAC-SHA256)``; anything tampered with fails
verification and is treated as unknown (404), never acted on.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json

from resources.settings import get_settings

LINK_KEY_ENV = "ALGOR_LINK_SIGNING_KEY"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _mac(body: str) -> str:
    key = get_settings().secret(LINK_KEY_ENV).encode()
    return _b64(hmac.new(key, body.encode(), hashlib.sha256).digest())


def sign_unsubscribe(tenant: str, contact_id: int, campaign: str) -> str:
    body = _b64(json.dumps({"t": tenant, "c": contact_id, "k": campaign}, separators=(",", ":")).encode())
    return f"{body}.{_mac(body)}"


def verify_unsubscribe(tenant: str, token: str) -> tuple[int, str] | None:
    """(contact_id, campaign) for a genuine token of this tenant, else None."""
    body, _, mac = token.partition(".")
    if not body or not hmac.compare_digest(mac, _mac(body)):
        return None
    try:
        payload = json.loads(_unb64(body))
    except ValueError:
        return None
    if payload.get("t") != tenant or not isinstance(payload.get("c"), int):
        return None
    return payload["c"], str(payload.get("k", ""))
