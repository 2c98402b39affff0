"""Proof that the consent ledger is what was written: every chain recomputed, the first broken link named.

A contact's events are walked in id order; each must name its predecessor's hash as ``prev_hash``
(``GENESIS`` for the first) and carry the hash of its own fields (``policies.consent_chain``).
A changed field breaks the event's own hash; a deleted or inserted event breaks the next event's
``prev_hash``. Only the last event of a chain can be deleted without a trace in the chain itself,
which is why the consent certificate records the head hash it was issued against.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import dagster as dg
import sqlalchemy as sa

from orchestrator_assets.groups import CONSENTS
from orchestrator_assets.tables import markdown_table
from policies.consent_chain import GENESIS, event_hash
from resources.opstore import OperationalStore
from resources.opstore_schema import consent_events

CHAIN_CHECK = "consent_chains_intact"
CONSENTS_ASSET = dg.AssetKey([CONSENTS, "contact_consents"])
MAX_LISTED = 50


@dataclass(frozen=True)
class BrokenLink:
    """The first event of one contact's chain that does not hold: which field, and what it should be."""

    contact_id: int
    event_id: int
    field: str  # "hash": the event's fields changed; "prev_hash": an event before it is missing, added or changed
    expected: str
    stored: str


@dataclass
class ChainReport:
    contacts: int = 0
    events: int = 0
    broken: list[BrokenLink] = field(default_factory=list)

    @property
    def first(self) -> BrokenLink | None:
        return min(self.broken, key=lambda link: link.event_id, default=None)

    def metadata(self) -> dict[str, dg.MetadataValue | int | str]:
        rows = [(b.contact_id, b.event_id, b.field, b.expected, b.stored) for b in sorted(self.broken, key=lambda b: b.event_id)[:MAX_LISTED]]
        first = self.first
        return {
            "contacts_checked": self.contacts,
            "events_checked": self.events,
            "broken_chains": len(self.broken),
            "first_broken_event": first.event_id if first else 0,
            "broken_links": dg.MetadataValue.md(
                markdown_table(["contact id", "event id", "field", "expected", "stored"], rows, empty="Every chain holds.")
            ),
        }


def verify_chains(conn: sa.Connection, tenant: str) -> ChainReport:
    """Recompute every consent chain of ``tenant``; one ``BrokenLink`` per contact whose chain breaks."""
    report = ChainReport()
    query = sa.select(consent_events).where(consent_events.c.tenant == tenant).order_by(consent_events.c.contact_id, consent_events.c.id)
    contact, expected_prev, broken = None, GENESIS, False
    for row in conn.execute(query).mappings():
        report.events += 1
        if row["contact_id"] != contact:
            contact, expected_prev, broken = row["contact_id"], GENESIS, False
            report.contacts += 1
        if broken:
            continue
        link = None
        if row["prev_hash"] != expected_prev:
            link = BrokenLink(contact, row["id"], "prev_hash", expected_prev, row["prev_hash"])
        elif (recomputed := event_hash(row["prev_hash"], row)) != row["hash"]:
            link = BrokenLink(contact, row["id"], "hash", recomputed, row["hash"])
        if link is not None:
            report.broken.append(link)
            broken = True
        expected_prev = row["hash"]
    return report


@dg.asset_check(asset=CONSENTS_ASSET, name=CHAIN_CHECK, description="Every contact's consent hash chain recomputes (all tenants; consent_chain_verify_job checks one)")
def consent_chains_intact(opstore: OperationalStore) -> dg.AssetCheckResult:
    with opstore.engine().connect() as conn:
        tenants = conn.execute(sa.select(consent_events.c.tenant).distinct()).scalars().all()
        reports = {tenant: verify_chains(conn, tenant) for tenant in tenants}
    broken = {tenant: report for tenant, report in reports.items() if report.broken}
    return dg.AssetCheckResult(
        passed=not broken,
        metadata={
            "events_checked": sum(r.events for r in reports.values()),
            "broken_chains": sum(len(r.broken) for r in broken.values()),
            "tenants_broken": ", ".join(sorted(broken)) or "none",
        },
    )
