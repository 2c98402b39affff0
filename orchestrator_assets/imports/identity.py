"""Who an import row is in the store: exact duplicates of stored contacts, rows without an external id.

A row whose normalised phone or e-mail already belongs to a stored contact with another
``external_id`` would make a second contact of one person, who would then get every campaign
twice and whose opt-out on one copy would not stop the other. Such a row is not written; it is
reported (row, column, masked value, and the stored contact's external id, which is the tenant's own
CRM key and no personal data) like any other rejected row.

A row without an external id (a file without that column, or a blank cell) is matched to the
stored contact holding its phone, else its e-mail (phone first: a phone is rarely shared, a family
e-mail often is), and otherwise gets a new id ``auto-<random>``. A random id rather than one derived
from the address: a hash of a phone number is as good as the number to anyone who can enumerate
numbers.

``resolve_against_store`` finds stored contacts by address through their blind indexes
(``contact_pii``): equality on a keyed hash, never the plaintext. Only live contacts own an
address: a merged contact's tombstone keeps its values for the undo, but the person is its
survivor, so a row naming the tombstone is no duplicate of the survivor (``upsert_contacts`` then
leaves the tombstone alone and counts the row ``merged``).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable

import pandas as pd
import sqlalchemy as sa

from orchestrator_assets.contact_pii import INDEX_COLUMNS, INDEXED, blind_index
from policies.masking import mask_value
from resources.opstore_schema import contacts
from resources.pii import TenantCipher, tenant_cipher
from resources.sql import batched_in

MATCH_ORDER = ("phone", "email")  # how a row without an external id finds its stored contact


def _owners_by_index(conn: sa.Connection, tenant: str, kind: str, indexes: Iterable[str | None]) -> dict[str, str]:
    """Blind index (``kind``) → external id of the tenant's oldest live stored contact that has it."""
    owners: dict[str, str] = {}
    for among in batched_in(conn, INDEX_COLUMNS[kind], sorted(index for index in set(indexes) if index is not None)):
        query = (
            sa.select(INDEX_COLUMNS[kind], contacts.c.external_id)
            .where(contacts.c.tenant == tenant, contacts.c.merged_into.is_(None), among)
            .order_by(contacts.c.id.desc())  # the oldest contact wins, as in contact_pii.find_contact_id
        )
        owners.update(dict(conn.execute(query).all()))
    return owners


def survivors(conn: sa.Connection, tenant: str, external_ids: Iterable[str]) -> dict[str, str]:
    """External id of each merged contact among ``external_ids`` → its live survivor's external id
    (followed through later merges)."""
    c = contacts.c
    wanted = sorted({external_id for external_id in external_ids if not _blank(external_id)})
    merged: dict[str, int] = {}
    for among in batched_in(conn, c.external_id, wanted):
        merged.update(dict(conn.execute(sa.select(c.external_id, c.merged_into).where(c.tenant == tenant, c.merged_into.is_not(None), among)).all()))
    rows: dict[int, sa.Row] = {}
    pending = set(merged.values())
    while pending:  # one query per merge generation (a survivor merged in turn), not per row
        found = {row.id: row for row in conn.execute(sa.select(c.id, c.external_id, c.merged_into).where(c.id.in_(sorted(pending))))}
        rows.update(found)
        pending = {row.merged_into for row in found.values() if row.merged_into is not None} - rows.keys()

    def live(contact_id: int) -> str:
        while rows[contact_id].merged_into is not None:
            contact_id = rows[contact_id].merged_into
        return rows[contact_id].external_id

    return {external_id: live(survivor_id) for external_id, survivor_id in merged.items()}


def _blank(value: object) -> bool:
    return value is None or (isinstance(value, float) and pd.isna(value)) or not str(value).strip()


def resolve_against_store(conn: sa.Connection, tenant: str, good: pd.DataFrame) -> tuple[pd.DataFrame, list[dict]]:
    """The rows to write (each with its external id) and the rows refused as store duplicates.

    Returns ``(rows, problems)``: ``problems`` are error rows (``row, column, value, reason``, the
    value masked); a refused row is left out of ``rows`` whole, since writing half of a person is
    worse than asking the operator to fix the file. ``rows`` carries the blind index of each
    row's phone and e-mail (``phone_bidx``, ``email_bidx``), computed here once for the writers.
    """
    rows = good.copy()
    if "external_id" not in rows.columns:
        rows["external_id"] = None
    cipher = tenant_cipher(conn, tenant)
    owners = {}
    for column in MATCH_ORDER:
        kind = INDEXED[column]
        values = rows[column].to_numpy(dtype=object, na_value=None)
        indexes = {value: blind_index(cipher, kind, value) for value in set(values) if value}
        rows[f"{kind}_bidx"] = [indexes.get(value) for value in values]
        stored = _owners_by_index(conn, tenant, kind, indexes.values())
        owners[column] = pd.Series([stored.get(index) for index in rows[f"{kind}_bidx"]], index=rows.index, dtype=object)

    blank = rows["external_id"].map(_blank).to_numpy(dtype=bool)
    if blank.any():
        found = owners[MATCH_ORDER[0]].where(owners[MATCH_ORDER[0]].notna(), owners[MATCH_ORDER[1]])
        rows["external_id"] = rows["external_id"].astype(object).mask(blank, [owner if isinstance(owner, str) else f"auto-{uuid.uuid4().hex}" for owner in found[blank]])
    person = survivors(conn, tenant, rows["external_id"])
    problems, refused = [], set()
    if any(owner.notna().any() for owner in owners.values()):  # a new tenant's first import skips this
        for record, *found in zip(rows.itertuples(index=False), *(owners[column] for column in MATCH_ORDER), strict=True):
            for column, owner in zip(MATCH_ORDER, found, strict=True):
                if isinstance(owner, str) and owner not in (record.external_id, person.get(record.external_id)):
                    refused.add(record.row)
                    problems.append(
                        {
                            "row": record.row,
                            "column": column,
                            "value": mask_value(column, getattr(record, column)),
                            "reason": f"duplicate of stored contact {owner}: it already has this {column}",
                        }
                    )
    return rows[~rows["row"].isin(refused)].reset_index(drop=True), problems
