"""The resume sensor: runs that a pause halted are launched again once their campaign is resumed.

The send path tags a run that stopped claiming a campaign's messages because it was paused or
cancelled (``algor/halted``, with the campaigns in ``algor/halted_campaigns``). For each such run of
``campaign_pipeline_job`` whose halted campaigns are no longer paused, this sensor requests the same
run again (same partition, run config, asset selection and campaign tags), keyed
``resume:<halted run id>``, so each halted run is resumed once. The new run renders the same
messages and the send ledger skips every row already final: the campaign continues where it
stopped, and nobody gets a message twice. A run whose campaigns were all cancelled is never resumed
(and a cancelled campaign's messages stay halted in a resumed run of several campaigns).

The cursor lists the halted runs already handled, among the ``RECENT_HALTED_RUNS`` most recent.
Reads the Dagster instance's runs and the operational store, never the warehouse.
"""

import json

import dagster as dg
import sqlalchemy as sa

from jobs import campaign_pipeline_job
from orchestrator_assets.campaign_control import CampaignState, campaign_states_of
from orchestrator_assets.sends.assets import HALTED_CAMPAIGNS_TAG, HALTED_TAG
from resources.opstore import OperationalStore

RECENT_HALTED_RUNS = 200
PARTITION_TAG = "dagster/partition"


def resume_run_requests(instance: dg.DagsterInstance, conn: sa.Connection, handled: list[str]) -> tuple[list[dg.RunRequest], list[str]]:
    """Run requests re-launching halted runs whose campaigns were resumed, and the new cursor."""
    runs = instance.get_runs(
        filters=dg.RunsFilter(job_name=campaign_pipeline_job.name, tags={HALTED_TAG: "true"}, statuses=[dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE]),
        limit=RECENT_HALTED_RUNS,
    )
    done = set(handled)
    requests, cursor = [], []
    for run in runs:
        if run.run_id in done:
            cursor.append(run.run_id)
            continue
        tenant = run.tags.get(PARTITION_TAG)
        campaigns = [name for name in run.tags.get(HALTED_CAMPAIGNS_TAG, "").split(",") if name]
        states = campaign_states_of(conn, tenant, campaigns) if tenant else {}
        if CampaignState.PAUSED in states.values():
            continue  # not yet: looked at again next tick
        cursor.append(run.run_id)
        if tenant is None or len(states) == len(campaigns):  # every halted campaign was cancelled
            continue
        tags = {key: value for key, value in run.tags.items() if key.startswith("algor/") and key not in (HALTED_TAG, HALTED_CAMPAIGNS_TAG)}
        requests.append(
            dg.RunRequest(
                run_key=f"resume:{run.run_id}",
                partition_key=tenant,
                run_config=run.run_config,
                asset_selection=sorted(run.asset_selection or (), key=lambda key: key.to_user_string()),
                tags={**tags, "algor/resumes": run.run_id},
            )
        )
    return requests, sorted(cursor)


@dg.sensor(
    name="campaign_resume_sensor",
    job=campaign_pipeline_job,
    minimum_interval_seconds=15,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Re-launches the campaign runs a pause halted once campaign_control_job resumes them (no message is sent twice).",
)
def campaign_resume_sensor(context: dg.SensorEvaluationContext, opstore: OperationalStore) -> dg.SensorResult:
    handled = json.loads(context.cursor) if context.cursor else []
    with opstore.engine().connect() as conn:
        requests, cursor = resume_run_requests(context.instance, conn, handled)
    skip = None if requests else "no halted campaign run to resume"
    return dg.SensorResult(run_requests=requests, cursor=json.dumps(cursor), skip_reason=skip)
