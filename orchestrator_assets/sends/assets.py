"""Dagster assets of the sends domain: campaign messages handed to providers, each exactly once."""

import asyncio
import datetime as dt
import json

import dagster as dg
import pandas as pd
import sqlalchemy as sa

from orchestrator_assets.campaign_control import halted_campaigns
from orchestrator_assets.consent_ledger import granted_subjects
from orchestrator_assets.contact_pii import CHANNEL_FIELD
from orchestrator_assets.groups import CAMPAIGNS, SENDS
from orchestrator_assets.partitions import tenant_partitions
from orchestrator_assets.sends.decisions import (
    ambiguous_check_metadata,
    ambiguous_sends,
)
from orchestrator_assets.sends.ledger import LedgerKey, Wanted
from orchestrator_assets.sends.outcomes import publish_send_outcomes
from orchestrator_assets.sends.run import Outgoing, SendReport, send_messages
from orchestrator_assets.tables import markdown_table
from policies.consent_purposes import required_consents
from policies.loader import load_bundle
from policies.masking import mask_value
from resources.channels.base import Attachment, OutboundMessage, TemplateRef
from resources.connectors import ChannelConnectors
from resources.opstore import OperationalStore
from resources.opstore_schema import blocked_senders
from resources.warehouse import WAREHOUSE_POOL, Warehouse

AMBIGUOUS_CHECK = "no_ambiguous_sends"
HALTED_TAG = "algor/halted"  # "true" on a run that stopped sending a campaign found paused or cancelled
HALTED_CAMPAIGNS_TAG = "algor/halted_campaigns"  # which ones, comma-separated


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
            description="No ledger row of the tenant is ambiguous: claimed by a run that died mid-send, or sent without an answer to a provider that does not deduplicate (those wait for an operator's decision: resolve_ambiguous_sends_job)",
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
    ``sent``/``send_failed`` event per final row in the warehouse. Source: rendered campaign
    messages. Re-running sends nothing twice: final rows are skipped, transient failures are
    retried, ambiguous rows are held (see ``orchestrator_assets.sends.ledger``).
    """
    tenant = context.partition_key
    engine = opstore.engine()
    bundle = load_bundle()
    # Resolve every connector before claiming anything: a missing account or unknown channel
    # fails here, with nothing half-sent.
    by_channel = {channel: connectors.connector(bundle.tenants[tenant], channel, tenant) for channel in sorted(set(messages["channel"]))}
    purposes = {name: campaign.purpose for name, campaign in bundle.campaigns.get(tenant, {}).items()}
    require_processing = bundle.policy.consent.require_processing
    outgoing = [_outgoing(tenant, row, by_channel[row.channel]) for row in messages.itertuples(index=False)]
    refuse_before_sending(engine, tenant, by_channel, outgoing)

    def still_allowed(conn: sa.Connection, keys: list[LedgerKey]) -> set[LedgerKey]:
        granted = granted_subjects(conn, tenant, {key.contact_id for key in keys}, dt.datetime.now(dt.UTC))

        def allowed(key: LedgerKey) -> bool:
            purpose = purposes.get(key.campaign)
            return purpose is not None and all((key.contact_id, on, str(p)) in granted for p, on in required_consents(purpose, key.channel, require_processing))

        return {key for key in keys if allowed(key)}

    report = asyncio.run(
        send_messages(
            engine, tenant, context.run.run_id, outgoing, bundle.policy.dispatch, still_allowed=still_allowed, log=context.log.info,
            halted=lambda conn, names: halted_campaigns(conn, tenant, names),
        )
    )
    if report.halted:  # what campaign_resume_sensor re-launches once they are resumed
        context.instance.add_run_tags(context.run.run_id, {HALTED_TAG: "true", HALTED_CAMPAIGNS_TAG: ",".join(sorted(report.halted))})
    published = publish_send_outcomes(engine, warehouse, tenant, dt.datetime.now(dt.UTC), bundle.tenants[tenant].webhooks)
    with engine.connect() as conn:
        unresolved = ambiguous_sends(conn, tenant)  # this run's and any earlier run's
    totals = report.totals
    ambiguous = totals["held"] + totals["ambiguous"]
    context.log.info(f"{len(outgoing)} messages: {dict(totals)}")
    return dg.MaterializeResult(
        metadata={
            "messages": len(outgoing),
            "sent": totals["sent"],
            "failed": sum(count for name, count in totals.items() if name.startswith("failed:")),
            "skipped_already_sent": totals["already_final"],
            "ambiguous_held": ambiguous,
            "suppressed": totals["suppressed"],
            "halted_paused_or_cancelled": totals["halted"],
            # Read by campaign_send_summary_sensor: each campaign's send summary is refreshed after its runs.
            "campaigns": dg.MetadataValue.json(sorted({campaign for campaign, _ in report.by_campaign})),
            "retried": totals["retries"],
            "abandoned_claims_found": report.abandoned,
            "circuit_opened": report.circuit_opened,
            "outcomes": dg.MetadataValue.md(markdown_table(["outcome", "messages"], sorted(totals.items()), empty="No messages to send.")),
            "by_campaign": dg.MetadataValue.md(_campaign_table(report)),
            **published,
        },
        check_results=[
            dg.AssetCheckResult(
                check_name=AMBIGUOUS_CHECK,
                passed=not unresolved,
                severity=dg.AssetCheckSeverity.WARN,
                metadata={"ambiguous_held": ambiguous, **ambiguous_check_metadata(unresolved)},
            )
        ],
    )


def _outgoing(tenant: str, row, connector) -> Outgoing:
    template = json.loads(row.template)
    message = OutboundMessage(
        send_id="",  # set when the ledger row is claimed
        tenant=tenant,
        campaign=row.campaign,
        channel=row.channel,
        address=row.address,
        text=row.text,
        subject=row.subject,
        html=row.html,
        buttons=tuple(tuple(button) for button in json.loads(row.buttons)),
        unsubscribe_url=row.unsubscribe_url,
        attachments=tuple(Attachment(**attachment) for attachment in json.loads(row.attachments)),
        template=None if template is None else TemplateRef(template["template_id"], template["language"], tuple(template["variables"])),
    )
    want = Wanted(LedgerKey(row.campaign, row.step, int(row.contact_id), row.channel), row.provider, row.address)
    return Outgoing(want, connector, message)


def _campaign_table(report: SendReport) -> str:
    rows = []
    for (campaign, channel), counts in sorted(report.by_campaign.items()):
        failed = ", ".join(f"{name.removeprefix('failed:')} {count}" for name, count in sorted(counts.items()) if name.startswith("failed:"))
        rows.append(
            (campaign, channel, counts["sent"], failed or "0", counts["held"] + counts["ambiguous"], counts["suppressed"], counts["halted"], counts["already_final"], counts["retries"])
        )
    return markdown_table(
        ["campaign", "channel", "sent", "failed (by reason)", "ambiguous held", "suppressed", "halted", "already final", "retries"], rows, empty="No messages to send."
    )


def refuse_before_sending(engine: sa.Engine, tenant: str, by_channel: dict, outgoing: list) -> None:
    """Fail the run, with nothing claimed or sent, when a sender is blocked or any message is one
    its connector would refuse (too long, unsupported attachment, missing template …)."""
    with engine.connect() as conn:
        blocked = {row.provider: row for row in conn.execute(sa.select(blocked_senders).where(blocked_senders.c.tenant == tenant))}
    for channel, connector in by_channel.items():
        if (row := blocked.get(connector.provider)) is not None:
            raise dg.Failure(
                f"{connector.provider} sender for {channel} is blocked since {row.blocked_at}: {row.reason}. "
                "Nothing was sent; clear the blocked_senders row once the provider lifts the block."
            )
    problems = []
    for item in outgoing:
        validate = getattr(item.connector, "validate", None)
        if validate is None:
            continue
        try:
            validate(item.message)
        except ValueError as exc:
            address = mask_value(CHANNEL_FIELD.get(item.message.channel, "address"), item.message.address)
            problems.append((item.message.campaign, item.message.channel, address, str(exc)))
    if problems:
        raise dg.Failure(
            f"{len(problems)} message(s) would be refused by their provider; nothing was sent",
            metadata={"problems": dg.MetadataValue.md(markdown_table(["campaign", "channel", "address", "why"], problems[:50]))},
        )
