"""Erasure of contacts on request (152-FZ art. 21, GDPR art. 17), by crypto-shredding.

A contact's personal data is sealed with its own key (``resources/pii.py``): the blob in
``contacts.pii``, its send addresses, the identifying part of its consent evidence, its import
history. Deleting that one key makes every copy unreadable at once, wherever it sits and in every
backup taken afterwards, without hunting for the copies. The blob and the blind indexes go too (a
blind index would still tell whether a known e-mail is in the store), and so does everything else
that describes the person (city, language, time zone, derived columns, segment memberships, phone
checks, duplicate candidates).

What stays is the row's id and the tenant's external id, pseudonymous: sends, deliveries,
warehouse events and billing still count the contact, so a campaign's funnel and the invoice add up
after an erasure exactly as before; and a repeated request is recognised as done. Consent events
stay, as the proof that every past message was lawful, with their identifying part unreadable.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

import sqlalchemy as sa

from resources.audit import record_audit
from resources.opstore_schema import contact_duplicate_candidates, contacts, phone_reachability, segment_events, segment_members

ERASE_ACTION = "contact.erase"
# Every column of ``contacts`` that describes the person; what is left is id, tenant, external id and times.
ERASED_COLUMNS = (
    "data_key", "pii", "email_bidx", "phone_bidx", "telegram_bidx", "vk_bidx",
    "email_domain", "phone_country", "city", "language", "timezone",
)  # fmt: skip
# Rows that exist only to describe, target or match the person, deleted with the key.
DESCRIBING_TABLES = (segment_members, segment_events, phone_reachability, contact_duplicate_candidates)


class ErasureError(ValueError):
    """The request names contacts the tenant does not have; nothing was erased."""

    def __init__(self, unknown: list[str]):
        super().__init__(f"no contact with external id {', '.join(unknown)}")
        self.unknown = unknown


def contact_columns(table: sa.Table) -> list[sa.Column]:
    """The columns of ``table`` that name a contact (foreign keys to ``contacts.id``)."""
    return [column for column in table.c if any(key.column is contacts.c.id for key in column.foreign_keys)]


@dataclass(frozen=True)
class Erasure:
    external_id: str
    contact_id: int
    outcome: str  # erased | already_erased
    erased_at: dt.datetime


def erase_contacts(
    conn: sa.Connection, tenant: str, external_ids: Sequence[str], *, actor: str, reason: str, run_id: str, now: dt.datetime
) -> list[Erasure]:
    """Crypto-shred the tenant's contacts ``external_ids`` in the caller's transaction, one audit row each.

    All or nothing: an unknown id fails the whole request (``ErasureError``) before anything
    changes, since an operator who mistyped one id must not be told the request was carried out. A
    contact erased before is reported ``already_erased`` and left alone (no second audit row).
    """
    wanted = list(dict.fromkeys(external_ids))
    rows = {
        row.external_id: row
        for row in conn.execute(
            sa.select(contacts.c.id, contacts.c.external_id, contacts.c.erased_at).where(contacts.c.tenant == tenant, contacts.c.external_id.in_(wanted))
        )
    }
    if unknown := [external_id for external_id in wanted if external_id not in rows]:
        raise ErasureError(unknown)
    done: list[Erasure] = []
    for external_id in wanted:
        row = rows[external_id]
        if row.erased_at is not None:
            done.append(Erasure(external_id, row.id, "already_erased", row.erased_at))
            continue
        conn.execute(
            sa.update(contacts).where(contacts.c.id == row.id).values({**dict.fromkeys(ERASED_COLUMNS), "erased_at": now, "updated_at": now})
        )
        for table in DESCRIBING_TABLES:
            conn.execute(sa.delete(table).where(table.c.tenant == tenant, sa.or_(*(column == row.id for column in contact_columns(table)))))
        params = {"external_id": external_id, "contact_id": row.id, "reason": reason}
        record_audit(conn, tenant=tenant, actor=actor, action=ERASE_ACTION, params=params, run_id=run_id, now=now)
        done.append(Erasure(external_id, row.id, "erased", now))
    return done
