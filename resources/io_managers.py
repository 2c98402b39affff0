"""Asset outputs that Dagster keeps between steps, sealed so the storage folder holds no plaintext.

Import rows and rendered campaign messages carry phones, e-mails, chat ids and names; Dagster's
default IO manager pickles them in the clear under ``DAGSTER_HOME/storage``, where a backup or a
copied folder leaks them. This IO manager writes the same files at the same paths (Dagster's own
filesystem layout, partitions included, so nothing else changes) but each file is AES-GCM
ciphertext under a storage key derived from the installation's master key (HKDF with a label of its
own: the storage key never equals, nor opens, any tenant key). The file's path is authenticated
with it, so a sealed file copied over another is refused rather than loaded as the wrong output.

While a master key rotation is under way (``ALGOR_MASTER_KEY_PREVIOUS`` set) files sealed under
the previous key still open. A file written under any other master key, or in the clear (before
this IO manager), is refused with the reason, never unpickled: unpickling unauthenticated bytes
runs their code. Step outputs are transient, so the remedy is to run the producing step again.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import pickle
from collections.abc import Callable, Sequence
from typing import Any

import dagster as dg
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

# Private to Dagster, imported for its exact layout: the default IO manager's paths (escaping of
# partition keys included), so a deployment switching to this one finds its files where they were.
from dagster._core.storage.fs_io_manager import PickledObjectFilesystemIOManager
from pydantic import Field

from resources.settings import get_settings

MAGIC = b"ALGOR-SEALED-1\n"
STORAGE_KEY_LABEL = b"algor/dagster-io-storage/v1"
KEY_ID_BYTES = 8
NONCE_BYTES = 12


class SealedOutputError(RuntimeError):
    """A stored output cannot be opened; the message says why and what to do."""


def storage_key(master_key: bytes) -> bytes:
    """The 32-byte key of the storage folder, derived from (never equal to) the master key."""
    return HKDF(algorithm=SHA256(), length=32, salt=None, info=STORAGE_KEY_LABEL).derive(master_key)


def key_id(key: bytes) -> bytes:
    """A short, non-secret name of ``key``: tells "another master key" apart from "tampered"."""
    return hmac.new(key, b"key id", hashlib.sha256).digest()[:KEY_ID_BYTES]


def seal(key: bytes, plaintext: bytes, where: str) -> bytes:
    nonce = os.urandom(NONCE_BYTES)
    header = MAGIC + key_id(key) + nonce
    return header + AESGCM(key).encrypt(nonce, plaintext, header + where.encode())


def unseal(keys: Sequence[bytes], sealed: bytes, where: str) -> bytes:
    """Open ``sealed`` with whichever of ``keys`` sealed it (the current key, or the previous one
    while a master key rotation is under way)."""
    if not sealed.startswith(MAGIC):
        raise SealedOutputError(f"{where} is not a sealed output (written before outputs were encrypted?): run the step that produces it again")
    header_end = len(MAGIC) + KEY_ID_BYTES + NONCE_BYTES
    header = sealed[:header_end]
    key = next((key for key in keys if key_id(key) == header[len(MAGIC) : len(MAGIC) + KEY_ID_BYTES]), None)
    if key is None:
        raise SealedOutputError(f"{where} was sealed under another master key (rotated since?): run the step that produces it again")
    try:
        return AESGCM(key).decrypt(header[-NONCE_BYTES:], sealed[header_end:], header + where.encode())
    except InvalidTag:
        raise SealedOutputError(f"{where} fails authentication: it was altered or copied from another path") from None


class SealedPickleIOManager(PickledObjectFilesystemIOManager):
    """Dagster's filesystem IO manager with every file sealed (see the module docstring)."""

    def __init__(self, base_dir: str, keys: Sequence[bytes]):
        super().__init__(base_dir=base_dir)
        self._keys = list(keys)  # the first seals; any opens

    def _where(self, path: Any) -> str:
        return path.relative_to(self._base_path).as_posix()

    def dump_to_path(self, context: dg.OutputContext, obj: Any, path: Any) -> None:
        sealed = seal(self._keys[0], pickle.dumps(obj, pickle.HIGHEST_PROTOCOL), self._where(path))
        with path.open("wb") as file:
            file.write(sealed)

    def load_from_path(self, context: dg.InputContext, path: Any) -> Any:
        with path.open("rb") as file:
            sealed = file.read()
        return pickle.loads(unseal(self._keys, sealed, self._where(path)))

    def rewrite(self, asset_key: Sequence[str], partition: str, change: Callable[[Any], Any]) -> bool:
        """Store ``change(output)`` in place of an asset partition's stored output (an erasure drops
        the person's rows from it); False when nothing is stored there."""
        path = self.make_safe_partition_path(self._base_path.joinpath(*asset_key), partition)
        if not path.exists():
            return False
        self.dump_to_path(None, change(self.load_from_path(None, path)), path)
        return True


def sealed_storage(instance: dg.DagsterInstance, base_dir: str | None = None) -> SealedPickleIOManager:
    """The stored outputs of ``instance`` (or of ``base_dir``), opened with this installation's key."""
    settings = get_settings()
    masters = [key for key in (settings.master_key(), settings.previous_master_key()) if key]
    return SealedPickleIOManager(base_dir or instance.storage_directory(), [storage_key(master) for master in masters])


class EncryptedFilesystemIOManager(dg.ConfigurableIOManagerFactory):
    """The code location's IO manager: Dagster's filesystem layout, contents sealed under a key
    derived from the master key (``resources.settings.Settings.master_key``)."""

    base_dir: str | None = Field(default=None, description="Where outputs are kept; empty = the instance's storage folder (DAGSTER_HOME/storage)")

    def create_io_manager(self, context: dg.InitResourceContext) -> SealedPickleIOManager:
        return sealed_storage(context.instance, self.base_dir)
