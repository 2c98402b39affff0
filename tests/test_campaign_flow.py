"""One campaign end to end on the embedded default, for two tenants, through real components."""

from __future__ import annotations


import httpx
import sqlalchemy as sa

import sealed
from flow import build_reports, expected_funnel, funnel_rows, metadata, process_inbox, run_pipeline, running_stack
from orchestrator_assets.contact_pii import read_contacts
from orchestrator_assets.imports.sample_contacts import generate_sample, write_sample
from policies.loader import load_bundle
from resources.channels.mailgun import sign
from resources.event_keys import stored_event_key
from resources.opstore import OperationalStore
from resources.opstore_schema import contacts, deliveries, segment_members, sends, webhook_inbox
from resources.pii import tenant_cipher
from consents import granted_rows
from resources.settings import get_settings


def test_campaign_end_to_end_two_tenants(algor_home, instance, monkeypatch, tmp_path):
    acme_csv = write_sample(generate_sample(rows=120, seed=7), tmp_path / "acme.csv")
    bundle = load_bundle()
    with running_stack(monkeypatch) as stack:
        first_demo = run_pipeline(instance, "demo")
        first_acme = run_pipeline(instance, "acme", str(acme_csv))
        sent_demo = metadata(first_demo, "sends/campaign_sends")
        engine = OperationalStore().engine()
        with engine.connect() as conn:  # consent as it stood when the messages went out
            allowed = _consented_segment_members(conn, bundle)
        assert sent_demo["sent"] > 0 and sent_demo["skipped_already_sent"] == 0

        # A run that died between request and answer leaves its row claimed: simulate one.
        with engine.begin() as conn:
            victim = conn.execute(sa.select(sends.c.send_id).where(sends.c.tenant == "demo", sends.c.status == "sent").limit(1)).scalar_one()
            conn.execute(sa.update(sends).where(sends.c.send_id == victim).values(status="claimed", run_id="a-run-that-died"))

        # Re-running the same campaign (and re-importing the same file) sends nothing twice, and
        # the ambiguous row is held and reported, not re-sent.
        received_before = len(stack.sandbox_messages("telegram")) + len(stack.sandbox_messages("mailgun"))
        again = run_pipeline(instance, "demo")
        assert metadata(again, "contacts/contacts")["inserted"] == 0
        assert metadata(again, "contacts/contacts")["updated"] == 0
        resend = metadata(again, "sends/campaign_sends")
        assert resend["sent"] == 0 and resend["failed"] == 0
        assert resend["ambiguous_held"] == 1
        # Recipients the provider called unreachable on the first run are suppressed now.
        assert resend["messages"] == sent_demo["messages"] - sent_demo["failed"]
        assert resend["skipped_already_sent"] == resend["messages"] - 1
        assert len(stack.sandbox_messages("telegram")) + len(stack.sandbox_messages("mailgun")) == received_before
        (check,) = [e for e in again.get_asset_check_evaluations() if e.check_name == "no_ambiguous_sends"]
        assert not check.passed

        stack.wait_for_callbacks()
        requests, cursor = process_inbox(instance)
        assert {r.partition_key for r in requests} == {"demo", "acme"}
        # The same tick evaluated again asks for nothing new: the cursor moved past those rows.
        assert process_inbox(instance, cursor)[0] == []

        with engine.connect() as conn:
            assert conn.execute(sa.select(sa.func.count()).where(webhook_inbox.c.processed_at.is_(None))).scalar_one() == 0
            recipients = _recipients_by_tenant(conn)
            complained = conn.execute(sa.select(sends.c.contact_id).join(deliveries).where(deliveries.c.status == "complained")).scalars().all()
            granted = granted_rows()
            still_granted = conn.execute(sa.select(sa.func.count()).select_from(granted).where(granted.c.contact_id.in_(complained))).scalar_one()
            blocked = conn.execute(
                sa.select(sends.c.contact_id).where(sends.c.status == "failed", sends.c.error_class == "unreachable")
            ).scalars().all()
            blocked_still_granted = conn.execute(
                sa.select(sa.func.count()).select_from(granted).where(granted.c.contact_id.in_(blocked), granted.c.channel == "telegram")
            ).scalar_one()
        # A complaint suppresses every channel (policy.yaml), not just e-mail; a recipient the
        # provider calls unreachable (blocked the bot) is suppressed on that channel.
        assert complained and still_granted == 0
        assert blocked and blocked_still_granted == 0

        # Contacts without consent (or outside the segment) got nothing; each tenant only reached its own.
        for (tenant, channel), addresses in recipients.items():
            assert addresses <= allowed[(tenant, channel)], f"{tenant}/{channel} reached contacts without consent"
        sandbox_email = {m["recipient"] for m in stack.sandbox_messages("mailgun")}
        assert sandbox_email == recipients[("demo", "email")] | recipients[("acme", "email")]
        assert not recipients[("demo", "email")] & recipients[("acme", "email")]

        build_reports(instance)
        funnel = funnel_rows()
        expected = expected_funnel(stack, bundle.tenants)
    campaigns = {"demo": "black_friday_2026", "acme": "spring_sale_2026"}
    assert {(t, ch) for t, _, ch in funnel} == set(expected)
    for (tenant, channel), figures in expected.items():
        row = funnel[(tenant, campaigns[tenant], channel)]
        assert {k: row[k] for k in figures} == figures, (tenant, channel)
    assert metadata(first_acme, "sends/campaign_sends")["sent"] == funnel[("acme", "spring_sale_2026", "email")]["accepted"]


def test_forged_callback_refused_and_real_one_counted_once(algor_home, instance, monkeypatch):
    with running_stack(monkeypatch) as stack:
        run_pipeline(instance, "demo")
        stack.wait_for_callbacks()
        process_inbox(instance)
        engine = OperationalStore().engine()
        with engine.connect() as conn:
            send = conn.execute(
                sa.select(sends).where(sends.c.tenant == "demo", sends.c.provider == "mailgun", sends.c.status == "sent").order_by(sends.c.send_id)
            ).first()
            inbox_before = conn.execute(sa.select(sa.func.count()).select_from(webhook_inbox)).scalar_one()
            recipient = sealed.send_address(conn, send)
        key = get_settings().secret(load_bundle().tenants["demo"].accounts.mailgun.signing_key_env)
        url = f"{stack.gateway_url}/hooks/demo/mailgun"

        forged = _mailgun_event(send, recipient, "opened", "forged-1", key="not-the-key")
        assert httpx.post(url, json=forged).status_code == 403  # not 406: Mailgun retries, in case our key is the wrong one
        unsigned = {"event-data": forged["event-data"]}
        assert httpx.post(url, json=unsigned).status_code == 403
        telegram = httpx.post(f"{stack.gateway_url}/hooks/demo/telegram", json={"update_id": 1}, headers={"X-Telegram-Bot-Api-Secret-Token": "wrong"})
        assert telegram.status_code == 403

        genuine = _mailgun_event(send, recipient, "opened", "open-once", key=key)
        assert httpx.post(url, json=genuine).status_code == 200
        assert httpx.post(url, json=genuine).status_code == 200  # a provider retry: acknowledged, not stored again
        process_inbox(instance)
        with engine.connect() as conn:
            inbox_rows = conn.execute(sa.select(webhook_inbox).where(webhook_inbox.c.event_key == stored_event_key("demo", "mailgun", "open-once"))).all()
            assert len(inbox_rows) == 1
            assert conn.execute(sa.select(sa.func.count()).select_from(webhook_inbox)).scalar_one() == inbox_before + 1
            delivery = conn.execute(sa.select(deliveries).where(deliveries.c.send_id == send.send_id)).one()
        assert delivery.status in ("opened", "clicked", "complained")
        build_reports(instance)
        from resources.warehouse import Warehouse

        with Warehouse().client() as client:
            opened = client.query(
                "select count() from algor_reports.stg_events where event_type = 'opened' and send_id = {s:String} and event_id = {e:String}",
                parameters={"s": send.send_id, "e": f"mailgun:{stored_event_key('demo', 'mailgun', 'open-once')}"},
            ).result_rows[0][0]
        assert opened == 1


def _mailgun_event(send, recipient: str, event: str, event_id: str, key: str) -> dict:
    import time

    timestamp, token = str(int(time.time())), f"tok-{event_id}"
    return {
        "signature": {"timestamp": timestamp, "token": token, "signature": sign(key, timestamp, token)},
        "event-data": {
            "id": event_id,
            "event": event,
            "timestamp": time.time(),
            "recipient": recipient,
            "message": {"headers": {"message-id": send.provider_message_id}},
            "user-variables": {"send_id": send.send_id},
        },
    }


def _recipients_by_tenant(conn: sa.Connection) -> dict[tuple[str, str], set[str]]:
    """Addresses each tenant's messages went to (a send the provider refused reached nobody)."""
    result: dict[tuple[str, str], set[str]] = {}
    accepted = sa.select(sends.c.tenant, sends.c.channel, sends.c.contact_id, sends.c.address).where(sends.c.status != "failed")
    for send in conn.execute(accepted):
        result.setdefault((send.tenant, send.channel), set()).add(sealed.send_address(conn, send))
    return result


def _consented_segment_members(conn: sa.Connection, bundle) -> dict[tuple[str, str], set[str]]:
    allowed: dict[tuple[str, str], set[str]] = {}
    granted = granted_rows()
    for tenant, campaigns in bundle.campaigns.items():
        for campaign in campaigns.values():
            for content in campaign.channels:
                field = "telegram_chat_id" if content.channel == "telegram" else "email"
                ids = conn.execute(
                    sa.select(contacts.c.id)
                    .join(segment_members, segment_members.c.contact_id == contacts.c.id)
                    .join(granted, granted.c.contact_id == contacts.c.id)
                    .where(
                        contacts.c.tenant == tenant,
                        segment_members.c.segment == campaign.segment,
                        granted.c.channel == content.channel,
                        granted.c.purpose == str(campaign.purpose),
                    )
                ).scalars()
                people = read_contacts(conn, tenant_cipher(conn, tenant), ids).values()
                allowed.setdefault((tenant, str(content.channel)), set()).update(str(p[field]) for p in people if p.get(field) is not None)
    return allowed
