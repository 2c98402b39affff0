"""Dagster assets of the contacts domain: the tenant's contact book in the operational store, and
the import commit that writes it together with the consents the file gives."""

import asyncio
import datetime as dt
from typing import Literal

import dagster as dg
import pandas as pd
from pydantic import Field

from orchestrator_assets.groups import CONSENTS, CONTACTS, IMPORTS
from orchestrator_assets.imports.commit import ImportRefused, ImportSource, commit_import
from orchestrator_assets.partitions import tenant_partitions
from orchestrator_assets.reachability import (
    DueNumber,
    due_numbers,
    look_up,
    record_result,
)
from orchestrator_assets.tables import markdown_table
from orchestrator_assets.webhooks.outbox import enqueue
from policies.channels import Channel, Provider
from policies.loader import load_tenants
from policies.tenants import ImportMode
from resources.channels.smsc import ReachabilityResult
from resources.connectors import ChannelConnectors
from resources.opstore import OperationalStore
from resources.pii import tenant_cipher

COMMIT_OP = "commit_contact_import"  # the op's name in run config: ops: {commit_contact_import: {config: …}}


class ContactCommitConfig(dg.Config):
    import_mode: Literal["tenant_default", "all_or_nothing", "valid_rows_only"] = Field(
        default="tenant_default",
        description="all_or_nothing (any rejected row: nothing written, the run fails) or valid_rows_only; tenant_default = the tenant's import_mode (tenants.yaml)",
    )


@dg.multi_asset(
    name=COMMIT_OP,
    specs=[
        dg.AssetSpec(
            [CONTACTS, "contacts"],
            group_name=CONTACTS,
            deps=[dg.AssetKey([IMPORTS, "contact_import_rows"])],
            description="Contacts of one tenant, upserted by external id from the validated import rows (one row per tenant × external_id in `contacts`); "
            "committed with their consents in one transaction, under an import id that a rollback names.",
        ),
        dg.AssetSpec(
            [CONSENTS, "contact_consents"],
            group_name=CONSENTS,
            deps=[dg.AssetKey([IMPORTS, "contact_import_rows"]), dg.AssetKey([CONTACTS, "contacts"])],
            description="The import's consent decisions, appended to the consent ledger: one `consent_events` row per decision "
            "(tenant × contact × channel × purpose), hash-chained per contact, the current state derived from them (docs/consent.md), "
            "the proof under 152-FZ / 38-FZ art. 18. Source: the import's consent columns (`consent_<channel>` advertising, "
            "`consent_processing`, `consent_<channel>_transactional`); the import id is in each event's source_ref.",
        ),
    ],
    partitions_def=tenant_partitions,
    ins={"rows": dg.AssetIn(key=[IMPORTS, "contact_import_rows"])},
)
def commit_contact_import(context: dg.AssetExecutionContext, config: ContactCommitConfig, rows: pd.DataFrame, opstore: OperationalStore):
    """One import's contacts and consents, in one transaction (``imports.commit``): a failure
    anywhere leaves neither, and an all-or-nothing import with rejected rows writes nothing."""
    tenant, now = context.partition_key, dt.datetime.now(dt.UTC)
    settings = load_tenants().tenants[tenant]
    mode = settings.import_mode if config.import_mode == "tenant_default" else ImportMode(config.import_mode)
    source = ImportSource.of(rows)
    webhook_events = []
    try:
        with opstore.engine().begin() as conn:
            result = commit_import(
                conn, tenant, rows, source, mode, now, actor=context.run.tags.get("dagster/sensor_name") or context.job_name,
                run_id=context.run.run_id, webhook_events=webhook_events,
            )
            enqueued = enqueue(conn, tenant, settings.webhooks, webhook_events, now)
    except ImportRefused as refused:
        raise dg.Failure(
            description=f"{source.file}: {refused}. Fix the rows in the error report and import the file again.",
            metadata={
                "rows_rejected": refused.rejected,
                "error_report": dg.MetadataValue.path(source.error_report or "none"),
                "duplicates_of_stored_contacts": dg.MetadataValue.md(_problems_table(refused.store_duplicates)),
            },
        ) from None
    context.log.info(f"import {result.import_id} of {source.file} for {tenant} ({mode}): {result.contacts}, consents {result.consents}")
    shared = {"import_id": result.import_id if result.import_id is not None else "none (no file)", "import_mode": str(mode)}
    yield dg.MaterializeResult(
        asset_key=[CONTACTS, "contacts"],
        metadata={
            **shared,
            **{key: int(value) for key, value in result.contacts.items()},
            "rows_rejected": result.rows_rejected,
            "duplicates_of_stored_contacts": dg.MetadataValue.md(_problems_table(result.store_duplicates)),
        },
    )
    yield dg.MaterializeResult(
        asset_key=[CONSENTS, "contact_consents"],
        metadata={**shared, **{key: int(value) for key, value in result.consents.items()}, "webhook_events_enqueued": enqueued},
    )


def _problems_table(problems: list[dict]) -> str:
    return markdown_table(
        ["row", "column", "value", "reason"],
        [(p["row"], p["column"], p["value"], p["reason"]) for p in problems[:50]],
        empty="No row duplicates a stored contact.",
    )


READABLE = {True: "yes", False: "no", None: "unsettled"}


class PhoneReachabilityConfig(dg.Config):
    max_lookups: int = Field(default=200, ge=1, description="HLR lookups in this run at most (SMSC bills each)")
    lookups_per_second: float = Field(default=2.0, gt=0, description="Pace, well under the account's send limit so campaigns keep their share")
    recheck_after_days: int = Field(default=30, ge=1, description="Skip numbers looked up more recently (unless the contact's phone changed)")


@dg.asset(
    key=[CONTACTS, "phone_reachability"],
    group_name=CONTACTS,
    partitions_def=tenant_partitions,
    deps=[dg.AssetKey([CONTACTS, "contacts"]), dg.AssetKey([CONSENTS, "contact_consents"])],
    output_required=False,
)
def phone_reachability(context: dg.AssetExecutionContext, config: PhoneReachabilityConfig, opstore: OperationalStore, connectors: ChannelConnectors):
    """Whether each contact's phone is live, from SMSC HLR lookups (tenants with an SMSC account only).

    Grain: one ``phone_reachability`` row per (tenant, contact): the latest lookup of the contact's
    phone (reachable, unreachable, or unsettled) with SMSC's words. A dead number withdraws the
    contact's SMS consent with the lookup as evidence, as an *unreachable* send answer does. Only
    contacts with granted SMS consent are looked up, at most ``max_lookups`` per run, paced, and
    not again within ``recheck_after_days`` (see ``orchestrator_assets.reachability``). Tenants
    without an SMSC account get no materialization.
    """
    tenant_id = context.partition_key
    tenant = load_tenants().tenants[tenant_id]
    if tenant.accounts.smsc is None:
        context.log.info(f"tenant {tenant_id!r} has no SMSC account: no HLR lookups")
        return
    engine = opstore.engine()
    now = dt.datetime.now(dt.UTC)
    with engine.begin() as conn:
        cipher = tenant_cipher(conn, tenant_id)
        due = due_numbers(conn, cipher, now, dt.timedelta(days=config.recheck_after_days))
    batch = due[: config.max_lookups]

    def record(number: DueNumber, result: ReachabilityResult) -> int:
        with engine.begin() as conn:  # one small transaction per answer: a crash keeps what was paid for
            return record_result(conn, cipher, number.contact_id, number.phone, result, dt.datetime.now(dt.UTC))

    connector = connectors.for_provider(tenant, Provider.SMSC, Channel.SMS, tenant_id)
    lookups = asyncio.run(look_up(connector, batch, config.lookups_per_second, record))
    if batch and lookups.tally["not_checked"] == len(batch):
        raise dg.Failure(
            description=f"none of {len(batch)} HLR lookups reached the network (first: {lookups.not_checked[0][1]}); nothing was recorded",
            metadata={"not_checked": dg.MetadataValue.md(markdown_table(["contact", "why"], lookups.not_checked[:50]))},
        )
    context.log.info(f"{len(batch)} of {len(due)} due numbers looked up: {dict(lookups.tally)}")
    yield dg.MaterializeResult(
        metadata={
            "due": len(due),
            "looked_up": len(batch),
            "left_for_later": len(due) - len(batch),
            "reachable": lookups.tally["reachable"],
            "unreachable": lookups.tally["unreachable"],
            "unsettled": lookups.tally["unsettled"],
            "not_checked": lookups.tally["not_checked"],
            "sms_consents_withdrawn": lookups.tally["sms_consents_withdrawn"],
            "results": dg.MetadataValue.md(
                markdown_table(
                    ["contact", "reachable", "what SMSC said"],
                    [(c, READABLE[r], why) for c, r, why in sorted(lookups.answers)[:50]],
                    empty="No answers: no number was due for a lookup.",
                )
            ),
            "not_checked_why": dg.MetadataValue.md(markdown_table(["contact", "why"], lookups.not_checked[:50], empty="Every lookup was answered.")),
        }
    )
