"""Key material the embedded default derives so that zero-setup works for signature schemes.

SendGrid signs Event Webhook posts with a P-256 key whose public half the account shows; in
production its base64 DER is configured (``webhook_public_key_env``). In the embedded default no
such key exists, so one is derived from the installation's sandbox secret for that setting
(``Settings.secret``: random per ``$ALGOR_HOME``): the sandbox signs with the private half, the
gateway verifies with the public half. An explicitly set variable always wins.
"""

from __future__ import annotations

import base64
import hashlib

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from resources.settings import get_settings

_P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551


def _derived_private_key(env_name: str) -> ec.EllipticCurvePrivateKey:
    seed = get_settings().secret(env_name)  # embedded: the installation's sandbox secret
    scalar = int.from_bytes(hashlib.sha256(f"sendgrid-webhook:{seed}".encode()).digest()) % (_P256_ORDER - 1) + 1
    return ec.derive_private_key(scalar, ec.SECP256R1())


def sendgrid_public_key(env_name: str) -> str:
    """The Event Webhook verification key (base64 DER): configured, or derived in embedded mode."""
    settings = get_settings()
    if value := settings.configured_secret(env_name):
        return value
    if not settings.is_embedded:
        return settings.secret(env_name)  # raises: production must configure it
    der = _derived_private_key(env_name).public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b64encode(der).decode()


def sendgrid_sandbox_signing_key(env_name: str) -> str:
    """PEM of the private key the provider sandbox signs with (embedded default only)."""
    return (
        _derived_private_key(env_name)
        .private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        .decode()
    )
