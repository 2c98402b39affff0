"""contacts/contact_duplicate_candidates: pairs of a tenant's contacts that may be one person."""

import datetime as dt
import time

import dagster as dg
import sqlalchemy as sa

from orchestrator_assets.groups import CONTACTS
from orchestrator_assets.merges.matching import MIN_SCORE, find_candidates
from orchestrator_assets.merges.people import live_people, masked_people
from orchestrator_assets.partitions import tenant_partitions
from orchestrator_assets.tables import markdown_table
from resources.opstore import OperationalStore
from resources.opstore_schema import contact_duplicate_candidates as candidates
from resources.pii import tenant_cipher

SHOWN_PAIRS = 50


@dg.asset(
    key=[CONTACTS, "contact_duplicate_candidates"],
    group_name=CONTACTS,
    partitions_def=tenant_partitions,
    deps=[dg.AssetKey([CONTACTS, "contacts"])],
)
def contact_duplicate_candidates(context: dg.AssetExecutionContext, opstore: OperationalStore) -> dg.MaterializeResult:
    """Pairs of live contacts that may be one person, with a score 0-100 and the reason in words.

    Grain: one ``contact_duplicate_candidates`` row per (tenant, contact, other contact), ids only,
    replaced in one transaction. Evidence: phones one digit apart, e-mails equal once normalised
    (case, ``+tags``, Gmail dots) or one edit apart, names alike in any word order (rapidfuzz); see
    ``orchestrator_assets/merges/matching.py``. Nothing is merged here: ``contact_merge_job`` merges
    chosen pairs or every pair at or above a score.
    """
    tenant, now = context.partition_key, dt.datetime.now(dt.UTC)
    with opstore.engine().begin() as conn:
        cipher = tenant_cipher(conn, tenant)
        people = live_people(conn, cipher)
        started = time.perf_counter()
        found = find_candidates(people)
        seconds = time.perf_counter() - started
        conn.execute(sa.delete(candidates).where(candidates.c.tenant == tenant))
        if found:
            rows = [{"tenant": tenant, "contact_id": c.contact_id, "other_id": c.other_id, "score": c.score, "reason": c.reason, "found_at": now} for c in found]
            conn.execute(sa.insert(candidates), rows)
        top = found[:SHOWN_PAIRS]
        shown = masked_people(conn, cipher, sorted({i for c in top for i in (c.contact_id, c.other_id)}))
    context.log.info(f"{len(found)} duplicate candidates among {len(people)} contacts of {tenant} in {seconds:.2f} s")
    table = markdown_table(
        ["score", "reason", "contact", "", "other", ""],
        [(c.score, c.reason, c.contact_id, shown[c.contact_id], c.other_id, shown[c.other_id]) for c in top],
        empty=f"No pair of contacts scores {MIN_SCORE} or more.",
    )
    return dg.MaterializeResult(
        metadata={
            "candidates": len(found),
            "contacts_compared": len(people),
            "matching_seconds": round(seconds, 3),
            "top_pairs": dg.MetadataValue.md(table),
        }
    )
