"""Asset outputs that Dagster keeps between steps, sealed so the storage folder holds no plaintext.

Import rows and rendered campaign messages carry phones, e-mails, chat ids and names; Dagster's
default IO manager pickles them in the clear under ``DAGSTER_HOME/storage``, where a backup or a
copied folder leaks them. This IO manager writes the same files at the same paths (Dagster's own
filesystem layout, partitions included, so nothing else changes) but each file is sealed
(``resources/sealing.py``) under a storage key derived from the installation's master key, with
its path authenticated: a sealed file copied over another is refused rather than loaded as the
wrong output.

While a master key rotation is under way (``ALGOR_MASTER_KEY_PREVIOUS`` set) files sealed under
the previous key still open. A file written under any other master key, or in the clear (before
this IO manager), is refused with the reason, never unpickled: unpickling unauthenticated bytes
runs their code. Step outputs are transient, so the remedy is to run the producing step again.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable, Sequence
from typing import Any

import dagster as dg

# Private to Dagster, imported for its exact layout: the default IO manager's paths (escaping of
# partition keys included), so a deployment switching to this one finds its files where they were.
from dagster._core.storage.fs_io_manager import PickledObjectFilesystemIOManager
from pydantic import Field

from resources.sealing import SealError, derived_keys, seal, unseal

STORAGE_KEY_LABEL = b"algor/dagster-io-storage/v1"


class SealedOutputError(RuntimeError):
    """A stored output cannot be opened; the message says why and what to do."""


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
        try:
            plaintext = unseal(self._keys, sealed, self._where(path))
        except SealError as error:
            raise SealedOutputError(f"{error}: run the step that produces it again") from None
        return pickle.loads(plaintext)

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
    return SealedPickleIOManager(base_dir or instance.storage_directory(), derived_keys(STORAGE_KEY_LABEL))


class EncryptedFilesystemIOManager(dg.ConfigurableIOManagerFactory):
    """The code location's IO manager: Dagster's filesystem layout, contents sealed under a key
    derived from the master key (``resources.settings.Settings.master_key``)."""

    base_dir: str | None = Field(default=None, description="Where outputs are kept; empty = the instance's storage folder (DAGSTER_HOME/storage)")

    def create_io_manager(self, context: dg.InitResourceContext) -> SealedPickleIOManager:
        return sealed_storage(context.instance, self.base_dir)
