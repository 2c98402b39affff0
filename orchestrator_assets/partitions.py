"""The one home of partition definitions.

Data naturally splits by tenant: every operational table and warehouse event carries it, and a
run for one tenant never reads another's rows. Tenants come from ``policies/config/tenants.yaml``.
"""

from __future__ import annotations

import dagster as dg

from policies.loader import load_tenants

tenant_partitions = dg.StaticPartitionsDefinition(sorted(load_tenants().tenants))

# One partition per campaign that has run, keyed ``<tenant>|<campaign>`` (added by
# campaign_send_summary_sensor the first time a campaign_sends run sends for the campaign), so the
# UI shows each campaign's sends, state and history on its own.
campaign_partitions = dg.DynamicPartitionsDefinition(name="campaigns")
CAMPAIGN_KEY_SEPARATOR = "|"


def campaign_partition_key(tenant: str, campaign: str) -> str:
    return f"{tenant}{CAMPAIGN_KEY_SEPARATOR}{campaign}"
