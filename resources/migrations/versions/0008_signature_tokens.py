"""signature_tokens: Mailgun signature tokens seen, shared by every gateway worker

Revision ID: 0008
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "signature_tokens",
        sa.Column("tenant", sa.String(length=64), primary_key=True),
        sa.Column("provider", sa.String(length=32), primary_key=True),
        sa.Column("token", sa.String(length=256), primary_key=True),
        sa.Column("event_key", sa.String(length=256), nullable=False),
        sa.Column("seen_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_signature_tokens_seen_at", "signature_tokens", ["seen_at"])


def downgrade() -> None:
    op.drop_index("ix_signature_tokens_seen_at", table_name="signature_tokens")
    op.drop_table("signature_tokens")
