"""Jobs: what an operator (or a sensor) launches, selected by domain group."""

from __future__ import annotations

import dagster as dg

from orchestrator_assets import groups
from orchestrator_assets.consent_verify import consent_chains_intact
from orchestrator_assets.partitions import tenant_partitions

# SMSC bills every HLR lookup: they run when an operator (or a schedule they set up) asks, not
# with every campaign run.
PHONE_REACHABILITY = dg.AssetKey([groups.CONTACTS, "phone_reachability"])
# Duplicate candidates are for an operator to review before a merge, not a step of every send.
DUPLICATE_CANDIDATES = dg.AssetKey([groups.CONTACTS, "contact_duplicate_candidates"])
# Partitioned by campaign, not tenant: campaign_send_summary_job (its sensor) materialises it.
CAMPAIGN_SEND_SUMMARY = dg.AssetKey([groups.SENDS, "campaign_send_summary"])

campaign_pipeline_job = dg.define_asset_job(
    name="campaign_pipeline_job",
    description="Import contacts and consents, build segments, render and send due campaigns for one tenant.",
    selection=dg.AssetSelection.groups(groups.IMPORTS, groups.CONTACTS, groups.CONSENTS, groups.SEGMENTS, groups.CAMPAIGNS, groups.SENDS)
    - dg.AssetSelection.assets(PHONE_REACHABILITY, DUPLICATE_CANDIDATES, CAMPAIGN_SEND_SUMMARY)
    # Proving every tenant's consent chains is consent_chain_verify_job's work, not each campaign run's.
    - dg.AssetSelection.checks(consent_chains_intact),
    partitions_def=tenant_partitions,
)

contact_duplicates_job = dg.define_asset_job(
    name="contact_duplicates_job",
    description="Find one tenant's likely duplicate contacts (score + reason per pair), for contact_merge_job.",
    selection=dg.AssetSelection.assets(DUPLICATE_CANDIDATES),
    partitions_def=tenant_partitions,
)

phone_reachability_job = dg.define_asset_job(
    name="phone_reachability_job",
    description="SMSC HLR lookups of one tenant's contacts' phones (billed: bounded and paced by the asset's config).",
    selection=dg.AssetSelection.assets(PHONE_REACHABILITY),
    partitions_def=tenant_partitions,
)

delivery_processing_job = dg.define_asset_job(
    name="delivery_processing_job",
    description="Apply verified provider callbacks from the webhook inbox (launched by the inbox sensor).",
    selection=dg.AssetSelection.groups(groups.DELIVERIES),
    partitions_def=tenant_partitions,
)

reports_job = dg.define_asset_job(
    name="reports_job",
    description="Build the dbt reports (staging + campaign funnel) over the warehouse and export them.",
    selection=dg.AssetSelection.groups(groups.REPORTS),
)

reports_schedule = dg.ScheduleDefinition(
    name="reports_every_15_minutes",
    job=reports_job,
    cron_schedule="*/15 * * * *",
    description="Keeps the funnel fresh; stopped by default (the demo builds reports itself).",
)
