"""Every plaintext read and write of contacts' personal data that matching and merging make.

Kept in one module so that encrypting contacts (``orchestrator_assets.contact_pii``) changes only
this one: matching needs names and addresses in memory, a merge fills the survivor's empty fields
from the merged contact and its undo empties them again. Nothing here returns or stores a value
that leaves the process except masked (``masked_people``).
"""

from __future__ import annotations

import sqlalchemy as sa

from orchestrator_assets.merges.matching import Person
from policies.masking import mask_value
from resources.opstore_schema import contacts

# Fields a merge fills on the survivor where it has none (the tombstone keeps its own values).
FILLABLE = ("first_name", "last_name", "email", "phone", "telegram_chat_id", "vk_user_id", "city", "language")
SHOWN = ("first_name", "last_name", "phone", "email")


def live_people(conn: sa.Connection, tenant: str) -> list[Person]:
    """The tenant's contacts that are not tombstones, with what matching compares."""
    query = sa.select(contacts.c.id, contacts.c.city, *(contacts.c[f] for f in SHOWN)).where(contacts.c.tenant == tenant, contacts.c.merged_into.is_(None))
    return [Person(row.id, row.first_name, row.last_name, row.email, row.phone, row.city) for row in conn.execute(query)]


def masked_people(conn: sa.Connection, tenant: str, ids: list[int]) -> dict[int, str]:
    """``id → "I*** P***, +7 916 ***-**-67, i***@gmail.com"``: enough to recognise, not to contact."""
    query = sa.select(contacts.c.id, *(contacts.c[f] for f in SHOWN)).where(contacts.c.tenant == tenant, contacts.c.id.in_(ids))
    return {row.id: ", ".join(str(mask_value(f, row._mapping[f])) for f in SHOWN if row._mapping[f]) or "—" for row in conn.execute(query)}


def fill_empty_fields(conn: sa.Connection, survivor_id: int, merged_id: int) -> list[str]:
    """Copy the merged contact's values into the survivor's empty fields; the names of the fields
    filled (which is all the undo needs: they were empty before)."""
    rows = {row.id: row._mapping for row in conn.execute(sa.select(contacts).where(contacts.c.id.in_([survivor_id, merged_id])))}
    survivor, merged = rows[survivor_id], rows[merged_id]
    filled = [f for f in FILLABLE if survivor[f] is None and merged[f] is not None]
    if filled:
        conn.execute(sa.update(contacts).where(contacts.c.id == survivor_id).values({f: merged[f] for f in filled}))
    return filled


def empty_filled_fields(conn: sa.Connection, survivor_id: int, merged_id: int, fields: list[str]) -> list[str]:
    """Empty the survivor's ``fields`` again where they still hold the merged contact's value;
    returns the fields changed since the merge, which are left as they are."""
    rows = {row.id: row._mapping for row in conn.execute(sa.select(contacts).where(contacts.c.id.in_([survivor_id, merged_id])))}
    survivor, merged = rows[survivor_id], rows[merged_id]
    unchanged = [f for f in fields if survivor[f] == merged[f]]
    if unchanged:
        conn.execute(sa.update(contacts).where(contacts.c.id == survivor_id).values(dict.fromkeys(unchanged)))
    return [f for f in fields if f not in unchanged]
