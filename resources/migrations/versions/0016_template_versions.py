"""template_versions: the content hash of each template version when first seen (immutable versions)

Revision ID: 0016
Revises: 0015
"""

import sqlalchemy as sa
from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "template_versions",
        sa.Column("tenant", sa.String(64), primary_key=True),
        sa.Column("template", sa.String(128), primary_key=True),
        sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("content_hash", sa.String(64), nullable=False),
        sa.Column("first_seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("first_campaign", sa.String(128), nullable=False),
        sa.Column("first_run_id", sa.String(64), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("template_versions")
