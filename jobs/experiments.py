"""A/B tests: one look at a tenant's running tests (an operator's launch, or a schedule they set)."""

from __future__ import annotations

import dagster as dg

from orchestrator_assets.experiments.assets import experiment_results
from orchestrator_assets.partitions import tenant_partitions

experiment_evaluation_job = dg.define_asset_job(
    name="experiment_evaluation_job",
    description="Take one look at each running A/B test of a tenant: per-variant results, the verdict, the rollout decision.",
    selection=dg.AssetSelection.assets(experiment_results),
    partitions_def=tenant_partitions,
)
