"""Dagster assets of the imports domain: a contact CSV, validated."""

import hashlib
from pathlib import Path

import dagster as dg
from pydantic import Field

from orchestrator_assets.groups import IMPORTS
from orchestrator_assets.imports.inspection import inspect_file, refusal_failure
from orchestrator_assets.imports.validation import no_rows
from orchestrator_assets.partitions import tenant_partitions

IMPORT_CHECK = "import_has_no_rejected_rows"
NO_FILE = "no file given (csv_path is empty)"


class ContactImportConfig(dg.Config):
    csv_path: str = Field(
        default="",
        description="CSV file to import for the run's tenant; empty = import nothing (contacts and consents already stored are used as they are)",
    )


@dg.asset(
    key=[IMPORTS, "contact_import_rows"],
    group_name=IMPORTS,
    partitions_def=tenant_partitions,
    check_specs=[dg.AssetCheckSpec(IMPORT_CHECK, asset=[IMPORTS, "contact_import_rows"], description="Every CSV row passed validation")],
)
def contact_import_rows(context: dg.AssetExecutionContext, config: ContactImportConfig):
    """Validated, normalised rows of one contact CSV for one tenant.

    Grain: one row per CSV row that passed validation (phone in E.164, e-mail lowercased,
    consents parsed). Source: the operator-supplied CSV at ``csv_path``. Without one the run
    imports nothing and the rest of the pipeline works with the contacts already stored: a file
    chosen by default (such as the shipped demo sample) would put its contacts and consents into
    whichever tenant the run targets. Rejected rows are not lost: they are listed (row, column,
    value, reason) in this run's metadata and written as a CSV error report. A file that is not a
    usable CSV at all (binary, empty, broken quoting, …) fails the step with the reason and a
    one-row report, and nothing goes on to the store.
    """
    tenant = context.partition_key
    if not config.csv_path:
        context.log.info(f"{NO_FILE}: nothing imported for {tenant}")
        yield dg.Output(no_rows(), metadata={"source_file": NO_FILE, "rows_read": 0, "rows_valid": 0, "rows_rejected": 0})
        yield dg.AssetCheckResult(check_name=IMPORT_CHECK, passed=True, metadata={"rows_rejected": 0, "source_file": NO_FILE})
        return
    path = Path(config.csv_path)
    if not path.is_file():
        raise dg.Failure(f"contact CSV not found: {path} (config csv_path)")
    inspection = inspect_file(path, tenant)
    if inspection.refused:
        raise refusal_failure(inspection)
    good = inspection.validation.good
    # What the commit records with the import (imports/commit.py: ImportSource); the file name is consent evidence.
    good.attrs.update(
        source_file=path.name, source_sha256=hashlib.sha256(path.read_bytes()).hexdigest(), rows_read=inspection.read.records,
        rows_rejected=inspection.rejected_rows, error_report=str(inspection.report_path),
    )
    metadata = inspection.metadata()
    context.log.info(f"{path.name}: {metadata['rows_read']} rows read, {len(good)} valid, {inspection.rejected_rows} rejected")
    yield dg.Output(good, metadata=metadata)
    yield dg.AssetCheckResult(
        check_name=IMPORT_CHECK,
        passed=inspection.rejected_rows == 0,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={
            "rows_rejected": inspection.rejected_rows,
            "problems": len(inspection.problems),
            "error_report": metadata["error_report"],
        },
    )
