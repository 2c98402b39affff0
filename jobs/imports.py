"""The import preview: what a contacts file would do, before it does anything.

An operator about to import a file from a new source wants to see how it will be read (encoding,
delimiter, which columns are recognised), what the stored rows will look like and everything
that is wrong with it, and to fix the file first. The preview goes through the very code of the
import (``inspect_file``), so what it says is what the import will do; it writes nothing to the
operational store and keeps no rows in Dagster's storage, only the masked metadata and the error
report.
"""

from pathlib import Path

import dagster as dg
import pandas as pd
from pydantic import Field

from orchestrator_assets.imports.inspection import inspect_file, refusal_failure
from orchestrator_assets.imports.report import shown
from orchestrator_assets.partitions import tenant_partitions
from orchestrator_assets.tables import markdown_table

PREVIEW_ROWS = 10


class ContactImportPreviewConfig(dg.Config):
    csv_path: str = Field(description="CSV file to preview for the run's tenant (the same csv_path the import takes)")


def stored_rows_markdown(good: pd.DataFrame, limit: int = PREVIEW_ROWS) -> str:
    """The first ``limit`` rows as the store would get them, personal data masked."""
    columns = list(good.columns)
    rows = [[shown(column, "" if pd.isna(value) else value) for column, value in zip(columns, record)] for record in good.head(limit).itertuples(index=False)]
    return markdown_table(columns, rows, empty="No row would be stored.")


@dg.op(description="Read and validate a contacts file exactly as the import would; store nothing.", out=dg.Out(dg.Nothing))
def contact_import_preview(context: dg.OpExecutionContext, config: ContactImportPreviewConfig):
    path = Path(config.csv_path)
    if not path.is_file():
        raise dg.Failure(f"contact CSV not found: {path} (config csv_path)")
    inspection = inspect_file(path, context.partition_key)
    if inspection.refused:
        raise refusal_failure(inspection)
    metadata = inspection.metadata()
    context.log.info(f"{path.name}: {metadata['rows_read']} rows read, {metadata['rows_valid']} would be stored, {inspection.rejected_rows} rejected")
    yield dg.Output(None, metadata={**metadata, "rows_as_stored": dg.MetadataValue.md(stored_rows_markdown(inspection.validation.good))})


@dg.job(
    partitions_def=tenant_partitions,
    description="Preview a contacts CSV for one tenant: how it is read, the first rows as stored (masked) and every problem; writes nothing.",
)
def contact_import_preview_job():
    contact_import_preview()
