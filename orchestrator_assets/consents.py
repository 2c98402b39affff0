"""Dagster assets of the consents domain: who agreed to hear from us, on which channel, with proof."""

import datetime as dt

import dagster as dg
import pandas as pd

from orchestrator_assets.groups import CONSENTS, CONTACTS, IMPORTS
from orchestrator_assets.imports.store import record_consents
from orchestrator_assets.partitions import tenant_partitions
from orchestrator_assets.webhooks.outbox import enqueue
from policies.loader import load_tenants
from resources.opstore import OperationalStore


@dg.asset(
    key=[CONSENTS, "contact_consents"],
    group_name=CONSENTS,
    partitions_def=tenant_partitions,
    ins={"rows": dg.AssetIn(key=[IMPORTS, "contact_import_rows"])},
    deps=[dg.AssetKey([CONTACTS, "contacts"])],
)
def contact_consents(context: dg.AssetExecutionContext, rows: pd.DataFrame, opstore: OperationalStore) -> dg.MaterializeResult:
    """The import's consent decisions, appended to the consent ledger with their evidence.

    Grain: one ``consent_events`` row per decision (tenant × contact × channel × purpose), hash-chained
    per contact; the current state is derived from them (docs/consent.md), which is the proof under
    152-FZ / 38-FZ art. 18. Source: the import's consent columns (``consent_<channel>`` advertising,
    ``consent_processing``, ``consent_<channel>_transactional``).
    """
    tenant, now = context.partition_key, dt.datetime.now(dt.UTC)
    webhook_events = []
    with opstore.engine().begin() as conn:
        counts = record_consents(conn, tenant, rows, now, file=rows.attrs.get("source_file"), webhook_events=webhook_events)
        counts["webhook_events_enqueued"] = enqueue(conn, tenant, load_tenants().tenants[tenant].webhooks, webhook_events, now)
    return dg.MaterializeResult(metadata={key: int(value) for key, value in counts.items()})
