"""Merging duplicate contacts and undoing a merge, launched by an operator (one tenant).

``contacts/contact_duplicate_candidates`` lists the pairs (ids, score, reason). Run config::

    ops:
      merge_contacts:
        config:
          operator: anna@ops.example.ru
          reason: "one customer, two CRM records"
          pairs: [{keep: crm-1001, merge: crm-1874}]     # by external id; or instead:
          # min_score: 90                                 # every candidate pair scoring 90 or more

    ops: {unmerge_contacts: {config: {operator: anna@ops.example.ru, reason: "two people after all", merge_id: 12}}}
"""

import datetime as dt

import dagster as dg
import sqlalchemy as sa
from pydantic import Field

from orchestrator_assets.merges.matching import MIN_SCORE
from orchestrator_assets.merges.merge import Actor, MergeError, MergeOutcome, merge_contacts, unmerge
from orchestrator_assets.merges.people import masked_people
from orchestrator_assets.partitions import tenant_partitions
from orchestrator_assets.tables import markdown_table
from resources.opstore import OperationalStore
from resources.opstore_schema import contact_duplicate_candidates as candidates, contacts
from resources.pii import tenant_cipher


class MergePair(dg.Config):
    keep: str = Field(description="External id of the contact that stays")
    merge: str = Field(description="External id of the contact merged into it (kept as a tombstone)")


class ContactMergeConfig(dg.Config):
    operator: str = Field(description="Who merges (name or e-mail); recorded with every merge")
    reason: str = Field(description="Why these contacts are one person")
    pairs: list[MergePair] = Field(default_factory=list, description="Explicit pairs by external id")
    min_score: int | None = Field(default=None, ge=MIN_SCORE, le=100, description="Instead of pairs: merge every candidate pair scoring this or more")


class ContactUnmergeConfig(dg.Config):
    operator: str = Field(description="Who undoes the merge")
    reason: str = Field(description="Why")
    merge_id: int = Field(description="The merge to undo (contact_merge_job's metadata, table contact_merges)")


def _survivor(conn: sa.Connection, contact_id: int) -> int:
    """The live contact ``contact_id`` ends in, following earlier merges."""
    while (into := conn.execute(sa.select(contacts.c.merged_into).where(contacts.c.id == contact_id)).scalar()) is not None:
        contact_id = into
    return contact_id


def _explicit_pairs(conn: sa.Connection, tenant: str, pairs: list[MergePair]) -> list[tuple[int, int, None]]:
    named = {p.keep for p in pairs} | {p.merge for p in pairs}
    rows = conn.execute(sa.select(contacts.c.external_id, contacts.c.id, contacts.c.merged_into).where(contacts.c.tenant == tenant, contacts.c.external_id.in_(named))).all()
    found = {row.external_id: row.id for row in rows}
    problems = [(name, "no such contact") for name in sorted(named - found.keys())]
    problems += [(row.external_id, f"merged into contact {row.merged_into} already") for row in rows if row.merged_into is not None]
    merged = [p.merge for p in pairs]
    problems += [(name, "merged twice in this run") for name in sorted({m for m in merged if merged.count(m) > 1})]
    problems += [(p.keep, "kept here but merged by another pair") for p in pairs if p.keep in merged]
    problems += [(p.keep, "kept and merged in one pair") for p in pairs if p.keep == p.merge]
    if problems:
        raise dg.Failure(
            description=f"{len(problems)} problem(s) with the pairs for tenant {tenant!r}; nothing was merged",
            metadata={"problems": dg.MetadataValue.md(markdown_table(["external id", "problem"], problems))},
        )
    return [(found[p.keep], found[p.merge], None) for p in pairs]


def _scored_pairs(conn: sa.Connection, tenant: str, min_score: int) -> list[tuple[int, int, int]]:
    rows = conn.execute(
        sa.select(candidates.c.contact_id, candidates.c.other_id, candidates.c.score)
        .where(candidates.c.tenant == tenant, candidates.c.score >= min_score)
        .order_by(candidates.c.score.desc(), candidates.c.contact_id, candidates.c.other_id)
    )
    return [tuple(row) for row in rows]


def _outcomes_table(conn: sa.Connection, tenant: str, outcomes: list[MergeOutcome]) -> str:
    shown = masked_people(conn, tenant_cipher(conn, tenant), [i for o in outcomes for i in (o.survivor_id, o.merged_id)])
    rows = [
        (o.merge_id, o.survivor_id, shown.get(o.survivor_id, ""), o.merged_id, shown.get(o.merged_id, ""),
         ", ".join(f"{k}: {v}" for k, v in sorted(o.counts.items())) or "—")
        for o in outcomes
    ]
    return markdown_table(["merge", "survivor", "", "merged", "", "changes"], rows, empty="Nothing was merged.")


@dg.op(name="merge_contacts", description="Merge duplicate contacts (explicit pairs or every candidate at a score), one transaction each, audited.")
def merge_contacts_op(context: dg.OpExecutionContext, config: ContactMergeConfig, opstore: OperationalStore) -> int:
    tenant, engine = context.partition_key, opstore.engine()
    if bool(config.pairs) == (config.min_score is not None):
        raise dg.Failure(description="give either pairs (by external id) or min_score, not both or neither; nothing was merged")
    actor = Actor(config.operator, config.reason, context.run.run_id)
    with engine.connect() as conn:
        pairs = _explicit_pairs(conn, tenant, config.pairs) if config.pairs else _scored_pairs(conn, tenant, config.min_score)
    outcomes, skipped = [], []
    for keep, merge, score in pairs:
        with engine.begin() as conn:
            if score is not None:  # candidates found before earlier merges of this run: resolve to the live contacts
                keep, merge = sorted((_survivor(conn, keep), _survivor(conn, merge)))
                if keep == merge:
                    skipped.append((keep, "already one contact"))
                    continue
            try:
                outcomes.append(merge_contacts(conn, tenant, keep, merge, actor, dt.datetime.now(dt.UTC), score))
            except MergeError as error:
                if score is None:
                    raise dg.Failure(description=f"{error}; the pairs before it were merged (see contact_merges)") from None
                skipped.append((merge, str(error)))
    with engine.connect() as conn:
        table = _outcomes_table(conn, tenant, outcomes)
    context.log.info(f"{len(outcomes)} merges by {config.operator} for {tenant}; {len(skipped)} candidate pairs skipped")
    context.add_output_metadata({
        "merged": len(outcomes),
        "merges": dg.MetadataValue.md(table),
        "skipped": dg.MetadataValue.md(markdown_table(["contact", "why"], skipped, empty="No pair was skipped.")),
    })
    return len(outcomes)


@dg.op(name="unmerge_contacts", description="Undo one merge exactly: rows moved back, the tombstone live again, the survivor's consent state derived without the merge's facts; audited.")
def unmerge_contacts_op(context: dg.OpExecutionContext, config: ContactUnmergeConfig, opstore: OperationalStore) -> int:
    tenant = context.partition_key
    try:
        with opstore.engine().begin() as conn:
            outcome = unmerge(conn, tenant, config.merge_id, Actor(config.operator, config.reason, context.run.run_id), dt.datetime.now(dt.UTC))
            table = _outcomes_table(conn, tenant, [outcome])
    except MergeError as error:
        raise dg.Failure(description=f"{error}; nothing was changed") from None
    context.add_output_metadata({"unmerged": dg.MetadataValue.md(table), "not_restored": outcome.counts["not_restored"]})
    return outcome.merge_id


@dg.job(partitions_def=tenant_partitions, description="Merge duplicate contacts: explicit pairs by external id, or every candidate at or above a score.")
def contact_merge_job():
    merge_contacts_op()


@dg.job(partitions_def=tenant_partitions, description="Undo one contact merge by its id, exactly.")
def contact_unmerge_job():
    unmerge_contacts_op()
