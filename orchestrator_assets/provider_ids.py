"""Providers' message ids as the store keeps them: the part that names a person replaced by its blind index.

Some providers' ids carry the recipient: Telegram's is "<chat_id>:<message_id>" (message ids are
unique only within a chat), SMSC's is "<id>:<phone digits>", and a WhatsApp wamid (360dialog) is
base64 of a record holding the recipient's phone. Connectors and callback parsers keep the ids as
the provider spells them; every write of an id to the store (the ledger's finalise, an operator's
mark_sent) and every lookup by one (callback matching) goes through `stored_id`, so a callback's
raw id finds the row its send wrote, while the sends table, and the warehouse events, tenants'
webhook events and operators' decisions made from it, hold no chat id or phone.

The blind index is the tenant's (``orchestrator_assets/contact_pii.py``): deterministic, so
matching stays exact; keyed per tenant, so a stored id names no one without the tenant's key.
Telegram's and SMSC's own message numbers stay readable (an operator can still quote them to the
provider); a wamid is one opaque token, indexed whole. Ids of other providers (Twilio SIDs, GreenAPI
and SMS.ru ids, Mailgun and SendGrid message ids, VK message numbers) name no one and are kept as they are.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from orchestrator_assets.contact_pii import blind_index
from resources.pii import TenantCipher

WAMID = "wamid"  # blind index kind of a whole WhatsApp message id
CHAT_INDEX_HEX = 16

# An id already in the stored form (an operator pasting it from our own tables) does not match
# these and is kept as it is, so converting twice changes nothing.
_TELEGRAM = re.compile(r"(-?\d+):(\d+)")
_SMSC = re.compile(r"([^:]+):\+?(\d+)")


def _telegram(cipher: TenantCipher, raw: str) -> str:
    """``tg:<message_id>:<chat>``, the chat as the first ``CHAT_INDEX_HEX`` hex digits of its blind
    index. The message number leads so that ids written one after another sit side by side in the
    ledger's index (a random prefix scattered every write over the whole index: 6–9 % of the
    dispatch rate); 64 bits of the chat's index keep ids of one number in different chats apart."""
    match = _TELEGRAM.fullmatch(raw)
    return f"tg:{match[2]}:{blind_index(cipher, 'telegram', match[1])[:CHAT_INDEX_HEX]}" if match else raw


def _smsc(cipher: TenantCipher, raw: str) -> str:
    match = _SMSC.fullmatch(raw)
    return f"{match[1]}:ph:{blind_index(cipher, 'phone', match[2])}" if match else raw


def _wamid(cipher: TenantCipher, raw: str) -> str:
    return f"wa:{cipher.index(WAMID, raw)}" if raw.startswith("wamid.") else raw


_PSEUDONYMISE: dict[str, Callable[[TenantCipher, str], str]] = {"telegram": _telegram, "smsc": _smsc, "d360": _wamid}


def stored_id(cipher: TenantCipher, provider: str, raw: str | None) -> str | None:
    """The id the store keeps (and is searched by) for ``provider``'s message id ``raw``."""
    if not raw:
        return raw
    pseudonymise = _PSEUDONYMISE.get(provider)
    return raw if pseudonymise is None else pseudonymise(cipher, raw)
