"""Dagster assets of the sends domain: campaign messages handed to providers, each exactly once."""

import asyncio
import datetime as dt
import json
from collections import Counter

import dagster as dg
import pandas as pd

from orchestrator_assets.groups import CAMPAIGNS, SENDS
from orchestrator_assets.partitions import tenant_partitions
from orchestrator_assets.sends.dispatch import Job, dispatch
from orchestrator_assets.sends.ledger import LedgerKey, claim, finalise
from orchestrator_assets.sends.outcomes import publish_send_outcomes
from orchestrator_assets.tables import markdown_table
from policies.loader import load_bundle
from resources.channels.base import OutboundMessage, SendResult
from resources.connectors import ChannelConnectors
from resources.opstore import OperationalStore
from resources.warehouse import WAREHOUSE_POOL, Warehouse

LEDGER_FLUSH_EVERY = 200
AMBIGUOUS_CHECK = "no_ambiguous_sends"


@dg.asset(
    key=[SENDS, "campaign_sends"],
    group_name=SENDS,
    partitions_def=tenant_partitions,
    ins={"messages": dg.AssetIn(key=[CAMPAIGNS, "campaign_messages"])},
    pool=WAREHOUSE_POOL,
    check_specs=[
        dg.AssetCheckSpec(
            AMBIGUOUS_CHECK,
            asset=[SENDS, "campaign_sends"],
            description="No ledger row is left claimed by a run that died mid-send (those wait for a status check or an operator)",
        )
    ],
)
def campaign_sends(
    context: dg.AssetExecutionContext,
    messages: pd.DataFrame,
    opstore: OperationalStore,
    connectors: ChannelConnectors,
    warehouse: Warehouse,
) -> dg.MaterializeResult:
    """Every campaign message handed to its provider, recorded once in the send ledger.

    Grain: one ledger row per (tenant, campaign, step, contact, channel) in ``sends``, plus one
    ``sent``/``send_failed`` event per row in the warehouse. Source: rendered campaign messages.
    Re-running sends nothing twice: finalised rows are skipped, rows another run left mid-send are
    held as ambiguous.
    """
    tenant = context.partition_key
    engine = opstore.engine()
    # Resolve every connector before claiming anything: a missing account or unknown channel
    # fails here, with nothing half-sent.
    tenant_policy = load_bundle().tenants[tenant]
    by_channel = {channel: connectors.connector(tenant_policy, channel) for channel in sorted(set(messages["channel"]))}

    keyed = {
        LedgerKey(row.campaign, row.step, int(row.contact_id), row.channel): row for row in messages.itertuples(index=False)
    }
    with engine.begin() as conn:
        claims = claim(
            conn, tenant, context.run_id, [(key, row.provider, row.address) for key, row in keyed.items()], dt.datetime.now(dt.UTC)
        )
    context.log.info(
        f"{len(keyed)} messages: {len(claims.mine)} to send, {claims.already_final} already sent earlier, {claims.ambiguous} ambiguous (held)"
    )

    jobs = []
    for key, send_id in claims.mine.items():
        row = keyed[key]
        jobs.append(
            Job(
                by_channel[key.channel],
                OutboundMessage(
                    send_id=send_id,
                    tenant=tenant,
                    campaign=key.campaign,
                    channel=key.channel,
                    address=row.address,
                    text=row.text,
                    subject=row.subject,
                    html=row.html,
                    buttons=tuple(tuple(button) for button in json.loads(row.buttons)),
                    unsubscribe_url=row.unsubscribe_url,
                ),
            )
        )

    outcomes: list[tuple[str, SendResult]] = []
    tally: Counter[str] = Counter()
    flushed = 0

    def flush() -> None:
        nonlocal flushed
        with engine.begin() as conn:
            finalise(conn, outcomes[flushed:], dt.datetime.now(dt.UTC))
        flushed = len(outcomes)
        context.log.info(f"progress: {flushed}/{len(jobs)} answered ({dict(tally)})")

    def on_done(message: OutboundMessage, result: SendResult) -> None:
        outcomes.append((message.send_id, result))
        tally["sent" if result.ok else f"failed:{result.error_class}"] += 1
        if len(outcomes) - flushed >= LEDGER_FLUSH_EVERY:
            flush()

    asyncio.run(dispatch(jobs, on_done))
    flush()
    published = publish_send_outcomes(engine, warehouse, tenant, dt.datetime.now(dt.UTC))

    by_campaign = Counter((key.campaign, key.channel) for key in claims.mine)
    return dg.MaterializeResult(
        metadata={
            "messages": len(keyed),
            "sent": tally["sent"],
            "failed": sum(count for name, count in tally.items() if name.startswith("failed")),
            "skipped_already_sent": claims.already_final,
            "ambiguous_held": claims.ambiguous,
            "outcomes": dg.MetadataValue.md(markdown_table(["outcome", "messages"], sorted(tally.items()))),
            "attempted_by_campaign": dg.MetadataValue.md(
                markdown_table(["campaign", "channel", "attempted"], [(c, ch, n) for (c, ch), n in sorted(by_campaign.items())])
            ),
            **published,
        },
        check_results=[
            dg.AssetCheckResult(
                check_name=AMBIGUOUS_CHECK,
                passed=claims.ambiguous == 0,
                severity=dg.AssetCheckSeverity.WARN,
                metadata={"ambiguous_held": claims.ambiguous},
            )
        ],
    )

