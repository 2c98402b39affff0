"""Dagster assets of the contacts domain: the tenant's contact book in the operational store."""

import datetime as dt

import dagster as dg
import pandas as pd

from orchestrator_assets.groups import CONTACTS, IMPORTS
from orchestrator_assets.imports.store import upsert_contacts
from orchestrator_assets.partitions import tenant_partitions
from resources.opstore import OperationalStore


@dg.asset(
    key=[CONTACTS, "contacts"],
    group_name=CONTACTS,
    partitions_def=tenant_partitions,
    ins={"rows": dg.AssetIn(key=[IMPORTS, "contact_import_rows"])},
)
def contacts(context: dg.AssetExecutionContext, rows: pd.DataFrame, opstore: OperationalStore) -> dg.MaterializeResult:
    """Contacts of one tenant, upserted by external id.

    Grain: one row per (tenant, external_id) in the ``contacts`` table. Source: validated import
    rows. Re-importing the same file changes nothing (reported as ``unchanged``).
    """
    with opstore.engine().begin() as conn:
        counts = upsert_contacts(conn, context.partition_key, rows, dt.datetime.now(dt.UTC))
    return dg.MaterializeResult(metadata={key: int(value) for key, value in counts.items()})
