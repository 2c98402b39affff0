"""sends.dedup_id + dedup_sequences, send_decisions, phone_reachability

Ledger-allocated provider dedup keys (VK random_id), operators' decisions on ambiguous sends, and
the latest HLR lookup per contact's phone.

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

BigIntId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    with op.batch_alter_table("sends") as batch:
        batch.add_column(sa.Column("dedup_id", sa.BigInteger(), nullable=True))
    # A unique index, not a constraint: SQLite adds it without rebuilding the referenced table.
    op.create_index("uq_sends_dedup_id", "sends", ["tenant", "provider", "dedup_id"], unique=True)
    op.create_table(
        "dedup_sequences",
        sa.Column("tenant", sa.String(length=64), nullable=False),
        sa.Column("provider", sa.String(length=32), nullable=False),
        sa.Column("last_value", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("tenant", "provider"),
    )
    op.create_table(
        "send_decisions",
        sa.Column("id", BigIntId, primary_key=True, autoincrement=True),
        sa.Column("tenant", sa.String(length=64), nullable=False),
        sa.Column("send_id", sa.String(length=36), sa.ForeignKey("sends.send_id"), nullable=False),
        sa.Column("decision", sa.String(length=16), nullable=False),
        sa.Column("operator", sa.String(length=128), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("provider_message_id", sa.String(length=256), nullable=True),
        sa.Column("previous_error", sa.Text(), nullable=True),
        sa.Column("run_id", sa.String(length=64), nullable=False),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_send_decisions_tenant_send", "send_decisions", ["tenant", "send_id"])
    op.create_table(
        "phone_reachability",
        sa.Column("tenant", sa.String(length=64), nullable=False),
        sa.Column("contact_id", sa.BigInteger(), sa.ForeignKey("contacts.id"), nullable=False),
        sa.Column("phone", sa.String(length=32), nullable=False),
        sa.Column("reachable", sa.Boolean(), nullable=True),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("network", sa.Text(), nullable=True),
        sa.Column("lookup_id", sa.String(length=64), nullable=True),
        sa.Column("checked_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("tenant", "contact_id"),
    )
    op.create_index("ix_phone_reachability_lookup", "phone_reachability", ["tenant", "lookup_id"])


def downgrade() -> None:
    op.drop_index("ix_phone_reachability_lookup", table_name="phone_reachability")
    op.drop_table("phone_reachability")
    op.drop_index("ix_send_decisions_tenant_send", table_name="send_decisions")
    op.drop_table("send_decisions")
    op.drop_table("dedup_sequences")
    op.drop_index("uq_sends_dedup_id", table_name="sends")
    with op.batch_alter_table("sends") as batch:
        batch.drop_column("dedup_id")
