"""Dagster assets of the consents domain: who agreed to hear from us, on which channel, with proof."""

import datetime as dt

import dagster as dg
import pandas as pd

from orchestrator_assets.groups import CONSENTS, CONTACTS, IMPORTS
from orchestrator_assets.imports.store import record_consents
from orchestrator_assets.partitions import tenant_partitions
from resources.opstore import OperationalStore


@dg.asset(
    key=[CONSENTS, "contact_consents"],
    group_name=CONSENTS,
    partitions_def=tenant_partitions,
    ins={"rows": dg.AssetIn(key=[IMPORTS, "contact_import_rows"])},
    deps=[dg.AssetKey([CONTACTS, "contacts"])],
)
def contact_consents(context: dg.AssetExecutionContext, rows: pd.DataFrame, opstore: OperationalStore) -> dg.MaterializeResult:
    """Marketing consents per contact × channel, with their source as evidence.

    Grain: one row per (tenant, contact, channel, purpose) in ``consents`` (current state) plus an
    append-only ``consent_events`` log, which is the proof under 152-FZ / 38-FZ art. 18.
    Source: the import's consent columns (``consent_email``, ``consent_telegram``, ``consent_sms``).
    """
    with opstore.engine().begin() as conn:
        counts = record_consents(conn, context.partition_key, rows, dt.datetime.now(dt.UTC), file=rows.attrs.get("source_file"))
    return dg.MaterializeResult(metadata={key: int(value) for key, value in counts.items()})
