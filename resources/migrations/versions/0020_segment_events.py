"""segment_events: who entered or left a segment at each materialisation (segment_entered triggers)

Revision ID: 0020
Revises: 0019
"""

import sqlalchemy as sa
from alembic import op

revision = "0020"
down_revision = "0019"
branch_labels = None
depends_on = None

BigIntId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "segment_events",
        sa.Column("id", BigIntId, primary_key=True, autoincrement=True),
        sa.Column("tenant", sa.String(length=64), nullable=False),
        sa.Column("segment", sa.String(length=128), nullable=False),
        sa.Column("contact_id", sa.BigInteger(), sa.ForeignKey("contacts.id"), nullable=False),
        sa.Column("change", sa.String(length=8), nullable=False),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_segment_events_tenant_id", "segment_events", ["tenant", "id"])
    op.create_index("ix_segment_events_contact", "segment_events", ["contact_id"])


def downgrade() -> None:
    op.drop_index("ix_segment_events_contact", table_name="segment_events")
    op.drop_index("ix_segment_events_tenant_id", table_name="segment_events")
    op.drop_table("segment_events")
