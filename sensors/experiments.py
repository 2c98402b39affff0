"""The rollout sensor: once a look decides what an A/B test's rollout remainder gets (the winner,
or the control after a final no-winner), the campaign is rendered and sent again, once.

It reads ``experiment_looks`` in the operational store (never the warehouse) past its cursor
(the last look id seen) and requests a ``campaign_pipeline_job`` run of the campaign keyed
``rollout:<tenant>:<campaign>:<look id>``. The run renders the whole audience again; the send
ledger skips everyone already sent, so only the rollout remainder is messaged, each contact once.
Running by default: a decision is an operator's look having found it, so acting on it is the point
(unlike a schedule, which could start campaigns long due). Its first tick acts on every decision
already recorded, once (the run keys).
"""

from __future__ import annotations

import dagster as dg
import sqlalchemy as sa

from jobs import campaign_pipeline_job
from resources.opstore import OperationalStore
from resources.opstore_schema import experiment_looks
from sensors.campaigns import SCHEDULED_SELECTION, campaign_run_request


def rollout_requests(conn: sa.Connection, after_id: int) -> tuple[list[dg.RunRequest], int]:
    rows = conn.execute(sa.select(experiment_looks).where(experiment_looks.c.id > after_id).order_by(experiment_looks.c.id)).all()
    requests = [
        campaign_run_request(row.tenant, row.campaign, f"rollout:{row.tenant}:{row.campaign}:{row.id}", SCHEDULED_SELECTION, tags={"algor/rollout": row.rollout_variant})
        for row in rows
        if row.rollout_variant is not None
    ]
    return requests, max((row.id for row in rows), default=after_id)


@dg.sensor(
    name="experiment_rollout_sensor",
    job=campaign_pipeline_job,
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Sends an A/B test's rollout remainder the winner (or the control after a final no-winner), once.",
)
def experiment_rollout_sensor(context: dg.SensorEvaluationContext, opstore: OperationalStore) -> dg.SensorResult:
    with opstore.engine().connect() as conn:
        requests, last_id = rollout_requests(conn, int(context.cursor or 0))
    return dg.SensorResult(run_requests=requests, cursor=str(last_id), skip_reason=None if requests else "no new rollout decision")
