"""Dagster assets of the campaigns domain: who gets which rendered message for each due campaign."""

import datetime as dt
import json

import dagster as dg
import pandas as pd
import sqlalchemy as sa

from orchestrator_assets.groups import CAMPAIGNS, CONSENTS, SEGMENTS
from orchestrator_assets.partitions import tenant_partitions
from orchestrator_assets.tables import markdown_table
from policies.loader import load_bundle
from policies.schema import Campaign
from policies.templates import render_message
from resources.links import sign_unsubscribe
from resources.opstore import OperationalStore
from resources.opstore_schema import consents, contacts, segment_members
from resources.settings import get_settings

# The contact column that holds each channel's address.
ADDRESS_COLUMNS = {
    "telegram": contacts.c.telegram_chat_id,
    "email": contacts.c.email,
    "vk": contacts.c.vk_user_id,
    "sms": contacts.c.phone,
    "whatsapp": contacts.c.phone,
}
MESSAGE_COLUMNS = ["campaign", "step", "channel", "provider", "contact_id", "address", "subject", "text", "html", "buttons", "unsubscribe_url"]


class CampaignSelection(dg.Config):
    campaign: str = ""  # empty = every campaign of the tenant whose start time has come


def audience_query(tenant: str, campaign: Campaign, channel: str) -> sa.Select:
    """Segment members with a granted consent for this channel and purpose and an address on it.

    Consent is checked here, at the last moment before rendering, so a withdrawal recorded after
    the segment was built still stops the message.
    """
    address = ADDRESS_COLUMNS[channel]
    return (
        sa.select(contacts, address.label("address"))
        .join(segment_members, sa.and_(segment_members.c.contact_id == contacts.c.id, segment_members.c.tenant == tenant))
        .join(consents, sa.and_(consents.c.contact_id == contacts.c.id, consents.c.tenant == tenant))
        .where(
            contacts.c.tenant == tenant,
            segment_members.c.segment == campaign.segment,
            consents.c.channel == channel,
            consents.c.purpose == campaign.purpose,
            consents.c.status == "granted",
            address.is_not(None),
        )
        .order_by(contacts.c.id)
    )


def segment_size(conn: sa.Connection, tenant: str, segment: str) -> int:
    query = sa.select(sa.func.count()).where(segment_members.c.tenant == tenant, segment_members.c.segment == segment)
    return conn.execute(query).scalar_one()


@dg.asset(
    key=[CAMPAIGNS, "campaign_messages"],
    group_name=CAMPAIGNS,
    partitions_def=tenant_partitions,
    deps=[dg.AssetKey([SEGMENTS, "segment_members"]), dg.AssetKey([CONSENTS, "contact_consents"])],
)
def campaign_messages(context: dg.AssetExecutionContext, config: CampaignSelection, opstore: OperationalStore) -> dg.Output[pd.DataFrame]:
    """Rendered messages for every due campaign of one tenant.

    Grain: one row per (campaign, step, channel, contact). Source: ``campaigns.yaml`` (segment,
    channels, Jinja2 templates, schedule) × segment membership ∩ granted consent. A template
    error fails the run before anything is sent.
    """
    tenant = context.partition_key
    now = dt.datetime.now(dt.UTC)
    gateway_url = get_settings().gateway_url
    bundle = load_bundle()
    tenant_accounts = bundle.tenants[tenant].accounts
    due = [c for c in bundle.campaigns[tenant].values() if (c.name == config.campaign if config.campaign else c.schedule.start_at <= now)]
    if config.campaign and not due:
        raise dg.Failure(f"campaign {config.campaign!r} is not defined for tenant {tenant!r}")
    rows: list[dict] = []
    summary: list[tuple] = []
    with opstore.engine().connect() as conn:
        for campaign in due:
            members = segment_size(conn, tenant, campaign.segment)
            for content in campaign.channels:
                audience = conn.execute(audience_query(tenant, campaign, content.channel)).mappings().all()
                for contact in audience:
                    unsubscribe_url = f"{gateway_url}/unsubscribe/{tenant}/{sign_unsubscribe(tenant, contact['id'], campaign.name)}"
                    rendered = render_message(content, contact, {"unsubscribe_url": unsubscribe_url})
                    rows.append(
                        {
                            "campaign": campaign.name,
                            "step": campaign.step,
                            "channel": content.channel,
                            "provider": str(tenant_accounts.provider_for(content.channel)),
                            "contact_id": contact["id"],
                            "address": str(contact["address"]),
                            "subject": rendered.subject,
                            "text": rendered.text,
                            "html": rendered.html,
                            "buttons": json.dumps([(b.label, b.callback_data) for b in rendered.buttons], ensure_ascii=False),
                            "unsubscribe_url": unsubscribe_url if content.channel == "email" else None,
                        }
                    )
                summary.append((campaign.name, content.channel, members, len(audience), members - len(audience)))
    context.log.info(f"{len(due)} due campaign(s), {len(rows)} messages rendered")
    return dg.Output(
        pd.DataFrame(rows, columns=MESSAGE_COLUMNS),
        metadata={
            "messages": len(rows),
            "campaigns": dg.MetadataValue.md(
                markdown_table(["campaign", "channel", "segment members", "audience", "excluded (no consent/address)"], summary)
            ),
        },
    )
