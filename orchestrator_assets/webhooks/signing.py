"""Standard Webhooks signatures on outbound webhooks (https://www.standardwebhooks.com).

Every POST carries ``webhook-id`` (the event id: the same on every retry, so a receiver
deduplicates on it), ``webhook-timestamp`` (unix seconds of this attempt, so a receiver rejects
replays outside its tolerance) and ``webhook-signature: v1,<base64 HMAC-SHA256 of
"{id}.{timestamp}.{body}">``. The signing is the ``standardwebhooks`` package's, so a tenant
verifies with any Standard Webhooks library and the secret they were given.

Secrets are ``whsec_`` + base64 of the key, the spec's format, held by the env var a
subscription names in ``secret_env``. In the embedded default an unset one is the installation's
sandbox secret (``Settings.secret``), so a local receiver of the same installation can verify with
zero setup.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt

from standardwebhooks import Webhook

from resources.settings import SettingsError, get_settings

SECRET_PREFIX = "whsec_"
MIN_KEY_BYTES = 24  # the spec's lower bound for a signing key


def signing_secret(env_name: str) -> str:
    """The subscription's secret, as the tenant holds it (``whsec_<base64>``)."""
    settings = get_settings()
    configured = settings.configured_secret(env_name)
    if configured is None:  # production: settings.secret raises; embedded: the installation's sandbox secret
        return SECRET_PREFIX + base64.b64encode(settings.secret(env_name).encode()).decode()
    body = configured.removeprefix(SECRET_PREFIX)
    try:
        key = base64.b64decode(body + "=" * (-len(body) % 4), validate=True)
    except binascii.Error:
        key = b""
    if not configured.startswith(SECRET_PREFIX) or len(key) < MIN_KEY_BYTES:
        raise SettingsError(
            f"{env_name} must hold a Standard Webhooks secret: {SECRET_PREFIX} followed by the base64 of at least "
            f"{MIN_KEY_BYTES} random bytes (value not shown)"
        )
    return configured


def signed_headers(signer: Webhook, event_id: str, body: str, at: dt.datetime) -> dict[str, str]:
    """Headers for one attempt at ``at`` (UTC); the timestamp is signed, so it is fresh every attempt."""
    at = at.astimezone(dt.UTC).replace(microsecond=0)
    return {
        "content-type": "application/json",
        "webhook-id": event_id,
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": signer.sign(event_id, at, body),
    }
