"""Dagster assets of the segments domain: who matches each YAML-defined segment rule."""

import datetime as dt

import dagster as dg
import sqlalchemy as sa

from orchestrator_assets.groups import CONTACTS, SEGMENTS
from orchestrator_assets.partitions import tenant_partitions
from orchestrator_assets.segment_sql import segment_where
from orchestrator_assets.tables import markdown_table
from policies.loader import load_bundle
from resources.opstore import OperationalStore
from resources.opstore_schema import contacts, segment_members as members
from resources.pii import tenant_cipher


@dg.asset(
    key=[SEGMENTS, "segment_members"],
    group_name=SEGMENTS,
    partitions_def=tenant_partitions,
    deps=[dg.AssetKey([CONTACTS, "contacts"])],
)
def segment_members(context: dg.AssetExecutionContext, opstore: OperationalStore) -> dg.MaterializeResult:
    """Membership of every segment defined for one tenant.

    Grain: one row per (tenant, segment, contact) in ``segment_members``. Source: the tenant's
    contacts filtered by the AND/OR rules in ``policies/config/segments.yaml``. Each segment is
    replaced in one transaction, so a reader never sees a half-built segment.
    """
    tenant = context.partition_key
    now = dt.datetime.now(dt.UTC)
    counts: dict[str, int] = {}
    with opstore.engine().begin() as conn:
        cipher = tenant_cipher(conn, tenant)
        for segment in load_bundle().segments[tenant].values():
            conn.execute(sa.delete(members).where(members.c.tenant == tenant, members.c.segment == segment.name))
            matching = sa.select(
                sa.literal(tenant), sa.literal(segment.name), contacts.c.id, sa.literal(now, type_=members.c.materialized_at.type)
            ).where(contacts.c.tenant == tenant, contacts.c.merged_into.is_(None), segment_where(segment.rule, contacts, cipher))
            conn.execute(sa.insert(members).from_select(["tenant", "segment", "contact_id", "materialized_at"], matching))
            counts[segment.name] = conn.execute(
                sa.select(sa.func.count()).where(members.c.tenant == tenant, members.c.segment == segment.name)
            ).scalar_one()
    return dg.MaterializeResult(
        metadata={
            "segments": dg.MetadataValue.md(markdown_table(["segment", "members"], sorted(counts.items()), empty="The tenant defines no segments.")),
            **{f"members_{name}": count for name, count in counts.items()},
        }
    )
