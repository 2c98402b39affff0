"""Standard Webhooks signatures on outbound webhooks (https://www.standardwebhooks.com).

Every POST carries ``webhook-id`` (the event id: the same on every retry, so a receiver
deduplicates on it), ``webhook-timestamp`` (unix seconds of this attempt, so a receiver rejects
replays outside its tolerance) and ``webhook-signature: v1,<base64 HMAC-SHA256 of
"{id}.{timestamp}.{body}">``. The signing is the ``standardwebhooks`` package's, so a tenant
verifies with any Standard Webhooks library and the secret they were given.

Secrets are ``whsec_`` + base64 of the key, the spec's format, held by the env var a
subscription names in ``secret_env`` (``resources/standard_webhooks.py``, shared with the gateway,
which verifies tenants' own event posts the same way).
"""

from __future__ import annotations

import datetime as dt

from standardwebhooks import Webhook

from resources.standard_webhooks import signing_secret

__all__ = ["signed_headers", "signing_secret"]

def signed_headers(signer: Webhook, event_id: str, body: str, at: dt.datetime) -> dict[str, str]:
    """Headers for one attempt at ``at`` (UTC); the timestamp is signed, so it is fresh every attempt."""
    at = at.astimezone(dt.UTC).replace(microsecond=0)
    return {
        "content-type": "application/json",
        "webhook-id": event_id,
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": signer.sign(event_id, at, body),
    }
