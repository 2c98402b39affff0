"""Callback dedup keys as the store keeps them: a keyed hash of the provider's event id, never the id.

Some providers' event ids name the recipient (SMSC's "<id>:<phone digits>:<status>", a 360dialog
wamid, GREEN-API's "<phone>@c.us_<id>:<status>"), and the gateway stores them before any tenant key
is at hand. So every event key is kept as HMAC-SHA256 under a key of its own derived from the
master key (``resources/sealing.py``), over the tenant, the provider and the id: one rule for every
provider, ids that name no one included, so no provider's spelling has to be judged.

``stored_event_key`` is the only place the stored form is computed: the gateway's inbox writes
and replay checks, and delivery processing's warehouse event ids, tenants' webhook event ids and
consent evidence. The hash is deterministic (a redelivery maps to the stored key, so it is still
dropped) and names the tenant and provider (the same id elsewhere maps to another key).
"""

from __future__ import annotations

import hashlib
import hmac

from resources.sealing import derived_keys

EVENT_KEY_LABEL = b"algor/callback-event-keys/v1"
DIGEST_HEX = 32  # 128 bits: no two events of a tenant and provider collide in practice


def event_key_secret() -> bytes:
    """The key stored event keys are computed under (the current master key's). Looking it up costs
    more than hashing (settings, the key file), so a writer of many keys asks once."""
    return derived_keys(EVENT_KEY_LABEL)[0]


def stored_event_key(tenant: str, provider: str, raw: str, secret: bytes | None = None) -> str:
    """The event key the store keeps (and is searched by) for ``provider``'s event id ``raw``."""
    message = f"{tenant}\n{provider}\n{raw}".encode()
    return hmac.new(secret or event_key_secret(), message, hashlib.sha256).hexdigest()[:DIGEST_HEX]
