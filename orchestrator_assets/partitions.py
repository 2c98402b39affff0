"""The one home of partition definitions.

Data naturally splits by tenant: every operational table and warehouse event carries it, and a
run for one tenant never reads another's rows. Tenants come from ``policies/config/tenants.yaml``.
"""

from __future__ import annotations

import dagster as dg

from policies.loader import load_tenants

tenant_partitions = dg.StaticPartitionsDefinition(sorted(load_tenants().tenants))
