"""The audit trail's one writer: a row per action on a tenant's data, in the caller's transaction.

The caller passes its own connection so the row commits or rolls back with the change it
describes, and masks personal data in ``params`` itself (``policies.masking``): only the caller
knows which of its parameters are personal.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import sqlalchemy as sa

from resources.opstore_schema import audit_log


def record_audit(
    conn: sa.Connection, *, tenant: str, actor: str, action: str, params: dict[str, Any], run_id: str | None = None,
    now: dt.datetime | None = None,
) -> int:
    """Append one audit row; returns its id."""
    row = {
        "tenant": tenant,
        "actor": actor,
        "action": action,
        "params": json.dumps(params, ensure_ascii=False, sort_keys=True, default=str),
        "run_id": run_id,
        "occurred_at": now or dt.datetime.now(dt.UTC),
    }
    return conn.execute(sa.insert(audit_log).values(row).returning(audit_log.c.id)).scalar_one()
