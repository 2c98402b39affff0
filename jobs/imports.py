"""Contact import jobs: a file on its own (what the drop-folder sensor launches) and the rollback of
one import by its id (an operator, from the launchpad).

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

import dagster as dg
from pydantic import Field

from orchestrator_assets import groups
from orchestrator_assets.imports.rollback import RollbackRefused, rollback_import
from orchestrator_assets.partitions import tenant_partitions
from orchestrator_assets.tables import markdown_table
from resources.opstore import OperationalStore

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
