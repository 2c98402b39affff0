"""campaign_wakeups: when each campaign with deferred messages should run next

Revision ID: 0017
Revises: 0016
"""

import sqlalchemy as sa
from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "campaign_wakeups",
        sa.Column("tenant", sa.String(length=64), primary_key=True),
        sa.Column("campaign", sa.String(length=128), primary_key=True),
        sa.Column("wake_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("deferred", sa.Integer(), nullable=False),
        sa.Column("reasons", sa.String(length=256), nullable=False),
        sa.Column("run_id", sa.String(length=64), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_campaign_wakeups_wake_at", "campaign_wakeups", ["wake_at"])


def downgrade() -> None:
    op.drop_index("ix_campaign_wakeups_wake_at", table_name="campaign_wakeups")
    op.drop_table("campaign_wakeups")
