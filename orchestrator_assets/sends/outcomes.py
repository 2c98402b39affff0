"""Publishing final sends: delivery rows in the operational store, events in the warehouse.

Runs after dispatch and again on every later run, picking up any final ledger row not yet
published (``warehouse_synced_at`` is null), so a crash between the send and the warehouse
append delays an event but never loses it; event ids are send ids, so re-appending is harmless.
A transient failure is not final (the next run retries it under the same send id), so it is
published only once it is: otherwise one send could count as both failed and sent.
The tenant's webhook outbox gets message.sent / message.send_failed (and the consent withdrawals
of unreachable answers) in the transaction that marks the rows published, so each once.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence

import sqlalchemy as sa

from orchestrator_assets.consent_decisions import WITHDRAW
from orchestrator_assets.consent_ledger import ConsentFact
from orchestrator_assets.deliveries.processing import withdraw_consents
from orchestrator_assets.delivery_status import RANKS
from orchestrator_assets.sends.ledger import FAILED, RETRYABLE_CLASSES, SENT
from orchestrator_assets.webhooks.events import WebhookEvent, message_event
from orchestrator_assets.webhooks.outbox import enqueue
from policies.consent_purposes import Purpose, SourceKind
from policies.tenants import WebhookSubscription
from resources import warehouse as wh
from resources.channels.base import UNREACHABLE
from resources.opstore_schema import deliveries, sends
from resources.sql import upsert_insert

# Nothing reaches an address the provider calls unreachable: advertising and service messages stop alike.
UNREACHABLE_PURPOSES = (Purpose.ADVERTISING, Purpose.TRANSACTIONAL)


def publish_send_outcomes(
    engine: sa.Engine, warehouse: wh.Warehouse, tenant: str, now: dt.datetime, subscriptions: Sequence[WebhookSubscription]
) -> dict[str, int]:
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(sends).where(
                sends.c.tenant == tenant,
                sa.or_(sends.c.status == SENT, sa.and_(sends.c.status == FAILED, sa.func.coalesce(sends.c.error_class, "").not_in(RETRYABLE_CLASSES))),
                sends.c.warehouse_synced_at.is_(None),
            )
        ).all()
    events: list[tuple] = []
    delivery_rows: list[dict] = []
    webhook_events: list[WebhookEvent] = []
    for row in rows:
        occurred = row.finished_at or now
        base = (row.send_id, row.campaign, row.channel, row.provider, row.contact_id, row.provider_message_id or "")
        if row.status == SENT:
            events.append((tenant, row.send_id, wh.SENT, *base, "", occurred))
            webhook_events.append(message_event(wh.SENT, tenant, row, row.send_id, "", occurred))
            # Accepted, not delivered: only a provider's receipt says delivered. Where there are
            # none (Telegram, VK) the row stays `sent` and the reports show delivery as unknown.
            delivery_rows.append(
                {"send_id": row.send_id, "tenant": tenant, "status": wh.SENT, "status_rank": RANKS[wh.SENT], "reason": "", "last_event_at": occurred, "updated_at": now}
            )
        else:
            events.append((tenant, row.send_id, wh.SEND_FAILED, *base, f"{row.error_class}: {row.error or ''}", occurred))
            webhook_events.append(message_event(wh.SEND_FAILED, tenant, row, row.send_id, f"{row.error_class}: {row.error or ''}", occurred))
    warehouse.append_events(events)
    suppressed = 0
    with engine.begin() as conn:
        # The provider says this recipient cannot be reached on this channel (blocked the bot,
        # opted out, not on the network): suppress the channel, with the answer as evidence.
        for row in rows:
            if row.status == FAILED and row.error_class == UNREACHABLE:
                withdrawal = ConsentFact(
                    row.contact_id, row.channel, Purpose.ADVERTISING, WITHDRAW, SourceKind.PROVIDER_WEBHOOK, f"send:{row.send_id}", row.finished_at or now,
                    origin=f"{row.provider}:unreachable", detail=json.dumps({"provider": row.provider, "error": row.error}, ensure_ascii=False),
                )  # fmt: skip
                suppressed += withdraw_consents(conn, tenant, withdrawal, (row.channel,), now, webhook_events, purposes=UNREACHABLE_PURPOSES)
        if delivery_rows:
            conn.execute(upsert_insert(conn, deliveries).on_conflict_do_nothing(), delivery_rows)
        ids = [row.send_id for row in rows]
        for start in range(0, len(ids), 500):
            conn.execute(sa.update(sends).where(sends.c.send_id.in_(ids[start : start + 500])).values(warehouse_synced_at=now))
        enqueued = enqueue(conn, tenant, subscriptions, webhook_events, now)
    return {
        "events_appended": len(events),
        "deliveries_opened": len(delivery_rows),
        "consents_suppressed_unreachable": suppressed,
        "webhook_events_enqueued": enqueued,
    }
