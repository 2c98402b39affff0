"""Dagster assets of the segments domain: who matches each YAML-defined segment rule."""

import datetime as dt

import dagster as dg
import sqlalchemy as sa

from orchestrator_assets.groups import CONTACTS, SEGMENTS
from orchestrator_assets.partitions import tenant_partitions
from orchestrator_assets.segment_behaviour import behaviour_sets, warehouse_client
from orchestrator_assets.segment_membership import refresh_members, refresh_planner_statistics
from orchestrator_assets.segment_sample import masked_sample, sample_table
from orchestrator_assets.segment_sql import member_ids, tenant_scope
from orchestrator_assets.tables import markdown_table
from policies.loader import load_bundle
from resources.opstore import OperationalStore
from resources.opstore_schema import contacts, segment_members as members
from resources.pii import tenant_cipher
from resources.warehouse import WAREHOUSE_POOL, Warehouse


@dg.asset(
    key=[SEGMENTS, "segment_members"],
    group_name=SEGMENTS,
    partitions_def=tenant_partitions,
    deps=[dg.AssetKey([CONTACTS, "contacts"])],
    pool=WAREHOUSE_POOL,
)
def segment_members(context: dg.AssetExecutionContext, opstore: OperationalStore, warehouse: Warehouse) -> dg.MaterializeResult:
    """Membership of every segment defined for one tenant.

    Grain: one row per (tenant, segment, contact) in ``segment_members``. Source: the tenant's
    contacts filtered by the rules in ``policies/config/segments.yaml``; behaviour clauses ask the
    warehouse (opened only for a tenant whose segments have one, but the step always takes the
    warehouse pool: a pool is fixed per asset). Each segment is replaced in one transaction, so a
    reader never sees a half-built segment, and who entered or left is recorded in
    ``segment_events`` (what ``segment_entered`` trigger campaigns start on).
    """
    tenant = context.partition_key
    now = dt.datetime.now(dt.UTC)
    rows, samples = [], {}
    metadata: dict[str, int] = {}
    segments = load_bundle().segments[tenant].values()
    with warehouse_client(warehouse, *(segment.rule for segment in segments)) as client:
        for segment in segments:
            with opstore.engine().begin() as conn:
                cipher = tenant_cipher(conn, tenant)
                with behaviour_sets(conn, client, tenant, segment.rule, now) as sets:
                    ids = member_ids(contacts, tenant, segment.rule, cipher, tenant_scope(tenant, now, sets))
                    change = refresh_members(conn, tenant, segment.name, ids, now)
                current = sa.select(members.c.contact_id).where(members.c.tenant == tenant, members.c.segment == segment.name)
                samples[segment.name] = sample_table(masked_sample(conn, cipher, current))
            rows.append((segment.name, change.members, change.entered, change.left))
            metadata |= {f"members_{segment.name}": change.members, f"entered_{segment.name}": change.entered, f"left_{segment.name}": change.left}
    with opstore.engine().begin() as conn:
        refresh_planner_statistics(conn)
    return dg.MaterializeResult(
        metadata={
            "segments": dg.MetadataValue.md(markdown_table(["segment", "members", "entered", "left"], sorted(rows), empty="The tenant defines no segments.")),
            **metadata,
            **{f"sample_{name}": dg.MetadataValue.md(table) for name, table in samples.items()},
        }
    )
