"""A few members of a segment, for an operator to recognise it, with personal data masked.

The sealed fields are opened with the tenant's key (``resources/pii.py``) and at once masked
(``policies/masking.py``): an operator sees ``i***@mail.ru`` and ``+7 916 ***-**-67``, enough to
tell the segment is the one meant, never enough to contact anyone.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from orchestrator_assets.tables import markdown_table
from policies.masking import mask_value
from resources.opstore_schema import contacts
from resources.pii import TenantCipher

SAMPLE_SIZE = 5
SHOWN = ("contact_id", "first_name", "email", "phone", "city", "language")


def masked_sample(conn: sa.Connection, cipher: TenantCipher, ids: sa.Select, size: int = SAMPLE_SIZE) -> list[dict[str, Any]]:
    """The first ``size`` contacts (by id) among ``ids``, their personal data masked."""
    query = (
        sa.select(contacts.c.id, contacts.c.city, contacts.c.language, contacts.c.data_key, contacts.c.pii)
        .where(contacts.c.id.in_(ids))
        .order_by(contacts.c.id)
        .limit(size)
    )
    sample = []
    for row in conn.execute(query):
        personal = cipher.open(row.data_key, row.pii)
        masked = {field: mask_value(field, personal.get(field)) for field in ("first_name", "email", "phone")}
        sample.append({"contact_id": row.id, **masked, "city": row.city, "language": row.language})
    return sample


def sample_table(sample: list[dict[str, Any]]) -> str:
    return markdown_table(list(SHOWN), [[row[field] for field in SHOWN] for row in sample], empty="No contact matches.")
