"""How dbt resources of the reports project appear in Dagster."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import dagster as dg
from dagster_dbt import DagsterDbtTranslator, DbtProject

from orchestrator_assets.groups import REPORTS

# The domain name is both the group and the key prefix, as for every other domain.
GROUP = KEY_PREFIX = REPORTS

# dbt resources that become assets of @dbt_assets (sources stay upstream dependencies).
_MODEL_LIKE = ("model", "seed", "snapshot")
# Source meta naming the assets that write a source table besides its ``dagster.asset_key``.
_META_NAMESPACE, _OTHER_WRITERS = "algor", "other_writers"


class ReportsTranslator(DagsterDbtTranslator):
    """Every dbt model is ``["reports", <model name>]`` in group ``reports``, whatever its folder.

    Descriptions come from dbt. Sources keep dagster-dbt's default, i.e. the asset key declared in
    their ``meta.dagster.asset_key`` (``algor.events`` -> ``["sends", "campaign_sends"]``). dbt
    allows one key per source, so a table with several writers lists the others in its
    ``meta.algor.other_writers``, and every model reading that source depends on all of them:
    otherwise the graph would hide that the reports read ``["deliveries", "delivery_events"]``.
    """

    def get_asset_key(self, dbt_resource_props: Mapping[str, Any]) -> dg.AssetKey:
        # Also used directly by dagster-dbt (event and test mapping), so keep it consistent.
        if dbt_resource_props.get("resource_type") in _MODEL_LIKE:
            return dg.AssetKey([KEY_PREFIX, dbt_resource_props["name"]])
        return super().get_asset_key(dbt_resource_props)

    def get_asset_spec(
        self, manifest: Mapping[str, Any], unique_id: str, project: DbtProject | None
    ) -> dg.AssetSpec:
        spec = super().get_asset_spec(manifest, unique_id, project)
        props = self.get_resource_props(manifest, unique_id)
        if props.get("resource_type") not in _MODEL_LIKE:
            return spec
        return spec.replace_attributes(
            key=dg.AssetKey([KEY_PREFIX, props["name"]]),
            group_name=GROUP,
        ).merge_attributes(deps=_other_source_writers(manifest, props))


def _other_source_writers(manifest: Mapping[str, Any], props: Mapping[str, Any]) -> list[dg.AssetKey]:
    """The ``meta.algor.other_writers`` of every source ``props`` reads, as asset keys."""
    writers: list[dg.AssetKey] = []
    for upstream in props.get("depends_on", {}).get("nodes", []):
        source = manifest.get("sources", {}).get(upstream)
        if source is None:
            continue
        for path in (source.get("meta") or {}).get(_META_NAMESPACE, {}).get(_OTHER_WRITERS, []):
            if dg.AssetKey(path) not in writers:
                writers.append(dg.AssetKey(path))
    return writers
