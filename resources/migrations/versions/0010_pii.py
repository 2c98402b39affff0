"""pii: personal data sealed per contact, tenant keys, blind indexes, sealed send addresses

``contacts`` loses its plaintext names, e-mail, phone and chat/user ids for a sealed ``pii`` blob
under the contact's own key (``data_key``), keyed blind indexes and derived non-identifying
columns; ``tenant_keys`` holds each tenant's wrapped keys; ``sends.address`` becomes sealed bytes;
``phone_reachability`` keeps blind indexes instead of the phone and SMSC's lookup id (which
contains it).

The upgrade requires an empty ``contacts`` table (and so no sends or lookups): the store holds
no contacts before this revision outside development, where ``make demo`` rebuilds its home.
Re-import the contacts after upgrading an older development store.

Revision ID: 0010
Revises: 0009
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

PLAINTEXT = (
    ("first_name", sa.String(length=128)),
    ("last_name", sa.String(length=128)),
    ("email", sa.String(length=320)),
    ("phone", sa.String(length=32)),
    ("telegram_chat_id", sa.BigInteger()),
    ("vk_user_id", sa.BigInteger()),
)
BLIND_INDEXES = ("email", "phone", "telegram", "vk")


def upgrade() -> None:
    stored = op.get_bind().execute(sa.text("SELECT count(*) FROM contacts")).scalar_one()
    if stored:
        raise RuntimeError(
            f"revision 0010 seals contacts' personal data and needs an empty contacts table; this store holds {stored}: "
            "export them, empty contacts (and what refers to them), upgrade, and import them again"
        )
    op.create_table(
        "tenant_keys",
        sa.Column("tenant", sa.String(length=64), nullable=False),
        sa.Column("version", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("wrapped_data_key", sa.LargeBinary(), nullable=False),
        sa.Column("wrapped_index_key", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("retired_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("tenant", "version"),
    )
    with op.batch_alter_table("contacts") as batch:
        for name, _ in PLAINTEXT:
            batch.drop_column(name)
        batch.add_column(sa.Column("data_key", sa.LargeBinary(), nullable=True))
        batch.add_column(sa.Column("pii", sa.LargeBinary(), nullable=True))
        for kind in BLIND_INDEXES:
            batch.add_column(sa.Column(f"{kind}_bidx", sa.String(length=32), nullable=True))
        batch.add_column(sa.Column("email_domain", sa.String(length=255), nullable=True))
        batch.add_column(sa.Column("phone_country", sa.String(length=2), nullable=True))
        batch.add_column(sa.Column("timezone", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("erased_at", sa.DateTime(timezone=True), nullable=True))
    for kind in BLIND_INDEXES:
        op.create_index(f"ix_contacts_{kind}_bidx", "contacts", ["tenant", f"{kind}_bidx"])
    with op.batch_alter_table("sends") as batch:
        batch.alter_column("address", type_=sa.LargeBinary(), existing_type=sa.String(length=320), existing_nullable=False,
                           postgresql_using="convert_to(address, 'UTF8')")
    op.drop_index("ix_phone_reachability_lookup", table_name="phone_reachability")
    with op.batch_alter_table("phone_reachability") as batch:
        batch.drop_column("phone")
        batch.drop_column("lookup_id")
        batch.add_column(sa.Column("phone_bidx", sa.String(length=32), nullable=False))
        batch.add_column(sa.Column("lookup_bidx", sa.String(length=32), nullable=True))
    op.create_index("ix_phone_reachability_lookup", "phone_reachability", ["tenant", "lookup_bidx"])


def downgrade() -> None:
    """Back to plaintext columns, empty: sealed data cannot be put back without the keys."""
    op.drop_index("ix_phone_reachability_lookup", table_name="phone_reachability")
    with op.batch_alter_table("phone_reachability") as batch:
        batch.drop_column("lookup_bidx")
        batch.drop_column("phone_bidx")
        batch.add_column(sa.Column("phone", sa.String(length=32), nullable=False))
        batch.add_column(sa.Column("lookup_id", sa.String(length=64), nullable=True))
    op.create_index("ix_phone_reachability_lookup", "phone_reachability", ["tenant", "lookup_id"])
    with op.batch_alter_table("sends") as batch:
        batch.alter_column("address", type_=sa.String(length=320), existing_type=sa.LargeBinary(), existing_nullable=False,
                           postgresql_using="encode(address, 'escape')")
    for kind in BLIND_INDEXES:
        op.drop_index(f"ix_contacts_{kind}_bidx", table_name="contacts")
    with op.batch_alter_table("contacts") as batch:
        for name in ("erased_at", "timezone", "phone_country", "email_domain", *(f"{k}_bidx" for k in BLIND_INDEXES), "pii", "data_key"):
            batch.drop_column(name)
        for name, type_ in PLAINTEXT:
            batch.add_column(sa.Column(name, type_, nullable=True))
    op.drop_table("tenant_keys")
