"""Tables of the operational store (SQLAlchemy Core).

The operational store holds the current truth that sends depend on: contacts, consents,
segment membership, the send ledger, deliveries and the webhook inbox. Every table carries
``tenant`` and every unique key starts with it, so one tenant can never see or collide with
another's rows. Alembic migrations in ``resources/migrations`` create exactly these tables.
"""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

# An auto-increment key that SQLite also accepts (SQLite only auto-increments INTEGER).
BigIntId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
UTCDateTime = sa.DateTime(timezone=True)

contacts = sa.Table(
    "contacts",
    metadata,
    sa.Column("id", BigIntId, primary_key=True, autoincrement=True),
    sa.Column("tenant", sa.String(64), nullable=False),
    sa.Column("external_id", sa.String(128), nullable=False),
    sa.Column("first_name", sa.String(128)),
    sa.Column("last_name", sa.String(128)),
    sa.Column("email", sa.String(320)),
    sa.Column("phone", sa.String(32)),
    sa.Column("telegram_chat_id", sa.BigInteger),
    sa.Column("vk_user_id", sa.BigInteger),
    sa.Column("city", sa.String(128)),
    sa.Column("language", sa.String(8)),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
    sa.UniqueConstraint("tenant", "external_id", name="uq_contacts_tenant_external_id"),
)

consents = sa.Table(
    "consents",
    metadata,
    sa.Column("id", BigIntId, primary_key=True, autoincrement=True),
    sa.Column("tenant", sa.String(64), nullable=False),
    sa.Column("contact_id", sa.BigInteger, sa.ForeignKey("contacts.id"), nullable=False),
    sa.Column("channel", sa.String(32), nullable=False),
    sa.Column("purpose", sa.String(64), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),  # granted | withdrawn
    sa.Column("source", sa.String(256), nullable=False),
    sa.Column("evidence", sa.Text),
    sa.Column("granted_at", UTCDateTime),
    sa.Column("withdrawn_at", UTCDateTime),
    sa.Column("updated_at", UTCDateTime, nullable=False),
    sa.UniqueConstraint("tenant", "contact_id", "channel", "purpose", name="uq_consents_subject"),
)

consent_events = sa.Table(
    "consent_events",
    metadata,
    sa.Column("id", BigIntId, primary_key=True, autoincrement=True),
    sa.Column("tenant", sa.String(64), nullable=False),
    sa.Column("contact_id", sa.BigInteger, sa.ForeignKey("contacts.id"), nullable=False),
    sa.Column("channel", sa.String(32), nullable=False),
    sa.Column("purpose", sa.String(64), nullable=False),
    sa.Column("action", sa.String(16), nullable=False),  # grant | withdraw
    sa.Column("source", sa.String(256), nullable=False),
    sa.Column("evidence", sa.Text),
    sa.Column("occurred_at", UTCDateTime, nullable=False),
    sa.Column("recorded_at", UTCDateTime, nullable=False),
    sa.UniqueConstraint(
        "tenant", "contact_id", "channel", "purpose", "action", "occurred_at", "source", name="uq_consent_events_fact"
    ),
)

segment_members = sa.Table(
    "segment_members",
    metadata,
    sa.Column("tenant", sa.String(64), primary_key=True),
    sa.Column("segment", sa.String(128), primary_key=True),
    sa.Column("contact_id", sa.BigInteger, sa.ForeignKey("contacts.id"), primary_key=True),
    sa.Column("materialized_at", UTCDateTime, nullable=False),
)

sends = sa.Table(
    "sends",
    metadata,
    sa.Column("send_id", sa.String(36), primary_key=True),
    sa.Column("tenant", sa.String(64), nullable=False),
    sa.Column("campaign", sa.String(128), nullable=False),
    sa.Column("step", sa.String(64), nullable=False),
    sa.Column("contact_id", sa.BigInteger, sa.ForeignKey("contacts.id"), nullable=False),
    sa.Column("channel", sa.String(32), nullable=False),
    sa.Column("provider", sa.String(32), nullable=False),
    sa.Column("address", sa.String(320), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),  # claimed | sent | failed | ambiguous
    sa.Column("run_id", sa.String(64), nullable=False),  # the run that claimed the row
    sa.Column("provider_message_id", sa.String(256)),
    sa.Column("error_class", sa.String(32)),  # unreachable | transient | rate_limited | rejected
    sa.Column("error", sa.Text),
    sa.Column("claimed_at", UTCDateTime, nullable=False),
    sa.Column("finished_at", UTCDateTime),
    sa.Column("warehouse_synced_at", UTCDateTime),
    sa.UniqueConstraint("tenant", "campaign", "step", "contact_id", "channel", name="uq_sends_ledger_key"),
    sa.Index("ix_sends_provider_message", "tenant", "provider", "provider_message_id"),
)

deliveries = sa.Table(
    "deliveries",
    metadata,
    sa.Column("send_id", sa.String(36), sa.ForeignKey("sends.send_id"), primary_key=True),
    sa.Column("tenant", sa.String(64), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("status_rank", sa.Integer, nullable=False),
    sa.Column("reason", sa.Text),
    sa.Column("last_event_at", UTCDateTime, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
)

webhook_inbox = sa.Table(
    "webhook_inbox",
    metadata,
    sa.Column("id", BigIntId, primary_key=True, autoincrement=True),
    sa.Column("tenant", sa.String(64), nullable=False),
    sa.Column("provider", sa.String(32), nullable=False),
    sa.Column("account", sa.String(128), nullable=False),
    sa.Column("event_key", sa.String(256), nullable=False),
    sa.Column("payload", sa.Text, nullable=False),
    sa.Column("received_at", UTCDateTime, nullable=False),
    sa.Column("processed_at", UTCDateTime),
    sa.Column("error", sa.Text),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("next_attempt_at", UTCDateTime),  # retry not before this (exponential backoff)
    sa.Column("dead_lettered_at", UTCDateTime),  # gave up; an operator re-drives it
    sa.UniqueConstraint("tenant", "provider", "event_key", name="uq_webhook_inbox_event"),
    sa.Index("ix_webhook_inbox_tenant_id", "tenant", "id"),
)

# Provider accounts a provider told us to stop using (GreenAPI ``yellowCard``: WhatsApp restricted
# the number for spam). The dispatch engine refuses to send through a blocked account until an
# operator clears the row.
blocked_senders = sa.Table(
    "blocked_senders",
    metadata,
    sa.Column("tenant", sa.String(64), primary_key=True),
    sa.Column("provider", sa.String(32), primary_key=True),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("blocked_at", UTCDateTime, nullable=False),
)
