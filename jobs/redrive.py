"""The operator's re-drive of dead-lettered callbacks, launched from the Dagster launchpad."""

import datetime as dt

import dagster as dg

from orchestrator_assets.deliveries.retries import redrive
from resources.opstore import OperationalStore


class RedriveConfig(dg.Config):
    inbox_ids: list[int]  # the dead letters to try again (see the no_dead_letters check's table)


@dg.op(description="Put chosen dead letters back in the inbox queue; the inbox sensor picks them up.")
def redrive_dead_letters(context: dg.OpExecutionContext, config: RedriveConfig, opstore: OperationalStore) -> int:
    with opstore.engine().begin() as conn:
        count = redrive(conn, config.inbox_ids, dt.datetime.now(dt.UTC))
    context.log.info(f"re-driven {count} of {len(config.inbox_ids)} requested dead letters")
    context.add_output_metadata({"redriven": count, "requested": len(config.inbox_ids)})
    return count


@dg.job(description="Re-drive dead-lettered provider callbacks named in the run config.")
def redrive_dead_letters_job():
    redrive_dead_letters()
