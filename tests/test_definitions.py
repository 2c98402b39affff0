"""The code location loads, and every job, schedule and sensor resolves (what `dagster dev` needs)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import dagster as dg

from definitions import defs
from orchestrator_assets import groups

REPO = Path(__file__).resolve().parents[1]
DOMAINS = {value for name, value in vars(groups).items() if name.isupper()}


def test_definitions_validate_and_every_job_schedule_sensor_resolves():
    dg.Definitions.validate_loadable(defs)
    repository = defs.get_repository_def()
    assert {job.name for job in repository.get_all_jobs()} >= {"campaign_pipeline_job", "delivery_processing_job", "reports_job"}
    for schedule in repository.schedule_defs:
        assert repository.get_job(schedule.job_name)
    for sensor in repository.sensor_defs:
        for target in sensor.targets:
            assert repository.get_job(target.job_name)


def test_every_asset_is_grouped_by_domain_keyed_by_it_and_documented():
    for spec in defs.resolve_all_asset_specs():
        assert spec.group_name in DOMAINS, spec.key
        assert spec.key.path[0] == spec.group_name, spec.key
        assert spec.description, f"{spec.key.to_user_string()} has no docstring/description"


def test_the_reports_are_downstream_of_every_writer_of_the_event_warehouse():
    """Send outcomes and provider callbacks both land in algor.events; the graph must show that
    the reports read both, or a stale funnel after a callback run looks up to date."""
    graph = defs.resolve_asset_graph()
    writers = {dg.AssetKey(["sends", "campaign_sends"]), dg.AssetKey(["deliveries", "delivery_events"])}
    stg_events = dg.AssetKey(["reports", "stg_events"])
    assert graph.get(stg_events).parent_keys >= writers
    upstream_of_funnel = dg.AssetSelection.assets(["reports", "campaign_funnel_export"]).upstream().resolve(graph)
    assert writers <= upstream_of_funnel


def test_workspace_loads_in_a_fresh_process_like_dagster_dev(tmp_path):
    """`dagster definitions validate` loads workspace.yaml exactly as `dagster dev` would."""
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path), "ALGOR_HOME": str(tmp_path / "algor")}
    result = subprocess.run(
        [str(Path(sys.executable).parent / "dagster"), "definitions", "validate", "-w", "workspace.yaml"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
