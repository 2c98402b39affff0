"""The consent certificate: one contact's consent history as a PDF for the 152-FZ archive.

It names the personal-data operator (the tenant's legal entity), the contact (external id and
masked identity: the archive proves consent, it need not repeat the data), every consent event
with its typed evidence and chain hashes (a fact of a merge undone since marked voided), the full
text of each consent text version cited, the chain head hash the certificate was issued against
and whether the chain verified at that moment.
A later change to the ledger shows up against the certificate's head hash even where the chain
alone could not show it (the last event removed).

Fonts: DejaVu Sans (Debian's ``fonts-dejavu-core``), for Cyrillic.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa
from fpdf import FPDF

from orchestrator_assets.consent_ledger import open_identity, undone_merge_refs
from orchestrator_assets.consent_verify import verify_chains
from orchestrator_assets.contact_pii import read_contacts
from policies.consent_chain import canonical_value
from policies.consent_texts import ConsentTextsFile
from policies.masking import mask_value
from resources.opstore_schema import consent_events, contacts
from resources.pii import tenant_cipher

FONT_DIR = Path("/usr/share/fonts/truetype/dejavu")


@dataclass(frozen=True)
class Certificate:
    contact_id: int
    path: Path
    events: int
    head_hash: str
    chain_intact: bool


def _contact(conn: sa.Connection, tenant: str, external_id: str) -> sa.Row | None:
    """The contact's id and wrapped key, or None when the tenant has no such contact."""
    query = sa.select(contacts.c.id, contacts.c.data_key).where(contacts.c.tenant == tenant, contacts.c.external_id == external_id)
    return conn.execute(query).first()


def _masked(values: dict) -> str:
    shown = [f"{name}: {mask_value(name, value)}" for name, value in values.items() if value is not None]
    return "; ".join(shown) or "—"


class _Pdf(FPDF):
    def __init__(self) -> None:
        super().__init__()
        regular, bold = FONT_DIR / "DejaVuSans.ttf", FONT_DIR / "DejaVuSans-Bold.ttf"
        if not regular.is_file() or not bold.is_file():
            raise FileNotFoundError(f"DejaVu Sans is not in {FONT_DIR}: install Debian's fonts-dejavu-core (the certificate needs Cyrillic)")
        self.add_font("DejaVu", "", str(regular))
        self.add_font("DejaVu", "B", str(bold))
        self.set_auto_page_break(True, margin=15)
        self.add_page()

    def heading(self, text: str, size: int = 12) -> None:
        self.set_font("DejaVu", "B", size)
        self.multi_cell(0, 7, text, new_x="LMARGIN", new_y="NEXT")
        self.set_font("DejaVu", "", 9)

    def line(self, label: str, value: object) -> None:
        self.multi_cell(0, 5, f"{label}: {value if value not in (None, '') else '—'}", new_x="LMARGIN", new_y="NEXT")


def write_certificate(
    conn: sa.Connection, tenant: str, operator: str, external_id: str, texts: ConsentTextsFile, out_dir: Path, now: dt.datetime
) -> Certificate:
    """Write ``<out_dir>/contact-<id>.pdf`` for one contact (named by id: an external id may hold a chat id,
    and paths reach run metadata); ``LookupError`` when the tenant has no such contact."""
    contact = _contact(conn, tenant, external_id)
    if contact is None:
        raise LookupError(f"tenant {tenant!r} has no contact with external_id {external_id!r}")
    contact_id, cipher = contact.id, tenant_cipher(conn, tenant)
    identity = read_contacts(conn, cipher, [contact_id]).get(contact_id, {})  # {} once erased
    events = conn.execute(
        sa.select(consent_events).where(consent_events.c.tenant == tenant, consent_events.c.contact_id == contact_id).order_by(consent_events.c.id)
    ).mappings().all()
    head = events[-1]["hash"] if events else "—"
    undone = undone_merge_refs().c
    voided = dict(conn.execute(sa.select(undone.source_ref, undone.undone_at).where(undone.tenant == tenant)).all())
    intact = not any(link.contact_id == contact_id for link in verify_chains(conn, tenant).broken)

    pdf = _Pdf()
    pdf.heading("Сертификат согласий / Consent certificate", 14)
    pdf.line("Оператор персональных данных / Operator", operator)
    pdf.line("Tenant", tenant)
    pdf.line("Контакт / Contact (external id)", external_id)
    pdf.line("Identity (masked)", _masked(identity))
    pdf.line("Issued at (UTC)", canonical_value(now))
    pdf.line("Events", len(events))
    pdf.line("Chain head hash", head)
    pdf.line("Chain verified when issued", "yes" if intact else "NO: the chain is broken (consent_chain_verify_job names the link)")
    for event in events:
        pdf.ln(2)
        pdf.heading(f"Event {event['id']}: {event['action']} {event['purpose']} on {event['channel']}", 10)
        for name in ("occurred_at", "recorded_at", "source_kind", "source_ref", "origin", "text_version", "valid_until", "withdrawal_channel", "detail"):
            pdf.line(name, canonical_value(event[name]))
        if event["source_kind"] == "merge" and event["source_ref"] in voided:
            pdf.line("voided", f"the merge was undone at {canonical_value(voided[event['source_ref']])}: the event no longer counts")
        pdf.line("identifying evidence (masked)", _masked(open_identity(cipher, contact.data_key, event["evidence_identity"])))
        pdf.line("prev_hash", event["prev_hash"])
        pdf.line("hash", event["hash"])
    versions = sorted({event["text_version"] for event in events if event["text_version"]})
    if versions:
        pdf.ln(2)
        pdf.heading("Тексты согласий / Consent texts")
        for version in versions:
            pdf.line(version, texts.text(tenant, version) or "(not among the tenant's consent texts)")
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"contact-{contact_id}.pdf"
    pdf.output(str(path))
    return Certificate(contact_id, path, len(events), head, intact)
