"""The operator's decisions on ambiguous sends, launched from the Dagster launchpad (one tenant).

The ``no_ambiguous_sends`` check of ``sends/campaign_sends`` lists the rows waiting (send id,
campaign, why). Run config, for example::

    ops:
      decide_ambiguous_sends:
        config:
          operator: anna@ops.example.ru
          decisions:
            - {send_id: 6f0c…, decision: mark_sent, provider_message_id: SM…, reason: "Twilio console: delivered"}
            - {campaign: black_friday_2026, decision: mark_failed, reason: "provider outage 14:02-14:10, nothing left"}
"""

import datetime as dt
from typing import Literal

import dagster as dg
from pydantic import Field

from orchestrator_assets.groups import SENDS
from orchestrator_assets.partitions import tenant_partitions
from orchestrator_assets.sends.assets import AMBIGUOUS_CHECK
from orchestrator_assets.sends.decisions import (
    DECISIONS,
    DecisionError,
    DecisionRequest,
    ambiguous_check_metadata,
    ambiguous_sends,
    decide,
    decisions_table,
)
from orchestrator_assets.sends.outcomes import publish_send_outcomes
from orchestrator_assets.tables import markdown_table
from policies.loader import load_bundle
from resources.opstore import OperationalStore
from resources.warehouse import WAREHOUSE_POOL, Warehouse


class SendDecision(dg.Config):
    decision: Literal["mark_sent", "mark_failed", "resend"]
    reason: str = Field(description="Why: what the provider (dashboard, status lookup) or the recipient said")
    send_id: str | None = Field(default=None, description="One ambiguous send (from the no_ambiguous_sends check)")
    campaign: str | None = Field(default=None, description="Instead of send_id: every ambiguous send of this campaign")
    provider_message_id: str | None = Field(default=None, description="mark_sent of one send: the provider's id for it")


class AmbiguousSendDecisions(dg.Config):
    operator: str = Field(description="Who decides (name or e-mail); recorded with every decision")
    decisions: list[SendDecision]


@dg.op(
    pool=WAREHOUSE_POOL,
    description="Apply an operator's mark_sent / mark_failed / resend to ambiguous sends, record who and why, and re-evaluate no_ambiguous_sends.",
)
def decide_ambiguous_sends(context: dg.OpExecutionContext, config: AmbiguousSendDecisions, opstore: OperationalStore, warehouse: Warehouse) -> int:
    tenant = context.partition_key
    engine = opstore.engine()
    requests = [DecisionRequest(d.decision, d.reason, d.send_id, d.campaign, d.provider_message_id) for d in config.decisions]
    now = dt.datetime.now(dt.UTC)
    try:
        with engine.begin() as conn:
            recorded = decide(conn, tenant, config.operator, requests, context.run.run_id, now)
    except DecisionError as error:
        raise dg.Failure(
            description=f"{len(error.problems)} problem(s) with the decisions for tenant {tenant!r}; nothing was changed",
            metadata={"problems": dg.MetadataValue.md(markdown_table(["entry", "problem"], error.problems))},
        ) from None
    # Decided rows are final now (or waiting for the next send run): publish them as any run would.
    published = publish_send_outcomes(engine, warehouse, tenant, now, load_bundle().tenants[tenant].webhooks)
    with engine.connect() as conn:
        unresolved = ambiguous_sends(conn, tenant)
    context.log_event(
        dg.AssetCheckEvaluation(
            asset_key=dg.AssetKey([SENDS, "campaign_sends"]),
            check_name=AMBIGUOUS_CHECK,
            passed=not unresolved,
            severity=dg.AssetCheckSeverity.WARN,
            metadata={"tenant": tenant, "decided_in_run": context.run.run_id, **ambiguous_check_metadata(unresolved)},
        )
    )
    counts = {name: sum(d["decision"] == name for d in recorded) for name in DECISIONS}
    context.log.info(f"{len(recorded)} decisions by {config.operator} for {tenant}: {counts}; {len(unresolved)} still ambiguous")
    context.add_output_metadata({"decisions": dg.MetadataValue.md(decisions_table(recorded)), **counts, "still_ambiguous": len(unresolved), **published})
    return len(recorded)


@dg.job(
    partitions_def=tenant_partitions,
    description="An operator's decisions on ambiguous sends (mark_sent, mark_failed, resend), by send id or campaign.",
)
def resolve_ambiguous_sends_job():
    decide_ambiguous_sends()
