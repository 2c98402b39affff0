"""The campaign send summary sensor: each campaign's own partition, added when it first runs and
refreshed after each of its runs.

It reads ``campaign_sends`` materialisations after its cursor (the event log's storage id): each
names its tenant (partition) and, in the ``campaigns`` metadata, the campaigns it handled. New
``<tenant>|<campaign>`` keys are added to the ``campaigns`` dynamic partitions, and each gets one
``campaign_send_summary_job`` run per materialisation (``run_key = summary:<key>:<storage id>``),
so nothing is summarised twice. Reads the Dagster event log only.
"""

import dagster as dg

from jobs import CAMPAIGN_SEND_SUMMARY as SUMMARY_ASSET
from orchestrator_assets.groups import SENDS
from orchestrator_assets.partitions import campaign_partition_key, campaign_partitions

SENDS_ASSET = dg.AssetKey([SENDS, "campaign_sends"])
MAX_RECORDS_PER_TICK = 100

campaign_send_summary_job = dg.define_asset_job(
    name="campaign_send_summary_job",
    description="Summarise one campaign's sends (per occurrence and channel), state and pause/resume/cancel history.",
    selection=dg.AssetSelection.assets(SUMMARY_ASSET),
    partitions_def=campaign_partitions,
)


def summary_requests(instance: dg.DagsterInstance, cursor: int) -> tuple[list[dg.RunRequest], list[str], int]:
    """Run requests for the campaigns of the ``campaign_sends`` materialisations after ``cursor``,
    the partition keys to add, and the new cursor."""
    records = instance.fetch_materializations(dg.AssetRecordsFilter(asset_key=SENDS_ASSET, after_storage_id=cursor), limit=MAX_RECORDS_PER_TICK, ascending=True).records
    known = set(instance.get_dynamic_partitions(campaign_partitions.name))
    requests, new_keys = [], []
    for record in records:
        materialization = record.asset_materialization
        campaigns = materialization.metadata.get("campaigns")
        for campaign in campaigns.value if campaigns is not None else []:
            key = campaign_partition_key(materialization.partition, campaign)
            if key not in known:
                known.add(key)
                new_keys.append(key)
            requests.append(dg.RunRequest(run_key=f"summary:{key}:{record.storage_id}", partition_key=key))
        cursor = record.storage_id
    return requests, new_keys, cursor


@dg.sensor(
    name="campaign_send_summary_sensor",
    job=campaign_send_summary_job,
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Adds each campaign's partition when it first sends and refreshes its send summary after each campaign_sends run.",
)
def campaign_send_summary_sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult:
    requests, new_keys, cursor = summary_requests(context.instance, int(context.cursor or 0))
    return dg.SensorResult(
        run_requests=requests,
        cursor=str(cursor),
        dynamic_partitions_requests=[campaign_partitions.build_add_request(new_keys)] if new_keys else [],
        skip_reason=None if requests else "no campaign_sends run since the last tick",
    )
