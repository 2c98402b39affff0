"""Standard Webhooks secrets (https://www.standardwebhooks.com): ``whsec_`` + base64 of the key.

One reader for both directions: the secrets that sign tenants' outbound webhooks
(``orchestrator_assets/webhooks/signing.py``) and those that tenants sign their event posts to the
gateway with (``gateway/events.py``). In the embedded default an unset one is the installation's
sandbox secret (``Settings.secret``), so a local sender or receiver of the same installation works
with zero setup; in production an unset one is an error.
"""

from __future__ import annotations

import base64
import binascii

from resources.settings import SettingsError, get_settings

SECRET_PREFIX = "whsec_"
MIN_KEY_BYTES = 24  # the spec's lower bound for a signing key


def signing_secret(env_name: str) -> str:
    """The secret held by env var ``env_name``, as the tenant holds it (``whsec_<base64>``)."""
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
