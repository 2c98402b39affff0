"""Tables of the operational store (SQLAlchemy Core).

The operational store holds the current truth that sends depend on: contacts, the consent
ledger, segment membership, the send ledger (with its dedup id sequences and
operators' decisions on ambiguous sends), deliveries, blocked senders, phone reachability, the
webhook inbox, trigger events, and the outbox of tenants' webhooks with its attempts. Every table
carries ``tenant`` and every unique key starts with it, so one tenant can never see or collide with
another's rows. Alembic migrations in ``resources/migrations`` create exactly these tables.
"""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

# An auto-increment key that SQLite also accepts (SQLite only auto-increments INTEGER).
BigIntId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
UTCDateTime = sa.DateTime(timezone=True)

# Personal data is sealed per contact (resources/pii.py): ``data_key`` is the contact's own key,
# wrapped by the tenant's data key; ``pii`` is the AES-GCM of its names, e-mail, phone (+ extension),
# Telegram chat id and VK user id. ``*_bidx`` are keyed blind indexes for equality lookups;
# ``email_domain`` and ``phone_country`` are derived, non-identifying columns for segment rules.
# Erasure deletes ``data_key`` (and nulls ``pii`` and the indexes) and stamps ``erased_at``.
contacts = sa.Table(
    "contacts",
    metadata,
    sa.Column("id", BigIntId, primary_key=True, autoincrement=True),
    sa.Column("tenant", sa.String(64), nullable=False),
    sa.Column("external_id", sa.String(128), nullable=False),
    sa.Column("data_key", sa.LargeBinary),
    sa.Column("pii", sa.LargeBinary),
    sa.Column("email_bidx", sa.String(32)),
    sa.Column("phone_bidx", sa.String(32)),
    sa.Column("telegram_bidx", sa.String(32)),
    sa.Column("vk_bidx", sa.String(32)),
    sa.Column("email_domain", sa.String(255)),
    sa.Column("phone_country", sa.String(2)),
    sa.Column("city", sa.String(128)),
    sa.Column("language", sa.String(8)),
    sa.Column("timezone", sa.String(64)),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
    sa.Column("erased_at", UTCDateTime),
    # Set when the contact was merged into another (contact_merges): a tombstone, kept so that rows
    # left pointing at it (warehouse events, colliding sends, its consent history) still add up.
    sa.Column("merged_into", sa.BigInteger),
    # The tenant's custom fields (tenants.yaml custom_fields) as one JSON object text, values in
    # canonical spelling (orchestrator_assets/imports/custom_fields.py).
    sa.Column("custom_fields", sa.Text),
    sa.UniqueConstraint("tenant", "external_id", name="uq_contacts_tenant_external_id"),
    sa.Index("ix_contacts_email_bidx", "tenant", "email_bidx"),
    sa.Index("ix_contacts_phone_bidx", "tenant", "phone_bidx"),
    sa.Index("ix_contacts_telegram_bidx", "tenant", "telegram_bidx"),
    sa.Index("ix_contacts_vk_bidx", "tenant", "vk_bidx"),
)

# Each tenant's data key and blind-index key, wrapped by the master key, one row per version.
# The newest non-retired version wraps new contact keys; a key rotation adds a version, re-wraps
# and then sets ``retired_at`` on the old one, whose wrapped contact keys no longer open.
tenant_keys = sa.Table(
    "tenant_keys",
    metadata,
    sa.Column("tenant", sa.String(64), primary_key=True),
    sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("wrapped_data_key", sa.LargeBinary, nullable=False),
    sa.Column("wrapped_index_key", sa.LargeBinary, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("retired_at", UTCDateTime),
)

consent_events = sa.Table(
    # The consent ledger: append-only, one hash chain per contact (policies/consent_chain.py), written
    # only by orchestrator_assets/consent_ledger.append. The current state is derived from it.
    "consent_events",
    metadata,
    sa.Column("id", BigIntId, primary_key=True, autoincrement=True),
    sa.Column("tenant", sa.String(64), nullable=False),
    sa.Column("contact_id", sa.BigInteger, sa.ForeignKey("contacts.id"), nullable=False),
    sa.Column("channel", sa.String(32), nullable=False),  # "any" for processing
    sa.Column("purpose", sa.String(32), nullable=False),  # processing | advertising | transactional
    sa.Column("action", sa.String(16), nullable=False),  # grant | withdraw
    sa.Column("source_kind", sa.String(32), nullable=False),  # policies.consent_purposes.SourceKind
    sa.Column("source_ref", sa.String(512), nullable=False),  # file + row, inbox row, send id, …
    sa.Column("origin", sa.String(256)),  # where the person gave it, as the source states (form URL, CRM)
    sa.Column("occurred_at", UTCDateTime, nullable=False),
    sa.Column("recorded_at", UTCDateTime, nullable=False),
    sa.Column("text_version", sa.String(64)),  # sha256 of the exact consent text (consent_texts.yaml)
    sa.Column("valid_until", UTCDateTime),
    sa.Column("withdrawal_channel", sa.String(64)),
    sa.Column("evidence_identity", sa.LargeBinary),  # ip, user agent, chat id, phone: sealed with the contact's key
    sa.Column("detail", sa.Text),  # non-identifying words of the source (a provider's reason)
    sa.Column("prev_hash", sa.String(64), nullable=False),
    sa.Column("hash", sa.String(64), nullable=False),
    sa.UniqueConstraint(
        "tenant", "contact_id", "channel", "purpose", "action", "occurred_at", "source_kind", "source_ref", name="uq_consent_events_evidence"
    ),
    # One successor per event: two writers can never fork a contact's chain.
    sa.UniqueConstraint("tenant", "contact_id", "prev_hash", name="uq_consent_events_chain"),
    sa.Index("ix_consent_events_subject", "tenant", "contact_id", "channel", "purpose", "id"),
)

segment_members = sa.Table(
    "segment_members",
    metadata,
    sa.Column("tenant", sa.String(64), primary_key=True),
    sa.Column("segment", sa.String(128), primary_key=True),
    sa.Column("contact_id", sa.BigInteger, sa.ForeignKey("contacts.id"), primary_key=True),
    sa.Column("materialized_at", UTCDateTime, nullable=False),
)

# Changes of segment membership, one row per contact that entered or left a segment at a
# materialisation (orchestrator_assets/segments.py); campaigns triggered on segment_entered read
# them in id order (sensors/segment_triggers.py).
segment_events = sa.Table(
    "segment_events",
    metadata,
    sa.Column("id", BigIntId, primary_key=True, autoincrement=True),
    sa.Column("tenant", sa.String(64), nullable=False),
    sa.Column("segment", sa.String(128), nullable=False),
    sa.Column("contact_id", sa.BigInteger, sa.ForeignKey("contacts.id"), nullable=False),
    sa.Column("change", sa.String(8), nullable=False),  # entered | left
    sa.Column("occurred_at", UTCDateTime, nullable=False),
    sa.Index("ix_segment_events_tenant_id", "tenant", "id"),
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
    sa.Column("address", sa.LargeBinary, nullable=False),  # sealed with the contact's key (resources/pii.py)
    sa.Column("status", sa.String(16), nullable=False),  # claimed | sent | failed | ambiguous
    sa.Column("run_id", sa.String(64), nullable=False),  # the run that claimed the row
    sa.Column("provider_message_id", sa.String(256)),
    sa.Column("error_class", sa.String(32)),  # unreachable | transient | rate_limited | rejected
    sa.Column("error", sa.Text),
    sa.Column("claimed_at", UTCDateTime, nullable=False),
    sa.Column("finished_at", UTCDateTime),
    sa.Column("warehouse_synced_at", UTCDateTime),
    # The provider's dedup key where it wants a small integer (VK random_id): allocated from
    # ``dedup_sequences`` when the row is claimed, so it never collides and a resume re-uses it.
    sa.Column("dedup_id", sa.BigInteger),
    sa.UniqueConstraint("tenant", "campaign", "step", "contact_id", "channel", name="uq_sends_ledger_key"),
    sa.Index("uq_sends_dedup_id", "tenant", "provider", "dedup_id", unique=True),
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

# When each scheduled campaign with deferred messages (quiet hours, a local-time schedule, the
# tenant's daily cap) should run next: rewritten by every run of the campaign, deleted once nothing
# waits. The deferred-campaign sensor launches the run when ``wake_at`` comes (docs/policies.md).
campaign_wakeups = sa.Table(
    "campaign_wakeups",
    metadata,
    sa.Column("tenant", sa.String(64), primary_key=True),
    sa.Column("campaign", sa.String(128), primary_key=True),
    sa.Column("wake_at", UTCDateTime, nullable=False),
    sa.Column("deferred", sa.Integer, nullable=False),  # messages waiting, when the row was written
    sa.Column("reasons", sa.String(256), nullable=False),  # their reason codes, comma-separated
    sa.Column("run_id", sa.String(64), nullable=False),  # the run that deferred them
    sa.Column("updated_at", UTCDateTime, nullable=False),
    sa.Index("ix_campaign_wakeups_wake_at", "wake_at"),
)

# What people did that can start a trigger campaign for them (policies.campaigns.TriggerEvent: a
# Telegram /start, a VK message_allow, ``custom:<name>`` for an event the tenant posted), one row
# per occurrence, written by delivery processing with the inbox row it came from. The trigger
# sensor reads it by id with a cursor.
trigger_events = sa.Table(
    "trigger_events",
    metadata,
    sa.Column("id", BigIntId, primary_key=True, autoincrement=True),
    sa.Column("tenant", sa.String(64), nullable=False),
    sa.Column("event", sa.String(160), nullable=False),
    sa.Column("contact_id", sa.BigInteger, sa.ForeignKey("contacts.id"), nullable=False),
    sa.Column("inbox_id", sa.BigInteger, nullable=False),  # webhook_inbox.id: the evidence
    sa.Column("occurred_at", UTCDateTime, nullable=False),
    sa.Column("recorded_at", UTCDateTime, nullable=False),
    sa.UniqueConstraint("tenant", "event", "inbox_id", name="uq_trigger_events_occurrence"),
    sa.Index("ix_trigger_events_tenant_id", "tenant", "id"),
)

# Campaigns an operator paused or cancelled (campaign_control_job; orchestrator_assets/campaign_control.py):
# one row per campaign, its current state and the last change; no row = active. Every change is
# also in audit_log (campaign.pause / campaign.resume / campaign.cancel), which is its history.
campaign_states = sa.Table(
    "campaign_states",
    metadata,
    sa.Column("tenant", sa.String(64), primary_key=True),
    sa.Column("campaign", sa.String(128), primary_key=True),
    sa.Column("state", sa.String(16), nullable=False),  # active | paused | cancelled
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("actor", sa.String(128), nullable=False),
    sa.Column("changed_at", UTCDateTime, nullable=False),
    sa.Column("run_id", sa.String(64)),
)

# Tenants' outbound webhooks (orchestrator_assets/webhooks): a transactional outbox. A row per
# (subscription, event) is written in the transaction of the change behind the event, so an event
# is announced if and only if its change committed; the unique key drops an event derived again
# when an inbox row is re-processed. Rows move pending → delivered | dead (| cancelled when the
# subscription is removed); ``claimed_by``/``claimed_until`` lease a row to one delivery at a time.
webhook_outbox = sa.Table(
    "webhook_outbox",
    metadata,
    sa.Column("id", BigIntId, primary_key=True, autoincrement=True),
    sa.Column("tenant", sa.String(64), nullable=False),
    sa.Column("subscription", sa.String(64), nullable=False),
    sa.Column("event_id", sa.String(64), nullable=False),  # the webhook-id header, the same on every attempt
    sa.Column("event_type", sa.String(64), nullable=False),
    sa.Column("payload", sa.Text, nullable=False),  # the exact body that is signed and sent
    sa.Column("status", sa.String(16), nullable=False),  # pending | delivered | dead | cancelled
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),  # since enqueued or manually retried
    sa.Column("next_attempt_at", UTCDateTime, nullable=False),
    sa.Column("claimed_by", sa.String(64)),  # the run delivering it now …
    sa.Column("claimed_until", UTCDateTime),  # … until then at most
    sa.Column("last_error", sa.Text),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("delivered_at", UTCDateTime),
    sa.Column("dead_lettered_at", UTCDateTime),
    sa.UniqueConstraint("tenant", "subscription", "event_id", name="uq_webhook_outbox_event"),
    sa.Index("ix_webhook_outbox_due", "status", "next_attempt_at"),
)

# Every POST of an outbox row, answered or not: the audit trail behind "we did try".
webhook_attempts = sa.Table(
    "webhook_attempts",
    metadata,
    sa.Column("id", BigIntId, primary_key=True, autoincrement=True),
    sa.Column("outbox_id", sa.BigInteger, sa.ForeignKey("webhook_outbox.id"), nullable=False),
    sa.Column("tenant", sa.String(64), nullable=False),
    sa.Column("attempt", sa.Integer, nullable=False),  # 1-based, counted like webhook_outbox.attempts
    sa.Column("run_id", sa.String(64), nullable=False),
    sa.Column("url", sa.Text, nullable=False),
    sa.Column("started_at", UTCDateTime, nullable=False),
    sa.Column("status_code", sa.Integer),  # null: no answer (refused, timed out, reset)
    sa.Column("latency_ms", sa.Integer, nullable=False),
    sa.Column("error", sa.Text),
    sa.Column("response_excerpt", sa.Text),  # the first bytes of the answer's body
    sa.Column("retry_after_s", sa.Integer),  # a 429/503's Retry-After, in seconds from the answer
    sa.Index("ix_webhook_attempts_outbox", "outbox_id"),
)

# The health of each subscribed endpoint, across its rows: failed attempts in a row (a 2xx resets
# them), a pause its own Retry-After asked for, and whether it is disabled (too many failures in a
# row; only an operator enables it again). No row yet: healthy.
webhook_endpoints = sa.Table(
    "webhook_endpoints",
    metadata,
    sa.Column("tenant", sa.String(64), primary_key=True),
    sa.Column("subscription", sa.String(64), primary_key=True),
    sa.Column("consecutive_failures", sa.Integer, nullable=False, server_default="0"),
    sa.Column("paused_until", UTCDateTime),  # no attempt before (Retry-After, capped)
    sa.Column("disabled_at", UTCDateTime),  # no attempt at all until enabled
    sa.Column("disabled_reason", sa.Text),
    sa.Column("updated_at", UTCDateTime, nullable=False),
)

# Endpoints disabled (by a delivery run) and enabled again (by an operator), append-only: when,
# why, who, in which run. Tenants learn of a disabling from the webhook.endpoint_disabled event.
webhook_endpoint_events = sa.Table(
    "webhook_endpoint_events",
    metadata,
    sa.Column("id", BigIntId, primary_key=True, autoincrement=True),
    sa.Column("tenant", sa.String(64), nullable=False),
    sa.Column("subscription", sa.String(64), nullable=False),
    sa.Column("event", sa.String(32), nullable=False),  # endpoint_disabled | endpoint_enabled
    sa.Column("url", sa.Text, nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("consecutive_failures", sa.Integer, nullable=False),  # at the time
    sa.Column("actor", sa.String(128), nullable=False),  # the operator, or the delivery job
    sa.Column("run_id", sa.String(64), nullable=False),
    sa.Column("occurred_at", UTCDateTime, nullable=False),
    sa.Index("ix_webhook_endpoint_events_subscription", "tenant", "subscription"),
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

# Counters behind ``sends.dedup_id``, one per (tenant, provider): a tenant has one account per
# provider (one VK community), so a per-tenant sequence is a per-community one.
dedup_sequences = sa.Table(
    "dedup_sequences",
    metadata,
    sa.Column("tenant", sa.String(64), primary_key=True),
    sa.Column("provider", sa.String(32), primary_key=True),
    sa.Column("last_value", sa.BigInteger, nullable=False),
)

# Operators' decisions on ambiguous ledger rows (append-only): who decided what, when, in which
# run and why, and what made the row ambiguous in the first place.
send_decisions = sa.Table(
    "send_decisions",
    metadata,
    sa.Column("id", BigIntId, primary_key=True, autoincrement=True),
    sa.Column("tenant", sa.String(64), nullable=False),
    sa.Column("send_id", sa.String(36), sa.ForeignKey("sends.send_id"), nullable=False),
    sa.Column("decision", sa.String(16), nullable=False),  # mark_sent | mark_failed | resend
    sa.Column("operator", sa.String(128), nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("provider_message_id", sa.String(256)),  # mark_sent: the id the provider confirmed
    sa.Column("previous_error", sa.Text),
    sa.Column("run_id", sa.String(64), nullable=False),
    sa.Column("decided_at", UTCDateTime, nullable=False),
    sa.Index("ix_send_decisions_tenant_send", "tenant", "send_id"),
)

# The latest HLR lookup per contact's phone (SMSC hlr=1): whether the number is live.
phone_reachability = sa.Table(
    "phone_reachability",
    metadata,
    sa.Column("tenant", sa.String(64), primary_key=True),
    sa.Column("contact_id", sa.BigInteger, sa.ForeignKey("contacts.id"), primary_key=True),
    sa.Column("phone_bidx", sa.String(32), nullable=False),  # blind index of the phone checked (resources/pii.py)
    sa.Column("reachable", sa.Boolean),  # null: the lookup settled nothing (subscriber offline, no answer)
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("network", sa.Text),  # JSON: imsi, mcc, mnc, operator … as SMSC reported them
    sa.Column("lookup_bidx", sa.String(32)),  # blind index of SMSC's "<id>:<phone digits>", the key of its status callback
    sa.Column("checked_at", UTCDateTime, nullable=False),
    sa.Index("ix_phone_reachability_lookup", "tenant", "lookup_bidx"),
)

# What operators and jobs did to tenants' data (imports, rollbacks, merges, erasures, exports, key
# rotations, consent verifications), append-only: who, what, when, in which run, with which
# parameters (personal data masked by the writer). Written in the transaction of the change itself,
# so an action is on record if and only if it took effect.
audit_log = sa.Table(
    "audit_log",
    metadata,
    sa.Column("id", BigIntId, primary_key=True, autoincrement=True),
    sa.Column("tenant", sa.String(64), nullable=False),
    sa.Column("actor", sa.String(128), nullable=False),  # the operator, or the job/sensor acting
    sa.Column("action", sa.String(64), nullable=False),  # e.g. import.commit, import.rollback, contact.erase
    sa.Column("params", sa.Text, nullable=False),  # JSON, masked
    sa.Column("run_id", sa.String(64)),
    sa.Column("occurred_at", UTCDateTime, nullable=False),
    sa.Index("ix_audit_log_tenant_id", "tenant", "id"),
)

# One row per committed contact import (orchestrator_assets/imports/commit.py): the id that
# consent evidence, the change history and a rollback name. Written in the import's own transaction,
# so an import that failed or was refused (all_or_nothing with rejected rows) has no row.
contact_imports = sa.Table(
    "contact_imports",
    metadata,
    sa.Column("id", BigIntId, primary_key=True, autoincrement=True),
    sa.Column("tenant", sa.String(64), nullable=False),
    sa.Column("source_file", sa.String(512), nullable=False),
    sa.Column("content_sha256", sa.String(64)),  # of the file's bytes; None for rows not read from a file
    sa.Column("mode", sa.String(32), nullable=False),  # all_or_nothing | valid_rows_only
    sa.Column("rows_read", sa.Integer, nullable=False),
    sa.Column("rows_valid", sa.Integer, nullable=False),
    sa.Column("rows_rejected", sa.Integer, nullable=False),  # by validation and by store duplicates
    sa.Column("rows_inserted", sa.Integer, nullable=False),
    sa.Column("rows_updated", sa.Integer, nullable=False),
    sa.Column("rows_unchanged", sa.Integer, nullable=False),
    sa.Column("rows_merged", sa.Integer, nullable=False),  # rows naming a merged contact (its tombstone): not written
    sa.Column("run_id", sa.String(64)),
    sa.Column("status", sa.String(16), nullable=False),  # committed | rolled_back
    sa.Column("committed_at", UTCDateTime, nullable=False),
    sa.Column("rolled_back_at", UTCDateTime),
    sa.Index("ix_contact_imports_tenant_id", "tenant", "id"),
)

# What each import did to each contact it created or changed: the history a rollback restores from.
# ``previous`` holds the changed fields' former values (personal data: one opaque column, sealed
# with the contact's key once PII is encrypted at rest); None for a contact the import created.
# No foreign key to contacts: the history outlives a contact removed by a rollback.
contact_import_changes = sa.Table(
    "contact_import_changes",
    metadata,
    sa.Column("import_id", sa.BigInteger, sa.ForeignKey("contact_imports.id"), primary_key=True),
    sa.Column("contact_id", sa.BigInteger, primary_key=True),
    sa.Column("action", sa.String(16), nullable=False),  # created | updated
    sa.Column("previous", sa.LargeBinary),
    sa.Column("previous_updated_at", UTCDateTime),
    sa.Index("ix_contact_import_changes_contact", "contact_id", "import_id"),
)

# Every foreign key to contacts gets an index on contact_id: PostgreSQL checks each removed contact
# (import rollback, merge, erasure) against each referencing table, and without one that is a scan of
# the table per contact (a 20,000-contact rollback took 76 s instead of 4 s). phone_reachability's
# primary key is contact_id already; segment_members' starts with tenant and segment.
for _table in (consent_events, segment_members, segment_events, sends, trigger_events):
    sa.Index(f"ix_{_table.name}_contact", _table.c.contact_id)

# Pairs of a tenant's live contacts that may be one person (contacts/contact_duplicate_candidates,
# replaced on every materialisation): ids, a score 0-100 and the reason in words; never the values.
contact_duplicate_candidates = sa.Table(
    "contact_duplicate_candidates",
    metadata,
    sa.Column("tenant", sa.String(64), primary_key=True),
    sa.Column("contact_id", sa.BigInteger, sa.ForeignKey("contacts.id"), primary_key=True),  # the older of the two
    sa.Column("other_id", sa.BigInteger, sa.ForeignKey("contacts.id"), primary_key=True),
    sa.Column("score", sa.Integer, nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("found_at", UTCDateTime, nullable=False),
)

# One row per merge of a contact into a survivor (contact_merge_job) and, once undone, by whom
# (contact_unmerge_job). What the merge changed is in contact_merge_moves, so the undo is exact.
contact_merges = sa.Table(
    "contact_merges",
    metadata,
    sa.Column("id", BigIntId, primary_key=True, autoincrement=True),
    sa.Column("tenant", sa.String(64), nullable=False),
    sa.Column("survivor_id", sa.BigInteger, sa.ForeignKey("contacts.id"), nullable=False),
    sa.Column("merged_id", sa.BigInteger, sa.ForeignKey("contacts.id"), nullable=False),  # now a tombstone
    sa.Column("score", sa.Integer),  # the candidate's score; null for an explicit pair that was no candidate
    sa.Column("operator", sa.String(128), nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("run_id", sa.String(64), nullable=False),
    sa.Column("merged_at", UTCDateTime, nullable=False),
    sa.Column("undone_at", UTCDateTime),
    sa.Column("undone_by", sa.String(128)),
    sa.Column("undo_run_id", sa.String(64)),
    sa.Index("ix_contact_merges_tenant_merged", "tenant", "merged_id"),
)

# Everything one merge changed, a row each: which table, which row (send id, trigger event id,
# segment, field, channel/purpose), what was done (moved | kept | deleted | filled | appended) and
# the non-personal values needed to put it back (JSON). Personal values are never copied here.
contact_merge_moves = sa.Table(
    "contact_merge_moves",
    metadata,
    sa.Column("id", BigIntId, primary_key=True, autoincrement=True),
    sa.Column("merge_id", sa.BigInteger, sa.ForeignKey("contact_merges.id"), nullable=False),
    sa.Column("tenant", sa.String(64), nullable=False),
    sa.Column("table_name", sa.String(64), nullable=False),
    sa.Column("row_key", sa.String(256), nullable=False),
    sa.Column("action", sa.String(16), nullable=False),
    sa.Column("before", sa.Text),
    sa.Index("ix_contact_merge_moves_merge", "merge_id"),
)

# Every template version the platform has seen (policies/config/templates.yaml), with the hash of
# its content the first time: a published version is immutable, and a later load whose content
# hashes differently is refused (orchestrator_assets/template_history.py). first_campaign names the
# campaign whose start first recorded it (empty when the message_templates asset saw it first).
template_versions = sa.Table(
    "template_versions",
    metadata,
    sa.Column("tenant", sa.String(64), primary_key=True),
    sa.Column("template", sa.String(128), primary_key=True),
    sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("content_hash", sa.String(64), nullable=False),
    sa.Column("first_seen_at", UTCDateTime, nullable=False),
    sa.Column("first_campaign", sa.String(128), nullable=False),
    sa.Column("first_run_id", sa.String(64), nullable=False),
)

# A/B tests (policies/experiments.py, orchestrator_assets/experiments/): the arm each contact of an
# experiment campaign's audience was first put in (holdout, a variant, rollout), written when the
# campaign is rendered. The arm is a hash of (tenant, campaign, contact), so the row repeats what
# the hash says; it is kept because the holdout is sent nothing and could not be counted
# otherwise, and so that a later change of the weights cannot move a contact between arms.
experiment_assignments = sa.Table(
    "experiment_assignments",
    metadata,
    sa.Column("tenant", sa.String(64), primary_key=True),
    sa.Column("campaign", sa.String(128), primary_key=True),
    sa.Column("contact_id", sa.BigInteger, sa.ForeignKey("contacts.id"), primary_key=True),
    sa.Column("arm", sa.String(32), nullable=False),  # holdout | <variant name> | rollout
    sa.Column("assigned_at", UTCDateTime, nullable=False),
)

# Each look of an experiment (one per evaluation run, up to the planned number) and its verdict,
# append-only. The latest row with ``rollout_variant`` set is what the rollout remainder is sent;
# a final row (winner, or no winner at the last look) ends the looks.
experiment_looks = sa.Table(
    "experiment_looks",
    metadata,
    sa.Column("id", BigIntId, primary_key=True, autoincrement=True),
    sa.Column("tenant", sa.String(64), nullable=False),
    sa.Column("campaign", sa.String(128), nullable=False),
    sa.Column("look", sa.Integer, nullable=False),
    sa.Column("looks", sa.Integer, nullable=False),
    sa.Column("decision", sa.String(128), nullable=False),  # "winner b" | "no winner yet (look 1 of 3)" | "no winner (final look 3 of 3)"
    sa.Column("winner", sa.String(32)),
    sa.Column("final", sa.Boolean, nullable=False),
    sa.Column("rollout_variant", sa.String(32)),  # what the rollout remainder gets now; null: it waits (or, final, gets nothing)
    sa.Column("run_id", sa.String(64), nullable=False),
    sa.Column("evaluated_at", UTCDateTime, nullable=False),
    sa.UniqueConstraint("tenant", "campaign", "look", name="uq_experiment_looks_look"),
)
