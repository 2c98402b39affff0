"""trigger_events: occurrences of what can start a trigger campaign (a /start, a message_allow)

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

BigIntId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "trigger_events",
        sa.Column("id", BigIntId, primary_key=True, autoincrement=True),
        sa.Column("tenant", sa.String(length=64), nullable=False),
        sa.Column("event", sa.String(length=32), nullable=False),
        sa.Column("contact_id", sa.BigInteger(), sa.ForeignKey("contacts.id"), nullable=False),
        sa.Column("inbox_id", sa.BigInteger(), nullable=False),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("tenant", "event", "inbox_id", name="uq_trigger_events_occurrence"),
    )
    op.create_index("ix_trigger_events_tenant_id", "trigger_events", ["tenant", "id"])


def downgrade() -> None:
    op.drop_index("ix_trigger_events_tenant_id", table_name="trigger_events")
    op.drop_table("trigger_events")
