"""What Dagster keeps between steps (DAGSTER_HOME/storage) holds no plaintext personal data, and
the steps downstream still read it: the code location's IO manager, on a real instance."""

from __future__ import annotations

import pickle
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest

from definitions import defs
from orchestrator_assets.campaigns import campaign_messages
from orchestrator_assets.contacts import commit_contact_import
from orchestrator_assets.imports.assets import contact_import_rows
from orchestrator_assets.imports.sample_contacts import SAMPLE_PATH
from orchestrator_assets.segments import segment_members
from resources.io_managers import STORAGE_KEY_LABEL, EncryptedFilesystemIOManager
from resources.sealing import MAGIC, SealError, derive_key, seal, unseal
from resources.opstore import OperationalStore
from resources.warehouse import Warehouse

IMPORT_ROWS = dg.AssetKey(["imports", "contact_import_rows"])
MESSAGES = dg.AssetKey(["campaigns", "campaign_messages"])
PII_COLUMNS = ("first_name", "last_name", "email", "phone", "telegram_chat_id", "vk_user_id")


def _known_values(rows: pd.DataFrame, messages: pd.DataFrame) -> set[bytes]:
    """The sample's personal data as it travels between steps, as bytes a file would hold.
    Values shorter than 6 bytes (``Ian``) are left out: random ciphertext of a few hundred KB
    holds some 4-byte string by chance."""
    values = {str(v) for column in PII_COLUMNS if column in rows for v in rows[column].dropna()}
    values |= {str(v) for v in messages["address"]}
    return {encoded for v in values if len(encoded := v.encode()) >= 6}


def test_stored_outputs_are_ciphertext_and_load_downstream(algor_home, instance):
    result = dg.materialize(
        [contact_import_rows, commit_contact_import, segment_members, campaign_messages],
        instance=instance,
        partition_key="demo",
        resources={"opstore": OperationalStore(), "warehouse": Warehouse(), "io_manager": EncryptedFilesystemIOManager()},
        run_config={"ops": {"imports__contact_import_rows": {"config": {"csv_path": str(SAMPLE_PATH)}}}},
    )
    assert result.success

    storage = Path(instance.storage_directory())
    # Dagster's filesystem layout, partition included: the files are where the default IO manager put them.
    # The folder also holds each run's captured stdout/stderr (<run id>/compute_logs): grepped below too.
    files = {path.relative_to(storage).as_posix(): path.read_bytes() for path in storage.rglob("*") if path.is_file()}
    outputs = {name: content for name, content in files.items() if not name.startswith(result.run_id)}
    assert set(outputs) == {"/".join([*key.path, "demo"]) for key in (IMPORT_ROWS, MESSAGES)}
    assert all(content.startswith(MAGIC) for content in outputs.values())

    # The code location's own IO manager opens them: what a downstream step (or a re-execution) reads.
    rows = defs.load_asset_value(IMPORT_ROWS, partition_key="demo", instance=instance)
    messages = defs.load_asset_value(MESSAGES, partition_key="demo", instance=instance)
    assert len(rows) == 1000 and len(messages) > 100  # the sample: 1,000 good rows
    known = _known_values(rows, messages)
    assert len(known) > 2000
    plain = pickle.dumps(rows) + pickle.dumps(messages)
    assert sum(value in plain for value in known) > 2000  # the default IO manager's files would have held them
    leaked = [value.decode() for value in known if any(value in content for content in files.values())]
    assert leaked == []


def test_a_sealed_output_opens_only_at_its_path_under_its_key():
    key, other = derive_key(b"k" * 32, STORAGE_KEY_LABEL), derive_key(b"o" * 32, STORAGE_KEY_LABEL)
    sealed = seal(key, b"+79161234567", "imports/contact_import_rows/demo")
    assert b"79161234567" not in sealed
    assert unseal([key], sealed, "imports/contact_import_rows/demo") == b"+79161234567"
    assert unseal([other, key], sealed, "imports/contact_import_rows/demo") == b"+79161234567"  # a master key rotation under way
    with pytest.raises(SealError, match="altered or copied"):
        unseal([key], sealed, "imports/contact_import_rows/acme")  # copied over another tenant's output
    with pytest.raises(SealError, match="another master key"):
        unseal([other], sealed, "imports/contact_import_rows/demo")
    with pytest.raises(SealError, match="is not sealed"):
        unseal([key], pickle.dumps({"phone": "+79161234567"}), "imports/contact_import_rows/demo")  # never unpickled
    flipped = sealed[:-1] + bytes([sealed[-1] ^ 1])
    with pytest.raises(SealError, match="altered"):
        unseal([key], flipped, "imports/contact_import_rows/demo")
