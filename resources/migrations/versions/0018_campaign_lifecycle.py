"""campaign_states (pause / resume / cancel) and trigger_events.event wide enough for custom events

A campaign's state is one row per (tenant, campaign), written by campaign_control_job; no row means
active. ``trigger_events.event`` grows from 32 to 160 characters: a custom event is recorded as
``custom:<name>`` with a name of up to 128.

Revision ID: 0018
Revises: 0017
"""

import sqlalchemy as sa
from alembic import op

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "campaign_states",
        sa.Column("tenant", sa.String(length=64), primary_key=True),
        sa.Column("campaign", sa.String(length=128), primary_key=True),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("actor", sa.String(length=128), nullable=False),
        sa.Column("changed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("run_id", sa.String(length=64)),
    )
    with op.batch_alter_table("trigger_events") as batch:
        batch.alter_column("event", existing_type=sa.String(length=32), type_=sa.String(length=160), existing_nullable=False)


def downgrade() -> None:
    with op.batch_alter_table("trigger_events") as batch:
        batch.alter_column("event", existing_type=sa.String(length=160), type_=sa.String(length=32), existing_nullable=False)
    op.drop_table("campaign_states")
