"""webhook_endpoints, webhook_endpoint_events, webhook_attempts.retry_after_s

Outbound webhook endpoints: failures in a row, a Retry-After pause, auto-disabling and the log of
endpoints disabled and enabled again; each attempt's Retry-After.

Revision ID: 0008
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

BigIntId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    with op.batch_alter_table("webhook_attempts") as batch:
        batch.add_column(sa.Column("retry_after_s", sa.Integer(), nullable=True))
    op.create_table(
        "webhook_endpoints",
        sa.Column("tenant", sa.String(length=64), nullable=False),
        sa.Column("subscription", sa.String(length=64), nullable=False),
        sa.Column("consecutive_failures", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("paused_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("disabled_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("disabled_reason", sa.Text(), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("tenant", "subscription"),
    )
    op.create_table(
        "webhook_endpoint_events",
        sa.Column("id", BigIntId, primary_key=True, autoincrement=True),
        sa.Column("tenant", sa.String(length=64), nullable=False),
        sa.Column("subscription", sa.String(length=64), nullable=False),
        sa.Column("event", sa.String(length=32), nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("consecutive_failures", sa.Integer(), nullable=False),
        sa.Column("actor", sa.String(length=128), nullable=False),
        sa.Column("run_id", sa.String(length=64), nullable=False),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_webhook_endpoint_events_subscription", "webhook_endpoint_events", ["tenant", "subscription"])


def downgrade() -> None:
    op.drop_index("ix_webhook_endpoint_events_subscription", table_name="webhook_endpoint_events")
    op.drop_table("webhook_endpoint_events")
    op.drop_table("webhook_endpoints")
    with op.batch_alter_table("webhook_attempts") as batch:
        batch.drop_column("retry_after_s")
