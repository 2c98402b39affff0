"""The one place that assembles the code location (loaded by workspace.yaml). No logic lives here."""

from __future__ import annotations

import dagster as dg

from jobs import campaign_pipeline_job, contact_duplicates_job, delivery_processing_job, phone_reachability_job, reports_job, reports_schedule
from jobs.ambiguous import resolve_ambiguous_sends_job
from jobs.campaign_control import campaign_control_job
from jobs.consents import consent_certificate_job, consent_chain_verify_job
from jobs.experiments import experiment_evaluation_job
from jobs.imports import contact_import_job, contact_import_preview_job, contact_import_rollback_job
from jobs.merges import contact_merge_job, contact_unmerge_job
from jobs.privacy import contact_erasure_job, contact_export_job, pii_key_rotation_job
from jobs.redrive import redrive_dead_letters_job
from jobs.segments import segment_live_count_job
from jobs.webhooks import enable_webhook_endpoints_job, retry_webhook_deliveries_job, webhook_delivery_job
from jobs.template_preview import template_preview_job
from orchestrator_assets import campaign_summary, campaigns, contacts, message_templates, segments
from orchestrator_assets.consent_verify import consent_chains_intact
from orchestrator_assets.deliveries import assets as deliveries
from orchestrator_assets.experiments import assets as experiments
from orchestrator_assets.imports import assets as imports
from orchestrator_assets.merges import assets as merges
from orchestrator_assets.reports import campaign_funnel_export, warehouse_reports
from orchestrator_assets.sends import assets as sends
from orchestrator_assets.webhooks import assets as webhooks
from resources.connectors import ChannelConnectors
from resources.dbt import make_dbt_resource
from resources.io_managers import EncryptedFilesystemIOManager
from resources.opstore import OperationalStore
from resources.warehouse import Warehouse
from sensors.campaign_resume import campaign_resume_sensor
from sensors.campaign_summary import campaign_send_summary_job, campaign_send_summary_sensor
from sensors.campaigns import campaign_schedule_sensor
from sensors.deferred import deferred_campaign_sensor
from sensors.experiments import experiment_rollout_sensor
from sensors.fallback import campaign_fallback_sensor
from sensors.import_triggers import import_trigger_sensor
from sensors.imports import contact_drop_folder_sensor
from sensors.inbox import webhook_inbox_sensor
from sensors.segment_triggers import segment_entered_sensor
from sensors.triggers import trigger_campaign_sensor
from sensors.webhooks import webhook_delivery_sensor

defs = dg.Definitions(
    assets=[
        *dg.load_assets_from_modules(
            [imports, contacts, merges, segments, campaigns, message_templates, sends, deliveries, webhooks, campaign_summary, experiments]
        ),
        warehouse_reports,
        campaign_funnel_export,
    ],
    jobs=[campaign_pipeline_job, delivery_processing_job, reports_job, redrive_dead_letters_job, webhook_delivery_job, retry_webhook_deliveries_job,
          enable_webhook_endpoints_job, phone_reachability_job, resolve_ambiguous_sends_job, contact_duplicates_job, contact_merge_job,
          contact_unmerge_job, consent_chain_verify_job, consent_certificate_job, contact_import_preview_job, contact_erasure_job, contact_export_job,
          pii_key_rotation_job, contact_import_job, contact_import_rollback_job, template_preview_job, campaign_control_job,
          campaign_send_summary_job, experiment_evaluation_job, segment_live_count_job],
    asset_checks=[consent_chains_intact],
    schedules=[reports_schedule],
    sensors=[webhook_inbox_sensor, webhook_delivery_sensor, campaign_schedule_sensor, trigger_campaign_sensor, contact_drop_folder_sensor,
             deferred_campaign_sensor, campaign_fallback_sensor, import_trigger_sensor, campaign_resume_sensor, campaign_send_summary_sensor,
             experiment_rollout_sensor, segment_entered_sensor],
    resources={
        "opstore": OperationalStore(),
        "warehouse": Warehouse(),
        "connectors": ChannelConnectors(),
        "dbt": make_dbt_resource(),
        "io_manager": EncryptedFilesystemIOManager(),
    },
)
