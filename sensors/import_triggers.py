"""The import-finished trigger sensor: contacts a contact import created or changed get the
campaigns triggered by ``import_finished``.

The import's commit already records, in its own transaction, each contact it created or updated
(``contact_import_changes``, the history a rollback restores from), so this sensor reads that
record rather than adding a write per contact to the commit: a million-row import costs it
nothing more. Contacts the import left unchanged are not "imported" by it and get nothing.

The cursor is JSON ``{tenant: [import id, contact id]}``, the last change handed out, in (import,
contact) order; each tick hands out at most ``MAX_CONTACTS_PER_TICK`` changes per tenant (a large
import goes out over several runs), one ``campaign_pipeline_job`` run per import and listening
campaign, ``run_key = import:<tenant>:<campaign>:<import id>:<first contact>-<last contact>``: a
tick evaluated twice launches nothing twice, and the send ledger keeps each contact's message
single (an import that touches a contact again sends it nothing new). Only committed imports count
(one rolled back before the sensor saw it starts nothing); an import committed longer ago than the
trigger's ``max_delay_minutes`` is skipped, and the cursor moves past every change even when no
campaign listens, so adding a campaign later never replays old imports. Paused or cancelled
campaigns are skipped the same way. Reads only the policy files and the operational store.
"""

import datetime as dt
from itertools import groupby

import dagster as dg
import sqlalchemy as sa

from jobs import campaign_pipeline_job
from orchestrator_assets.campaign_control import halted_by_tenant
from policies.campaigns import Campaign, TriggerEvent
from resources.opstore import OperationalStore
from resources.opstore_schema import contact_import_changes as changes
from resources.opstore_schema import contact_imports as imports
from sensors.campaigns import campaign_run_request
from orchestrator_assets.consent_ledger import utc  # SQLite hands times back without the offset
from sensors.triggers import TRIGGERED_SELECTION, planned_trigger_runs

MAX_CONTACTS_PER_TICK = 5_000  # per tenant; also bounds one run's contact_ids in its run config
COMMITTED = "committed"


def import_trigger_requests(
    conn: sa.Connection, campaigns: dict[str, dict[str, Campaign]], cursor: dict[str, list[int]], now: dt.datetime
) -> tuple[list[dg.RunRequest], dict[str, list[int]]]:
    """Planning step: run requests for the ``import_finished`` campaigns of the imports committed
    since ``cursor``, and the new cursor."""
    requests, new_cursor, halted = [], dict(cursor), halted_by_tenant(conn)
    for tenant in sorted(campaigns):
        last_import, last_contact = cursor.get(tenant, (0, 0))
        rows = conn.execute(
            sa.select(changes.c.import_id, changes.c.contact_id, imports.c.committed_at)
            .join(imports, imports.c.id == changes.c.import_id)
            .where(
                imports.c.tenant == tenant,
                imports.c.status == COMMITTED,
                sa.or_(changes.c.import_id > last_import, sa.and_(changes.c.import_id == last_import, changes.c.contact_id > last_contact)),
            )
            .order_by(changes.c.import_id, changes.c.contact_id)
            .limit(MAX_CONTACTS_PER_TICK)
        ).all()
        if not rows:
            continue
        new_cursor[tenant] = [rows[-1].import_id, rows[-1].contact_id]
        listening = sorted(
            (c for c in campaigns[tenant].values() if c.trigger is not None and c.trigger.event == TriggerEvent.IMPORT_FINISHED and c.name not in halted.get(tenant, ())),
            key=lambda c: c.name,
        )
        for import_id, group in groupby(rows, key=lambda row: row.import_id):
            group = list(group)
            contact_ids = [row.contact_id for row in group]
            for campaign in listening:
                if utc(group[0].committed_at) < now - dt.timedelta(minutes=campaign.trigger.max_delay_minutes):
                    continue
                run_key = f"import:{tenant}:{campaign.name}:{import_id}:{contact_ids[0]}-{contact_ids[-1]}"
                tags = {"algor/trigger": str(TriggerEvent.IMPORT_FINISHED), "algor/import_id": str(import_id)}
                requests.append(campaign_run_request(tenant, campaign.name, run_key, TRIGGERED_SELECTION, contact_ids, tags))
    return requests, new_cursor


@dg.sensor(
    name="import_trigger_sensor",
    job=campaign_pipeline_job,
    minimum_interval_seconds=15,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Starts import_finished trigger campaigns for the contacts each committed contact import created or changed.",
)
def import_trigger_sensor(context: dg.SensorEvaluationContext, opstore: OperationalStore) -> dg.SensorResult:
    return planned_trigger_runs(context, opstore, import_trigger_requests, "no newly committed import for an import_finished campaign")
