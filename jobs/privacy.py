"""The data subject's rights and the operator's key duties, as jobs launched from the launchpad.

- ``contact_erasure_job`` (one tenant): erase contacts on request (``orchestrator_assets/erasure.py``)::

      ops: {erase_contacts: {config: {external_ids: [CRM-0001007], operator: anna@ops.example.ru, reason: "request 2026-12-01 by e-mail"}}}

- ``contact_export_job`` (one tenant): everything held about one contact as JSON
  (``orchestrator_assets/contact_export.py``)::

      ops: {export_contact: {config: {external_id: CRM-0001007, operator: anna@ops.example.ru}}}

- ``pii_key_rotation_job``: re-wrap the tenants' keys under a new master key, or rotate tenants'
  data keys (``resources/pii_rotation.py``)::

      ops: {rotate_pii_keys: {config: {mode: rotate_data_key, tenant: demo, operator: anna@ops.example.ru}}}

Run metadata names contacts by external id and row id only, never by anything personal.
"""


import datetime as dt
from typing import Literal

import dagster as dg
from pydantic import Field

from orchestrator_assets.contact_export import EXPORT_ACTION, ExportError, contact_document, export_path, write_export
from orchestrator_assets.erasure import ErasureError, erase_contacts
from orchestrator_assets.groups import CAMPAIGNS, IMPORTS
from orchestrator_assets.partitions import tenant_partitions
from orchestrator_assets.tables import markdown_table
from resources.audit import record_audit
from resources.io_managers import sealed_storage
from resources.opstore import OperationalStore
from resources.pii import tenant_cipher
from resources.pii_rotation import (
    add_data_key_version,
    retire_unused_versions,
    rewrap_contact_keys,
    rewrap_tenant_keys,
    tenants_with_keys,
)
from resources.settings import MASTER_KEY_VARIABLE, PREVIOUS_MASTER_KEY_VARIABLE, get_settings


class ErasureRequest(dg.Config):
    external_ids: list[str] = Field(min_length=1, description="The tenant's external ids of the contacts to erase")
    operator: str = Field(description="Who carries out the request (name or e-mail); recorded in the audit trail")
    reason: str = Field(description="The request: who asked, when, how (e.g. 'letter of 2026-12-01, 152-FZ art. 21')")


@dg.op(name="erase_contacts", description="Crypto-shred contacts' personal data (152-FZ art. 21, GDPR art. 17); counts and consent proofs stay, pseudonymous.")
def erase_contacts_step(context: dg.OpExecutionContext, config: ErasureRequest, opstore: OperationalStore) -> int:
    tenant = context.partition_key
    try:
        with opstore.engine().begin() as conn:
            done = erase_contacts(
                conn, tenant, config.external_ids, actor=config.operator, reason=config.reason, run_id=context.run.run_id, now=dt.datetime.now(dt.UTC)
            )
    except ErasureError as error:
        raise dg.Failure(description=f"{error}: nothing was erased for tenant {tenant!r}") from None
    erased = [e for e in done if e.outcome == "erased"]
    # The steps' stored outputs (sealed under the installation's key, not the contact's) lose the person's rows too.
    scrubbed: list[str] = []
    if erased:
        storage = sealed_storage(context.instance)
        for name, key, column, gone in (
            ("import rows", [IMPORTS, "contact_import_rows"], "external_id", {e.external_id for e in erased}),
            ("campaign messages", [CAMPAIGNS, "campaign_messages"], "contact_id", {e.contact_id for e in erased}),
        ):
            if storage.rewrite(key, tenant, lambda rows, column=column, gone=gone: rows[~rows[column].isin(gone)]):
                scrubbed.append(name)
    context.log.info(f"{len(erased)} contact(s) erased for {tenant} by {config.operator}, {len(done) - len(erased)} erased before")
    context.add_output_metadata(
        {
            "erased": len(erased),
            "already_erased": len(done) - len(erased),
            "stored_outputs_scrubbed": ", ".join(scrubbed) or "none stored",
            "contacts": dg.MetadataValue.md(
                markdown_table(["external id", "contact id", "outcome", "erased at"], [(e.external_id, e.contact_id, e.outcome, e.erased_at.isoformat()) for e in done])
            ),
        }
    )
    return len(erased)


@dg.job(partitions_def=tenant_partitions, description="Erase contacts on request: their personal data crypto-shredded, their counts kept (audited).")
def contact_erasure_job():
    erase_contacts_step()


class ExportRequest(dg.Config):
    external_id: str = Field(description="The tenant's external id of the contact")
    operator: str = Field(description="Who carries out the request; recorded in the audit trail")


@dg.op(description="Write everything held about one contact as JSON (0600) under $ALGOR_HOME/exports/<tenant>/ (152-FZ art. 14, GDPR art. 15/20).")
def export_contact(context: dg.OpExecutionContext, config: ExportRequest, opstore: OperationalStore) -> str:
    tenant = context.partition_key
    now = dt.datetime.now(dt.UTC)
    path = export_path(get_settings().home, tenant, config.external_id)
    try:
        with opstore.engine().begin() as conn:
            document = contact_document(conn, tenant_cipher(conn, tenant), config.external_id, now)
            write_export(path, document)  # inside the transaction: the audit row commits only if the file is there
            params = {"external_id": config.external_id, "contact_id": document["contact"]["id"], "path": str(path)}
            record_audit(conn, tenant=tenant, actor=config.operator, action=EXPORT_ACTION, params=params, run_id=context.run.run_id, now=now)
    except ExportError as error:
        raise dg.Failure(description=str(error)) from None
    sections = {name: len(rows) for name, rows in document.items() if isinstance(rows, list)}
    context.add_output_metadata(
        {
            "export": dg.MetadataValue.path(str(path)),
            "erased": document["contact"]["erased_at"] is not None,
            "sections": dg.MetadataValue.md(markdown_table(["section", "rows"], sorted(sections.items()))),
        }
    )
    return str(path)


@dg.job(partitions_def=tenant_partitions, description="Export everything held about one contact as JSON (audited).")
def contact_export_job():
    export_contact()


class KeyRotation(dg.Config):
    mode: Literal["rewrap", "rotate_data_key"] = Field(
        description=f"rewrap: tenant keys from {PREVIOUS_MASTER_KEY_VARIABLE} to a new {MASTER_KEY_VARIABLE}; rotate_data_key: a new tenant data key version"
    )
    tenant: str = Field(default="", description="One tenant; empty = every tenant that has keys")
    operator: str = Field(description="Who rotates; recorded in the audit trail")
    batch_size: int = Field(default=500, ge=1, description="rotate_data_key: contact keys re-wrapped per transaction")


@dg.op(description="Re-wrap tenant keys under a new master key, or rotate tenant data keys in short batches (sends keep running).")
def rotate_pii_keys(context: dg.OpExecutionContext, config: KeyRotation, opstore: OperationalStore) -> int:
    engine = opstore.engine()
    settings = get_settings()
    master = settings.master_key()
    with engine.connect() as conn:
        tenants = [config.tenant] if config.tenant else tenants_with_keys(conn)
    summary: list[tuple] = []
    for tenant in tenants:
        now = dt.datetime.now(dt.UTC)
        if config.mode == "rewrap":
            previous = settings.previous_master_key()
            if previous is None:
                raise dg.Failure(description=f"rewrap needs the master key being replaced in {PREVIOUS_MASTER_KEY_VARIABLE} (and the new one in {MASTER_KEY_VARIABLE})")
            with engine.begin() as conn:
                rewrapped = rewrap_tenant_keys(conn, tenant, previous, master)
                record_audit(conn, tenant=tenant, actor=config.operator, action="pii.rewrap", params={"versions_rewrapped": rewrapped}, run_id=context.run.run_id, now=now)
            summary.append((tenant, config.mode, rewrapped, "", ""))
            continue
        with engine.begin() as conn:
            version = add_data_key_version(conn, tenant, master, now)
        with engine.connect() as conn:
            cipher = tenant_cipher(conn, tenant)
        last_id, contact_keys = 0, 0
        while last_id is not None:
            with engine.begin() as conn:  # one short transaction per batch: sends and imports interleave
                last_id, rewrapped = rewrap_contact_keys(conn, cipher, last_id, config.batch_size)
            contact_keys += rewrapped
        with engine.begin() as conn:
            retired = retire_unused_versions(conn, tenant, dt.datetime.now(dt.UTC))
            params = {"new_version": version, "contact_keys_rewrapped": contact_keys, "versions_retired": retired}
            record_audit(conn, tenant=tenant, actor=config.operator, action="pii.rotate_data_key", params=params, run_id=context.run.run_id, now=now)
        summary.append((tenant, config.mode, version, contact_keys, ", ".join(map(str, retired)) or "none"))
        context.log.info(f"{tenant}: data key version {version}, {contact_keys} contact keys re-wrapped, retired {retired or 'none'}")
    context.add_output_metadata(
        {
            "tenants": len(summary),
            "rotation": dg.MetadataValue.md(
                markdown_table(
                    ["tenant", "mode", "rewrap: versions re-wrapped / rotate: new version", "contact keys re-wrapped", "versions retired"],
                    summary,
                    empty="No tenant has keys yet.",
                )
            ),
        }
    )
    return len(summary)


@dg.job(description="Key duties for PII at rest: re-wrap under a new master key, or rotate tenant data keys (audited).")
def pii_key_rotation_job():
    rotate_pii_keys()
