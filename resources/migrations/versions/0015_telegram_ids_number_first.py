"""Telegram message ids as stored: the message number first (tg:<message_id>:<chat index prefix>)

Stored ids were ``tg:<32 hex of the chat's blind index>:<message_id>``; they are now
``tg:<message_id>:<first 16 of those hex digits>`` (``orchestrator_assets/provider_ids.py``), so
consecutive sends land side by side in ``ix_sends_provider_message``. Rows written before keep
matching their callbacks only once rewritten, which this migration does in place.

Revision ID: 0015
Revises: 0014
"""

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None

# 'tg:' + 32 hex + ':' + message id: the colon sits at position 36 (SQL strings count from 1).
_OLD = "provider_message_id LIKE 'tg:%' AND substr(provider_message_id, 36, 1) = ':' AND length(provider_message_id) > 36"
_NEW = "'tg:' || substr(provider_message_id, 37) || ':' || substr(provider_message_id, 4, 16)"


def upgrade() -> None:
    for table in ("sends", "send_decisions"):
        op.execute(sa.text(f"UPDATE {table} SET provider_message_id = {_NEW} WHERE {_OLD}"))


def downgrade() -> None:
    # The dropped half of each chat's index cannot be recomputed here (it needs the tenant's key).
    raise NotImplementedError("Telegram message ids stored number first cannot be turned back")
