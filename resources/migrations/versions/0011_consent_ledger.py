"""consent ledger: typed evidence and a hash chain per contact; the in-place ``consents`` state goes

The current consent state is derived from ``consent_events`` from now on
(``orchestrator_assets/consent_ledger.consent_state``). Events already on record are carried over:
purpose ``marketing`` becomes ``advertising`` (38-FZ art. 18), the old ``source`` becomes ``origin``,
the old free-text ``evidence`` becomes ``detail``, and each contact's events (in id order) are
chained with the same rule the ledger writes with.

Revision ID: 0011
Revises: 0010
"""

import json

import sqlalchemy as sa
from alembic import op

from policies.consent_chain import GENESIS, event_hash

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

BigIntId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
UTC = sa.DateTime(timezone=True)


def _legacy_ref(evidence: str | None) -> tuple[str, str]:
    """(source_kind, source_ref) of a pre-ledger event, from what its evidence JSON names."""
    try:
        named = json.loads(evidence or "{}")
    except ValueError:
        named = {}
    if not isinstance(named, dict):
        named = {}
    if "row" in named:
        return "import", f"{named.get('file') or 'file'}:row {named['row']}"
    for key in ("inbox_id", "send_id", "lookup_id"):
        if key in named:
            return "provider_webhook", f"{key.removesuffix('_id')}:{named[key]}"
    return "operator", "before the consent ledger"


def upgrade() -> None:
    conn = op.get_bind()
    old = sa.table(
        "consent_events",
        *(sa.column(n) for n in ("id", "tenant", "contact_id", "channel", "purpose", "action", "source", "evidence")),
        sa.column("occurred_at", UTC),
        sa.column("recorded_at", UTC),
    )
    legacy = conn.execute(sa.select(old).order_by(old.c.contact_id, old.c.id)).mappings().all()
    op.drop_table("consents")
    op.drop_table("consent_events")
    new = op.create_table(
        "consent_events",
        sa.Column("id", BigIntId, primary_key=True, autoincrement=True),
        sa.Column("tenant", sa.String(64), nullable=False),
        sa.Column("contact_id", sa.BigInteger, sa.ForeignKey("contacts.id"), nullable=False),
        sa.Column("channel", sa.String(32), nullable=False),
        sa.Column("purpose", sa.String(32), nullable=False),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("source_kind", sa.String(32), nullable=False),
        sa.Column("source_ref", sa.String(512), nullable=False),
        sa.Column("origin", sa.String(256)),
        sa.Column("occurred_at", UTC, nullable=False),
        sa.Column("recorded_at", UTC, nullable=False),
        sa.Column("text_version", sa.String(64)),
        sa.Column("valid_until", UTC),
        sa.Column("withdrawal_channel", sa.String(64)),
        sa.Column("evidence_identity", sa.LargeBinary),
        sa.Column("detail", sa.Text),
        sa.Column("prev_hash", sa.String(64), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.UniqueConstraint(
            "tenant", "contact_id", "channel", "purpose", "action", "occurred_at", "source_kind", "source_ref", name="uq_consent_events_evidence"
        ),
        sa.UniqueConstraint("tenant", "contact_id", "prev_hash", name="uq_consent_events_chain"),
    )
    op.create_index("ix_consent_events_subject", "consent_events", ["tenant", "contact_id", "channel", "purpose", "id"])
    heads: dict[int, str] = {}
    rows = []
    for event in legacy:
        kind, ref = _legacy_ref(event["evidence"])
        row = {
            "tenant": event["tenant"], "contact_id": event["contact_id"], "channel": event["channel"],
            "purpose": "advertising" if event["purpose"] == "marketing" else event["purpose"], "action": event["action"],
            "source_kind": kind, "source_ref": ref, "origin": event["source"], "occurred_at": event["occurred_at"],
            "recorded_at": event["recorded_at"], "text_version": None, "valid_until": None, "withdrawal_channel": None,
            "evidence_identity": None, "detail": event["evidence"], "prev_hash": heads.get(event["contact_id"], GENESIS),
        }  # fmt: skip
        row["hash"] = heads[event["contact_id"]] = event_hash(row["prev_hash"], row)
        rows.append(row)
    if rows:
        op.bulk_insert(new, rows)


def downgrade() -> None:
    raise NotImplementedError("the consent ledger cannot be folded back into an in-place state table without losing its proof")
