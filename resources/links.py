"""Signed per-recipient links (click tracking, one-click unsubscribe), so a link names its
recipient and target unforgeably and the redirect can never be an open redirect.

A token is ``<key id>.<base64url(json payload)>.<base64url(HMAC-SHA256)>``. Keys rotate: the
current key (``ALGOR_LINK_SIGNING_KEY``) signs, and it or any retired key still listed in
``ALGOR_LINK_SIGNING_KEYS_RETIRED`` (comma-separated) verifies, so links already sent keep working
for as long as an operator keeps their key listed. Anything tampered with verifies as None.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import html
import json
import re
from collections.abc import Callable, Collection
from typing import Any

from resources.settings import get_settings

LINK_KEY_ENV = "ALGOR_LINK_SIGNING_KEY"
RETIRED_KEYS_ENV = "ALGOR_LINK_SIGNING_KEYS_RETIRED"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _key_id(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:6]


def _keys() -> dict[str, str]:
    """Key id → key: the current key first, then retired ones still accepted."""
    settings = get_settings()
    keys = [settings.secret(LINK_KEY_ENV)]
    keys += [key.strip() for key in (settings.configured_secret(RETIRED_KEYS_ENV) or "").split(",") if key.strip()]
    return {_key_id(key): key for key in keys}


def _mac(key: str, body: str) -> str:
    return _b64(hmac.new(key.encode(), body.encode(), hashlib.sha256).digest())


def sign(payload: dict[str, Any]) -> str:
    key_id, key = next(iter(_keys().items()))
    body = _b64(json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode())
    return f"{key_id}.{body}.{_mac(key, body)}"


def verify(token: str) -> dict[str, Any] | None:
    """The payload of a genuine token signed with an accepted key, else None."""
    key_id, _, rest = token.partition(".")
    body, _, mac = rest.partition(".")
    key = _keys().get(key_id)
    # Bytes: the token comes from a URL, and compare_digest refuses non-ASCII str.
    if key is None or not body or not hmac.compare_digest(mac.encode(), _mac(key, body).encode()):
        return None
    try:
        payload = json.loads(_unb64(body))
    except ValueError:
        return None
    return payload if isinstance(payload, dict) else None


def sign_unsubscribe(tenant: str, contact_id: int, campaign: str) -> str:
    return sign({"t": tenant, "c": contact_id, "k": campaign, "u": 1})


def verify_unsubscribe(tenant: str, token: str) -> tuple[int, str] | None:
    """(contact_id, campaign) for a genuine unsubscribe token of this tenant, else None."""
    payload = verify(token)
    if not payload or payload.get("u") != 1 or payload.get("t") != tenant or not isinstance(payload.get("c"), int):
        return None
    return payload["c"], str(payload.get("k", ""))


def sign_click(tenant: str, campaign: str, step: str, contact_id: int, channel: str, url: str) -> str:
    return sign({"t": tenant, "k": campaign, "s": step, "c": contact_id, "ch": channel, "url": url})


def verify_click(tenant: str, token: str) -> dict[str, Any] | None:
    """The click payload (campaign ``k``, step ``s``, contact ``c``, channel ``ch``, target ``url``)
    for a genuine click token of this tenant, else None."""
    payload = verify(token)
    if not payload or payload.get("t") != tenant or not str(payload.get("url", "")).startswith(("https://", "http://")):
        return None
    if not isinstance(payload.get("c"), int):
        return None
    return payload


# A deep-link token is "<key id>-<contact id>-<first 22 characters of the MAC>" (128 bits): at most
# 50 characters of A-Za-z0-9_- , which is what Telegram allows in a start parameter (max 64).
DEEP_LINK_MAC_CHARS = 22


def _deep_link_mac(key: str, tenant: str, contact_id: int) -> str:
    return _mac(key, f"deep-link|{tenant}|{contact_id}")[:DEEP_LINK_MAC_CHARS]


def sign_deep_link(tenant: str, contact_id: int) -> str:
    """A token naming one contact of ``tenant``, for links that bring a person into a messenger:
    Telegram ``https://t.me/<bot>?start=<token>`` (the bot receives ``/start <token>``) and VK's
    allow-messages link ``key=<token>``. The opt-in it comes back with binds that chat to the contact."""
    key_id, key = next(iter(_keys().items()))
    return f"{key_id}-{contact_id}-{_deep_link_mac(key, tenant, contact_id)}"


def verify_deep_link(tenant: str, token: str) -> int | None:
    """The contact id of a genuine deep-link token of this tenant, else None."""
    key_id, _, rest = token.partition("-")
    contact, _, mac = rest.partition("-")
    key = _keys().get(key_id)
    if key is None or not (contact.isascii() and contact.isdigit()):
        return None
    # Bytes: the token is whatever a person typed after /start, and compare_digest refuses non-ASCII str.
    if not hmac.compare_digest(mac.encode(), _deep_link_mac(key, tenant, int(contact)).encode()):
        return None
    return int(contact)


_URL = re.compile(r"""https?://[^\s"'<>]+""")
_TRAILING = ".,;:!?)»"


def rewrite_links(text: str, tracked: Callable[[str], str], keep: Collection[str] = ()) -> str:
    """Replace every http(s) URL in ``text`` (plain text or HTML) with ``tracked(url)``.

    URLs in ``keep`` (the unsubscribe link) stay as they are; trailing sentence punctuation is
    not part of a URL. In HTML, ``&amp;`` inside an href is unescaped before signing and the
    tracked link is inserted as is (it is URL-safe).
    """

    def replace(match: re.Match[str]) -> str:
        url = match.group(0)
        tail = ""
        while url and url[-1] in _TRAILING:
            url, tail = url[:-1], url[-1] + tail
        target = html.unescape(url)
        if not url or url in keep or target in keep:
            return match.group(0)
        return tracked(target) + tail

    return _URL.sub(replace, text)
