"""Reports: the dbt project over the event warehouse, and a file export of the campaign funnel.

* ``warehouse_reports``: every dbt model and seed as an asset ``["reports", <name>]`` (``dbt
  build``: seeds, models, data tests as asset checks, unit tests), downstream of both writers of
  the event warehouse, ``["sends", "campaign_sends"]`` and ``["deliveries", "delivery_events"]``.
* ``campaign_funnel_export``: ``["reports", "campaign_funnel_export"]``, reads the mart and
  writes ``campaign_funnel.csv`` and ``campaign_funnel.html`` into ``settings.reports_dir``.

Both take the warehouse pool: chDB lets one process at a time open the data path.
Resource keys: ``dbt`` (:func:`resources.dbt.make_dbt_resource`) and ``warehouse``
(:class:`resources.warehouse.Warehouse`).

The dbt manifest is needed to define the assets; :func:`resources.dbt.ensure_manifest` runs
``dbt parse`` on import when it is missing (fresh clone) or older than the project files,
and costs a few stats otherwise.
"""

import json
import os
import shutil
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import dagster as dg
from dagster_dbt import DbtCliResource, dbt_assets, get_asset_key_for_model

from orchestrator_assets.reports.formatting import FUNNEL_COLUMNS, funnel_csv, funnel_html, funnel_markdown
from orchestrator_assets.reports.translator import GROUP, KEY_PREFIX, ReportsTranslator
from resources.dbt import dbt_project, ensure_manifest
from resources.settings import get_settings
from resources.warehouse import WAREHOUSE_POOL, Warehouse

__all__ = [
    "GROUP",
    "ReportsTranslator",
    "campaign_funnel_export",
    "warehouse_reports",
    "read_funnel",
    "write_funnel_files",
]

FUNNEL_MODEL = "campaign_funnel"
CSV_NAME = "campaign_funnel.csv"
HTML_NAME = "campaign_funnel.html"

ensure_manifest()


@dbt_assets(
    manifest=dbt_project.manifest_path,
    project=dbt_project,
    dagster_dbt_translator=ReportsTranslator(),
    pool=WAREHOUSE_POOL,
    name="warehouse_reports",
)
def warehouse_reports(context: dg.AssetExecutionContext, dbt: DbtCliResource, warehouse: Warehouse) -> Iterator[Any]:
    """``dbt build`` of the reports project: staging views, marts, data and unit tests."""
    # A fresh warehouse has no events table until the first send; create it (idempotent DDL,
    # defined once in resources.warehouse) so the reports build to empty instead of failing.
    # The client is closed before dbt starts: chDB lets one process at a time open the path.
    with warehouse.client() as client:
        warehouse.ensure_schema(client)
    # No fetch_row_counts(): it opens the warehouse from this process while dbt holds chDB.
    invocation = dbt.cli(["build"], context=context)
    yield from invocation.stream()
    _retire_run_target(Path(invocation.project_dir), Path(invocation.target_path))


def _retire_run_target(project_dir: Path, run_target: Path) -> None:
    """After a successful build: keep dbt's partial-parse cache warm, drop the per-run target dir.

    dagster-dbt gives each run its own target dir seeded with ``target/partial_parse.msgpack``;
    copying the run's fresh one back means the next run parses incrementally even when the
    seed was stale. A failed build never gets here, so its dir stays for debugging.
    """
    run_target = run_target if run_target.is_absolute() else project_dir / run_target
    fresh = run_target / "partial_parse.msgpack"
    if fresh.is_file():
        staged = project_dir / "target" / f".partial_parse.{run_target.name}.tmp"
        shutil.copyfile(fresh, staged)
        os.replace(staged, project_dir / "target" / "partial_parse.msgpack")
    shutil.rmtree(run_target, ignore_errors=True)


FUNNEL_KEY = get_asset_key_for_model([warehouse_reports], FUNNEL_MODEL)


def _funnel_relation() -> str:
    """The mart's fully qualified name as dbt built it (e.g. `algor_reports`.`campaign_funnel`)."""
    manifest = json.loads(Path(dbt_project.manifest_path).read_text(encoding="utf-8"))
    for node in manifest["nodes"].values():
        if node["resource_type"] == "model" and node["name"] == FUNNEL_MODEL:
            return node["relation_name"]
    raise KeyError(f"model {FUNNEL_MODEL} not in the dbt manifest")


def read_funnel(warehouse: Warehouse) -> list[dict[str, Any]]:
    """All funnel rows, ordered by tenant, campaign, channel."""
    columns = ", ".join(FUNNEL_COLUMNS)
    sql = f"select {columns} from {_funnel_relation()} order by tenant, campaign, channel"
    with warehouse.client() as client:
        result = client.query(sql)
    return [dict(zip(result.column_names, row, strict=True)) for row in result.result_rows]


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_funnel_files(rows: list[dict[str, Any]], directory: Path, generated_at: str) -> tuple[Path, Path]:
    """Write the CSV and HTML renderings into ``directory``; returns (csv_path, html_path)."""
    directory.mkdir(parents=True, exist_ok=True)
    csv_path, html_path = directory / CSV_NAME, directory / HTML_NAME
    _write_atomically(csv_path, funnel_csv(rows))
    _write_atomically(html_path, funnel_html(rows, generated_at=generated_at))
    return csv_path, html_path


@dg.asset(
    key=[KEY_PREFIX, "campaign_funnel_export"],
    deps=[FUNNEL_KEY],
    group_name=GROUP,
    pool=WAREHOUSE_POOL,
    kinds={"csv", "html"},
    description=(
        "The campaign funnel (distinct sends per stage, per tenant × campaign × channel; delivery "
        "unknown where the provider sends no receipts) as campaign_funnel.csv and a readable "
        "campaign_funnel.html in the reports directory."
    ),
)
def campaign_funnel_export(warehouse: Warehouse) -> dg.MaterializeResult:
    rows = read_funnel(warehouse)
    generated_at = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    csv_path, html_path = write_funnel_files(rows, get_settings().reports_dir, generated_at)
    return dg.MaterializeResult(
        metadata={
            "funnel": dg.MetadataValue.md(funnel_markdown(rows)),
            "csv_path": dg.MetadataValue.path(str(csv_path)),
            "html_path": dg.MetadataValue.path(str(html_path)),
            "dagster/row_count": len(rows),
            "tenants": len({row["tenant"] for row in rows}),
            "attempted": sum(int(row["attempted"]) for row in rows),
            "accepted": sum(int(row["accepted"]) for row in rows),
        }
    )
