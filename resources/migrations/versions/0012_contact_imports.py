"""contact_imports and contact_import_changes: import ids and the history a rollback restores from;
an index on contact_id of every table referencing contacts, so removing contacts does not scan them

Revision ID: 0012
Revises: 0011
"""

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

BigIntId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
REFERENCING_CONTACTS = ("consent_events", "segment_members", "sends", "trigger_events")


def upgrade() -> None:
    op.create_table(
        "contact_imports",
        sa.Column("id", BigIntId, primary_key=True, autoincrement=True),
        sa.Column("tenant", sa.String(length=64), nullable=False),
        sa.Column("source_file", sa.String(length=512), nullable=False),
        sa.Column("content_sha256", sa.String(length=64), nullable=True),
        sa.Column("mode", sa.String(length=32), nullable=False),
        sa.Column("rows_read", sa.Integer(), nullable=False),
        sa.Column("rows_valid", sa.Integer(), nullable=False),
        sa.Column("rows_rejected", sa.Integer(), nullable=False),
        sa.Column("rows_inserted", sa.Integer(), nullable=False),
        sa.Column("rows_updated", sa.Integer(), nullable=False),
        sa.Column("rows_unchanged", sa.Integer(), nullable=False),
        sa.Column("rows_merged", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.String(length=64), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("committed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("rolled_back_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index("ix_contact_imports_tenant_id", "contact_imports", ["tenant", "id"])
    op.create_table(
        "contact_import_changes",
        sa.Column("import_id", sa.BigInteger(), sa.ForeignKey("contact_imports.id"), primary_key=True),
        sa.Column("contact_id", sa.BigInteger(), primary_key=True),
        sa.Column("action", sa.String(length=16), nullable=False),
        sa.Column("previous", sa.LargeBinary(), nullable=True),
        sa.Column("previous_updated_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index("ix_contact_import_changes_contact", "contact_import_changes", ["contact_id", "import_id"])
    for table in REFERENCING_CONTACTS:
        op.create_index(f"ix_{table}_contact", table, ["contact_id"])


def downgrade() -> None:
    for table in REFERENCING_CONTACTS:
        op.drop_index(f"ix_{table}_contact", table_name=table)
    op.drop_index("ix_contact_import_changes_contact", table_name="contact_import_changes")
    op.drop_table("contact_import_changes")
    op.drop_index("ix_contact_imports_tenant_id", table_name="contact_imports")
    op.drop_table("contact_imports")
