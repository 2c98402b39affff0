"""experiment_assignments and experiment_looks: A/B tests' arms and verdicts

Revision ID: 0019
Revises: 0018
"""

import sqlalchemy as sa
from alembic import op

revision = "0019"
down_revision = "0018"
branch_labels = None
depends_on = None

BigIntId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "experiment_assignments",
        sa.Column("tenant", sa.String(length=64), primary_key=True),
        sa.Column("campaign", sa.String(length=128), primary_key=True),
        sa.Column("contact_id", sa.BigInteger(), sa.ForeignKey("contacts.id"), primary_key=True),
        sa.Column("arm", sa.String(length=32), nullable=False),
        sa.Column("assigned_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "experiment_looks",
        sa.Column("id", BigIntId, primary_key=True, autoincrement=True),
        sa.Column("tenant", sa.String(length=64), nullable=False),
        sa.Column("campaign", sa.String(length=128), nullable=False),
        sa.Column("look", sa.Integer(), nullable=False),
        sa.Column("looks", sa.Integer(), nullable=False),
        sa.Column("decision", sa.String(length=128), nullable=False),
        sa.Column("winner", sa.String(length=32)),
        sa.Column("final", sa.Boolean(), nullable=False),
        sa.Column("rollout_variant", sa.String(length=32)),
        sa.Column("run_id", sa.String(length=64), nullable=False),
        sa.Column("evaluated_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("tenant", "campaign", "look", name="uq_experiment_looks_look"),
    )


def downgrade() -> None:
    op.drop_table("experiment_looks")
    op.drop_table("experiment_assignments")
