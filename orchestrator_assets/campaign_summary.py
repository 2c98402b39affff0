"""Each campaign's sends on its own: an asset partitioned by campaign (``<tenant>|<campaign>``).

``campaign_sends`` is partitioned by tenant and reports each run; an operator asks "how is this
campaign doing": per occurrence (step) and channel how many ledger rows are sent, failed or held
(ambiguous, waiting for a decision), its state (active / paused / cancelled) and the history of
operators' pause / resume / cancel (the audit log). Read from the operational store only, so it
is cheap and needs no warehouse. Materialised by ``campaign_send_summary_sensor`` after each
``campaign_sends`` run that sent for the campaign.
"""

import json

import dagster as dg
import sqlalchemy as sa

from orchestrator_assets.campaign_control import CampaignState
from orchestrator_assets.groups import SENDS
from orchestrator_assets.partitions import CAMPAIGN_KEY_SEPARATOR, campaign_partitions
from orchestrator_assets.sends.ledger import AMBIGUOUS, CLAIMED, FAILED, SENT
from orchestrator_assets.tables import markdown_table
from resources.opstore import OperationalStore
from resources.opstore_schema import audit_log, campaign_states, sends

SETTLED_CHECK = "campaign_sends_settled"
HISTORY_ROWS = 50


def ledger_counts(conn: sa.Connection, tenant: str, campaign: str) -> list[tuple[str, str, str, int]]:
    """(step, channel, status, rows) of the campaign's ledger."""
    query = (
        sa.select(sends.c.step, sends.c.channel, sends.c.status, sa.func.count())
        .where(sends.c.tenant == tenant, sends.c.campaign == campaign)
        .group_by(sends.c.step, sends.c.channel, sends.c.status)
        .order_by(sends.c.step, sends.c.channel, sends.c.status)
    )
    return [tuple(row) for row in conn.execute(query)]


def control_history(conn: sa.Connection, tenant: str, campaign: str) -> list[tuple]:
    """The campaign's pause / resume / cancel actions, newest first (who, when, why)."""
    rows = conn.execute(  # LIKE narrows (its _ matches any character), the JSON decides
        sa.select(audit_log.c.occurred_at, audit_log.c.action, audit_log.c.actor, audit_log.c.params, audit_log.c.run_id)
        .where(audit_log.c.tenant == tenant, audit_log.c.action.like("campaign.%"), audit_log.c.params.like(f'%"campaign": "{campaign}"%'))
        .order_by(audit_log.c.id.desc())
        .limit(HISTORY_ROWS)
    )
    found = []
    for row in rows:
        params = json.loads(row.params)
        if params.get("campaign") == campaign:
            found.append((str(row.occurred_at), row.action.removeprefix("campaign."), row.actor, f"{params.get('from')} → {params.get('to')}: {params.get('reason')}", row.run_id or ""))
    return found


@dg.asset(
    key=[SENDS, "campaign_send_summary"],
    group_name=SENDS,
    partitions_def=campaign_partitions,
    deps=[dg.AssetDep(dg.AssetKey([SENDS, "campaign_sends"]), partition_mapping=dg.AllPartitionMapping())],
    check_specs=[
        dg.AssetCheckSpec(
            SETTLED_CHECK,
            asset=[SENDS, "campaign_send_summary"],
            description="No ledger row of the campaign is left claimed or ambiguous (a run died mid-send, or a provider never answered: resolve_ambiguous_sends_job)",
        )
    ],
)
def campaign_send_summary(context: dg.AssetExecutionContext, opstore: OperationalStore) -> dg.MaterializeResult:
    """One campaign's send ledger by occurrence (step) and channel, its state and its control history.

    Grain: one partition per (tenant, campaign) that has run. Source: ``sends``, ``campaign_states``
    and ``audit_log`` in the operational store.
    """
    tenant, _, campaign = context.partition_key.partition(CAMPAIGN_KEY_SEPARATOR)
    with opstore.engine().connect() as conn:
        counts = ledger_counts(conn, tenant, campaign)
        state_row = conn.execute(
            sa.select(campaign_states).where(campaign_states.c.tenant == tenant, campaign_states.c.campaign == campaign)
        ).first()
        history = control_history(conn, tenant, campaign)
    table: dict[tuple[str, str], dict[str, int]] = {}
    for step, channel, status, rows in counts:
        table.setdefault((step, channel), {})[status] = rows
    totals = {status: sum(rows for *_, s, rows in counts if s == status) for status in {s for _, _, s, _ in counts}}
    unsettled = totals.get(CLAIMED, 0) + totals.get(AMBIGUOUS, 0)
    state = state_row.state if state_row else str(CampaignState.ACTIVE)
    body = [(step, channel, c.get(SENT, 0), c.get(FAILED, 0), c.get(AMBIGUOUS, 0) + c.get(CLAIMED, 0)) for (step, channel), c in sorted(table.items())]
    return dg.MaterializeResult(
        metadata={
            "tenant": tenant,
            "campaign": campaign,
            "state": state,
            "state_reason": state_row.reason if state_row else "",
            "sent": totals.get(SENT, 0),
            "failed": totals.get(FAILED, 0),
            "held": unsettled,
            "by_occurrence_and_channel": dg.MetadataValue.md(
                markdown_table(["step (occurrence)", "channel", "sent", "failed", "held (claimed/ambiguous)"], body, empty="Nothing sent yet.")
            ),
            "history": dg.MetadataValue.md(markdown_table(["when", "action", "by", "details", "run"], history, empty="Never paused, resumed or cancelled.")),
        },
        check_results=[dg.AssetCheckResult(check_name=SETTLED_CHECK, passed=unsettled == 0, severity=dg.AssetCheckSeverity.WARN, metadata={"held": unsettled})],
    )
