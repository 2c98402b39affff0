"""Dagster assets of the imports domain: a contact CSV, validated."""

from pathlib import Path

import dagster as dg
from pydantic import Field

from orchestrator_assets.groups import IMPORTS
from orchestrator_assets.imports.validation import error_report_markdown, read_contacts_csv, validate_contact_rows, write_error_report
from orchestrator_assets.partitions import tenant_partitions
from resources.settings import get_settings

SAMPLE_CSV = Path(__file__).resolve().parent / "samples" / "demo_contacts.csv"
IMPORT_CHECK = "import_has_no_rejected_rows"


class ContactImportConfig(dg.Config):
    csv_path: str = Field(default="", description="CSV file to import; empty = the shipped demo sample")


@dg.asset(
    key=[IMPORTS, "contact_import_rows"],
    group_name=IMPORTS,
    partitions_def=tenant_partitions,
    check_specs=[dg.AssetCheckSpec(IMPORT_CHECK, asset=[IMPORTS, "contact_import_rows"], description="Every CSV row passed validation")],
)
def contact_import_rows(context: dg.AssetExecutionContext, config: ContactImportConfig):
    """Validated, normalised rows of one contact CSV for one tenant.

    Grain: one row per CSV row that passed validation (phone in E.164, e-mail lowercased,
    consents parsed). Source: an operator-supplied CSV (default: the shipped demo sample).
    Rejected rows are not lost: they are listed (row, column, value, reason) in this run's
    metadata and written as a CSV error report.
    """
    tenant = context.partition_key
    path = Path(config.csv_path) if config.csv_path else SAMPLE_CSV
    if not path.is_file():
        raise dg.Failure(f"contact CSV not found: {path}")
    raw = read_contacts_csv(path)
    result = validate_contact_rows(raw)
    result.good.attrs["source_file"] = path.name  # travels with the rows as consent evidence
    report_path = get_settings().home / "import_errors" / tenant / f"{path.stem}.errors.csv"
    write_error_report(result.errors, report_path)
    rejected_rows = int(result.errors["row"].nunique()) if len(result.errors) else 0
    context.log.info(f"{path.name}: {len(raw)} rows read, {len(result.good)} valid, {rejected_rows} rejected")
    yield dg.Output(
        result.good,
        metadata={
            "source_file": dg.MetadataValue.path(str(path)),
            "rows_read": len(raw),
            "rows_valid": len(result.good),
            "rows_rejected": rejected_rows,
            "error_report": dg.MetadataValue.path(str(report_path)),
            "errors": dg.MetadataValue.md(error_report_markdown(result.errors)),
        },
    )
    yield dg.AssetCheckResult(
        check_name=IMPORT_CHECK,
        passed=rejected_rows == 0,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={"rows_rejected": rejected_rows, "problems": len(result.errors), "error_report": dg.MetadataValue.path(str(report_path))},
    )
