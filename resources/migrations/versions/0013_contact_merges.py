"""contact merges: tombstones (contacts.merged_into), duplicate candidates, merges and what each moved

Revision ID: 0013
Revises: 0012
"""

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

BigIntId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    with op.batch_alter_table("contacts") as batch:
        batch.add_column(sa.Column("merged_into", sa.BigInteger(), nullable=True))
    op.create_table(
        "contact_duplicate_candidates",
        sa.Column("tenant", sa.String(length=64), primary_key=True),
        sa.Column("contact_id", sa.BigInteger(), sa.ForeignKey("contacts.id"), primary_key=True),
        sa.Column("other_id", sa.BigInteger(), sa.ForeignKey("contacts.id"), primary_key=True),
        sa.Column("score", sa.Integer(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("found_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "contact_merges",
        sa.Column("id", BigIntId, primary_key=True, autoincrement=True),
        sa.Column("tenant", sa.String(length=64), nullable=False),
        sa.Column("survivor_id", sa.BigInteger(), sa.ForeignKey("contacts.id"), nullable=False),
        sa.Column("merged_id", sa.BigInteger(), sa.ForeignKey("contacts.id"), nullable=False),
        sa.Column("score", sa.Integer(), nullable=True),
        sa.Column("operator", sa.String(length=128), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("run_id", sa.String(length=64), nullable=False),
        sa.Column("merged_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("undone_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("undone_by", sa.String(length=128), nullable=True),
        sa.Column("undo_run_id", sa.String(length=64), nullable=True),
    )
    op.create_index("ix_contact_merges_tenant_merged", "contact_merges", ["tenant", "merged_id"])
    op.create_table(
        "contact_merge_moves",
        sa.Column("id", BigIntId, primary_key=True, autoincrement=True),
        sa.Column("merge_id", sa.BigInteger(), sa.ForeignKey("contact_merges.id"), nullable=False),
        sa.Column("tenant", sa.String(length=64), nullable=False),
        sa.Column("table_name", sa.String(length=64), nullable=False),
        sa.Column("row_key", sa.String(length=256), nullable=False),
        sa.Column("action", sa.String(length=16), nullable=False),
        sa.Column("before", sa.Text(), nullable=True),
    )
    op.create_index("ix_contact_merge_moves_merge", "contact_merge_moves", ["merge_id"])


def downgrade() -> None:
    op.drop_index("ix_contact_merge_moves_merge", table_name="contact_merge_moves")
    op.drop_table("contact_merge_moves")
    op.drop_index("ix_contact_merges_tenant_merged", table_name="contact_merges")
    op.drop_table("contact_merges")
    op.drop_table("contact_duplicate_candidates")
    with op.batch_alter_table("contacts") as batch:
        batch.drop_column("merged_into")
