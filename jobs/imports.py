"""Contact import jobs: a file on its own (what the drop-folder sensor launches), the preview of a
file before anything is imported, and the rollback of one import by its id (an operator, from the
launchpad).

The preview: an operator about to import a file from a new source wants to see how it will be read
(encoding, delimiter, which columns are recognised), what the stored rows will look like and
everything that is wrong with it, and to fix the file first. The preview goes through the very code
of the import (``inspect_file``), so what it says is what the import will do; it writes nothing to
the operational store and keeps no rows in Dagster's storage, only the masked metadata and the error
report.

Rollback run config, for example::

    ops:
      rollback_contact_import:
        config:
          import_id: 42
          operator: anna@ops.example.ru
          reason: "wrong tenant's export"
          force: false
"""

import datetime as dt
from pathlib import Path

import dagster as dg
import pandas as pd
from pydantic import Field

from orchestrator_assets import groups
from orchestrator_assets.imports.inspection import inspect_file, refusal_failure
from orchestrator_assets.imports.report import shown
from orchestrator_assets.imports.rollback import RollbackRefused, rollback_import
from orchestrator_assets.partitions import tenant_partitions
from orchestrator_assets.tables import markdown_table
from resources.opstore import OperationalStore

PREVIEW_ROWS = 10

contact_import_job = dg.define_asset_job(
    name="contact_import_job",
    description="Import one contact CSV (csv_path) for one tenant: validate, then commit contacts and consents in one transaction.",
    selection=dg.AssetSelection.groups(groups.IMPORTS)
    | dg.AssetSelection.assets([groups.CONTACTS, "contacts"], [groups.CONSENTS, "contact_consents"]),
    partitions_def=tenant_partitions,
)


class ImportRollbackConfig(dg.Config):
    import_id: int = Field(description="The import to undo (contacts/contacts metadata `import_id`, table contact_imports)")
    operator: str = Field(description="Who rolls back (name or e-mail); recorded in the audit log")
    reason: str = Field(description="Why; recorded in the audit log")
    force: bool = Field(default=False, description="Roll back even contacts changed since the import (their later changes to the same fields are overwritten)")


@dg.op(description="Undo one contact import in one transaction: remove the contacts it created, restore the fields it changed, remove its consent events.")
def rollback_contact_import(context: dg.OpExecutionContext, config: ImportRollbackConfig, opstore: OperationalStore) -> int:
    try:
        with opstore.engine().begin() as conn:
            counts = rollback_import(
                conn, config.import_id, operator=config.operator, reason=config.reason, force=config.force,
                now=dt.datetime.now(dt.UTC), run_id=context.run.run_id,
            )
    except RollbackRefused as refused:
        raise dg.Failure(
            description=f"{refused}; nothing was changed",
            metadata={"problems": dg.MetadataValue.md(markdown_table(["contact", "why"], refused.problems[:100]))},
        ) from None
    context.log.info(f"import {config.import_id} rolled back by {config.operator}: {counts}")
    context.add_output_metadata({"import_id": config.import_id, **counts})
    return config.import_id


@dg.job(description="Roll back one contact import by its id (audited; refuses when contacts changed since, unless forced).")
def contact_import_rollback_job():
    rollback_contact_import()



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
