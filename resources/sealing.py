"""Sealing under keys derived from the installation's master key, for data that belongs to no one
contact (so has no contact key to be sealed with, ``resources/pii.py``) but may name people:
Dagster's stored step outputs, providers' raw callbacks.

Each use derives its own key from the master key (HKDF-SHA256 with a label of its own: no derived
key equals, nor opens, any tenant key or another use's data). A sealed value names its key by a
short non-secret id, so "sealed under another master key" is told apart from "altered", and says
where it belongs (``where``, authenticated with it), so a value copied elsewhere does not open.
While a master key rotation is under way (``ALGOR_MASTER_KEY_PREVIOUS``) values sealed under the
previous key still open.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Sequence
from functools import lru_cache

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from resources.settings import get_settings

MAGIC = b"ALGOR-SEALED-1\n"
KEY_ID_BYTES = 8
NONCE_BYTES = 12


class SealError(RuntimeError):
    """A sealed value cannot be opened; the message says why."""


@lru_cache(maxsize=16)
def derive_key(master_key: bytes, label: bytes) -> bytes:
    """The 32-byte key of one use (``label``), derived from (never equal to) the master key."""
    return HKDF(algorithm=SHA256(), length=32, salt=None, info=label).derive(master_key)


def derived_keys(label: bytes) -> list[bytes]:
    """This installation's keys for ``label``: the current one (which seals) first, then the previous one."""
    settings = get_settings()
    return [derive_key(master, label) for master in (settings.master_key(), settings.previous_master_key()) if master]


@lru_cache(maxsize=16)
def key_id(key: bytes) -> bytes:
    return hmac.new(key, b"key id", hashlib.sha256).digest()[:KEY_ID_BYTES]


def seal(key: bytes, plaintext: bytes, where: str) -> bytes:
    nonce = os.urandom(NONCE_BYTES)
    header = MAGIC + key_id(key) + nonce
    return header + AESGCM(key).encrypt(nonce, plaintext, header + where.encode())


def unseal(keys: Sequence[bytes], sealed: bytes, where: str) -> bytes:
    """Open ``sealed`` with whichever of ``keys`` sealed it."""
    if not sealed.startswith(MAGIC):
        raise SealError(f"{where} is not sealed (written before it was encrypted?)")
    header_end = len(MAGIC) + KEY_ID_BYTES + NONCE_BYTES
    header = sealed[:header_end]
    key = next((key for key in keys if key_id(key) == header[len(MAGIC) : len(MAGIC) + KEY_ID_BYTES]), None)
    if key is None:
        raise SealError(f"{where} was sealed under another master key (rotated since?)")
    try:
        return AESGCM(key).decrypt(header[-NONCE_BYTES:], sealed[header_end:], header + where.encode())
    except InvalidTag:
        raise SealError(f"{where} fails authentication: it was altered or copied from elsewhere") from None
