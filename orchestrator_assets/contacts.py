"""Dagster assets of the contacts domain: the tenant's contact book in the operational store."""

import asyncio
import datetime as dt

import dagster as dg
import pandas as pd
from pydantic import Field

from orchestrator_assets.groups import CONSENTS, CONTACTS, IMPORTS
from orchestrator_assets.imports.store import upsert_contacts
from orchestrator_assets.partitions import tenant_partitions
from orchestrator_assets.reachability import (
    DueNumber,
    due_numbers,
    look_up,
    record_result,
)
from orchestrator_assets.tables import markdown_table
from policies.loader import load_tenants
from policies.channels import Channel, Provider
from resources.channels.smsc import ReachabilityResult
from resources.connectors import ChannelConnectors
from resources.opstore import OperationalStore
from resources.pii import tenant_cipher


@dg.asset(
    key=[CONTACTS, "contacts"],
    group_name=CONTACTS,
    partitions_def=tenant_partitions,
    ins={"rows": dg.AssetIn(key=[IMPORTS, "contact_import_rows"])},
)
def contacts(context: dg.AssetExecutionContext, rows: pd.DataFrame, opstore: OperationalStore) -> dg.MaterializeResult:
    """Contacts of one tenant, upserted by external id.

    Grain: one row per (tenant, external_id) in the ``contacts`` table. Source: validated import
    rows. Re-importing the same file changes nothing (reported as ``unchanged``); a row naming a
    merged contact leaves its tombstone alone (reported as ``merged``, ``imports.store.upsert_contacts``).
    """
    with opstore.engine().begin() as conn:
        counts = upsert_contacts(conn, context.partition_key, rows, dt.datetime.now(dt.UTC))
    return dg.MaterializeResult(metadata={key: int(value) for key, value in counts.items()})


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
