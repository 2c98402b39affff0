"""Operator jobs of the consent ledger (one tenant each): prove the chains, issue certificates.

Run config of a certificate, for example::

    ops:
      write_consent_certificates:
        config:
          operator: anna@ops.example.ru
          external_ids: [crm-000123, telegram:5007686286]
"""

import datetime as dt

import dagster as dg
from pydantic import Field

from orchestrator_assets.consent_certificate import write_certificate
from orchestrator_assets.consent_verify import CHAIN_CHECK, CONSENTS_ASSET, verify_chains
from orchestrator_assets.partitions import tenant_partitions
from orchestrator_assets.tables import markdown_table
from policies.loader import load_consent_texts, load_tenants
from resources.audit import record_audit
from resources.opstore import OperationalStore
from resources.settings import get_settings


class VerifyConfig(dg.Config):
    operator: str = Field(default="consent_chain_verify_job", description="Who asked for the proof (name or e-mail); recorded in the audit trail")


@dg.op(description="Recompute every consent hash chain of the tenant; fail naming the first broken link.")
def verify_consent_chains(context: dg.OpExecutionContext, config: VerifyConfig, opstore: OperationalStore):
    tenant = context.partition_key
    now = dt.datetime.now(dt.UTC)
    with opstore.engine().begin() as conn:
        report = verify_chains(conn, tenant)
        first = report.first
        params = {"contacts": report.contacts, "events": report.events, "broken_chains": len(report.broken), "first_broken_event": first.event_id if first else None}
        record_audit(conn, tenant=tenant, actor=config.operator, action="consent_verify", params=params, run_id=context.run.run_id, now=now)
    metadata = {"tenant": tenant, **report.metadata()}
    context.log_event(dg.AssetCheckEvaluation(asset_key=CONSENTS_ASSET, check_name=CHAIN_CHECK, passed=first is None, metadata=metadata))
    # Yielded before a failure is raised, so the check's evaluation and the metadata are kept either way.
    yield dg.Output(report.events, metadata=metadata)
    if first is not None:
        raise dg.Failure(
            description=(
                f"consent chain of contact {first.contact_id} breaks at event {first.event_id}: {first.field} should be {first.expected}, "
                f"is {first.stored} ({len(report.broken)} broken chain(s) in {tenant})"
            ),
            metadata=metadata,
        )
    context.log.info(f"{report.events} consent events of {report.contacts} contacts verified for {tenant}")


@dg.job(partitions_def=tenant_partitions, description="Prove the tenant's consent ledger: recompute every hash chain, name the first broken link (audited).")
def consent_chain_verify_job():
    verify_consent_chains()


class CertificateConfig(dg.Config):
    external_ids: list[str] = Field(min_length=1, description="The contacts (external ids) to certify")
    operator: str = Field(description="Who asked for the certificates (name or e-mail); recorded in the audit trail")


@dg.op(description="Write a consent certificate PDF per contact under $ALGOR_HOME/consent_certificates/<tenant>/.")
def write_consent_certificates(context: dg.OpExecutionContext, config: CertificateConfig, opstore: OperationalStore) -> int:
    tenant = context.partition_key
    now = dt.datetime.now(dt.UTC)
    out_dir = get_settings().home / "consent_certificates" / tenant
    texts, legal_entity = load_consent_texts(), load_tenants().tenants[tenant].operator_legal_entity
    with opstore.engine().begin() as conn:
        try:
            issued = [write_certificate(conn, tenant, legal_entity, external_id, texts, out_dir, now) for external_id in config.external_ids]
        except LookupError as error:
            raise dg.Failure(description=str(error)) from None
        params = {"contact_ids": [c.contact_id for c in issued], "head_hashes": [c.head_hash for c in issued]}
        record_audit(conn, tenant=tenant, actor=config.operator, action="consent_certificate", params=params, run_id=context.run.run_id, now=now)
    rows = [(c.contact_id, c.events, "yes" if c.chain_intact else "NO", c.head_hash, c.path.name) for c in issued]
    context.add_output_metadata(
        {
            "certificates": dg.MetadataValue.md(markdown_table(["contact id", "events", "chain intact", "head hash", "file"], rows)),
            "folder": dg.MetadataValue.path(str(out_dir)),
            **{f"certificate_{c.contact_id}": dg.MetadataValue.path(str(c.path)) for c in issued},
        }
    )
    return len(issued)


@dg.job(partitions_def=tenant_partitions, description="Consent certificates (PDF: evidence, consent texts, chain head hash) for named contacts.")
def consent_certificate_job():
    write_consent_certificates()
