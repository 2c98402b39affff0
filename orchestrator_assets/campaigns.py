"""Dagster assets of the campaigns domain: who gets which rendered message for each due campaign."""

import datetime as dt
import json
from collections.abc import Sequence

import dagster as dg
import pandas as pd
import sqlalchemy as sa
from pydantic import Field

from orchestrator_assets.audience_policies import CampaignPolicies
from orchestrator_assets.campaign_occurrences import at_occurrence
from orchestrator_assets.consent_ledger import consent_state, has_consent
from orchestrator_assets.contact_pii import CHANNEL_FIELD, CHANNEL_INDEX, INDEX_COLUMNS
from orchestrator_assets.experiments.arms import arms_table_rows, campaign_arms
from orchestrator_assets.fallback import Attempt, next_channel
from orchestrator_assets.groups import CAMPAIGNS, CONSENTS, SEGMENTS
from orchestrator_assets.message_templates import messages_by_language, start_campaigns
from orchestrator_assets.partitions import tenant_partitions
from orchestrator_assets.segment_sql import segment_where, tenant_scope
from orchestrator_assets.tables import markdown_table
from policies.campaigns import Campaign
from policies.consent_purposes import required_consents
from policies.loader import load_bundle
from policies.segments import Rule
from resources.connectors import has_delivery_receipts
from resources.links import rewrite_links, sign_click, sign_deep_link, sign_unsubscribe
from resources.opstore import OperationalStore
from resources.opstore_schema import contacts, deliveries, segment_members, sends
from resources.pii import TenantCipher, tenant_cipher
from resources.settings import get_settings

# What templates see of a contact besides its opened personal data: never keys or blind indexes.
TEMPLATE_COLUMNS = [contacts.c[name] for name in ("id", "tenant", "external_id", "email_domain", "phone_country", "city", "language", "timezone", "created_at", "updated_at")]
# Links are rewritten to signed click-tracking links except in SMS, where every character costs.
TRACKED_CHANNELS = frozenset({"telegram", "email", "vk", "whatsapp"})
MESSAGE_COLUMNS = ["campaign", "step", "channel", "provider", "contact_id", "address", "subject", "text", "html", "buttons", "unsubscribe_url", "attachments", "template", "variant"]


class CampaignSelection(dg.Config):
    """Which campaign(s) to render: the schedule sensor names one campaign, the trigger sensor a
    trigger campaign plus the contacts who triggered it."""

    campaign: str = Field(default="", description="Empty = every scheduled campaign of the tenant whose start time has come")
    contact_ids: list[int] = Field(default_factory=list, description="Only these contacts (required for a trigger campaign); empty = the segment")
    occurrence: str = Field(default="", description="A cron campaign's occurrence, e.g. 2026-12-07T10:00+03:00; empty = its latest")


def selected_campaigns(campaigns: dict[str, Campaign], config: CampaignSelection, now: dt.datetime) -> list[Campaign]:
    """The campaigns a run renders; a trigger campaign only ever for named contacts, since without
    them it would go to everyone who ever could have triggered it."""
    if not config.campaign:
        if config.contact_ids:
            raise dg.Failure("contact_ids are given without a campaign: name the campaign they are for")
        return [c for c in campaigns.values() if c.schedule is not None and c.schedule.start_at is not None and c.schedule.start_at <= now]
    campaign = campaigns.get(config.campaign)
    if campaign is None:
        raise dg.Failure(f"campaign {config.campaign!r} is not defined for this tenant (known: {', '.join(sorted(campaigns))})")
    if campaign.trigger is not None and not config.contact_ids:
        raise dg.Failure(
            f"campaign {campaign.name!r} starts on {campaign.trigger.event}: it runs for the contacts who triggered it "
            "(contact_ids, filled in by trigger_campaign_sensor), never for a whole audience"
        )
    return [campaign]


def audience_query(
    cipher: TenantCipher, campaign: Campaign, channel: str, now: dt.datetime, require_processing: bool, contact_ids: Sequence[int] = (), rule: Rule | None = None
) -> sa.Select:
    """Contacts holding every consent a ``campaign.purpose`` message on this channel needs at ``now``
    (``policies.consent_purposes.required_consents``, asked of the ledger's derived state) and an
    address on it, out of the campaign's materialised segment, or out of ``contact_ids`` (a trigger)
    that match the segment's ``rule`` now: a contact a /start created a moment ago is in no
    materialised segment.

    Consent is checked here, at the last moment before rendering, so a withdrawal recorded after
    the segment was built still stops the message. The address is sealed: the query selects the
    sealed data, ``open_audience`` opens it.
    """
    tenant = cipher.tenant
    address = INDEX_COLUMNS[CHANNEL_INDEX[channel]]
    state = consent_state(now)
    consented = [has_consent(state, tenant, contacts.c.id, purpose, on) for purpose, on in required_consents(campaign.purpose, channel, require_processing)]
    query = (
        sa.select(*TEMPLATE_COLUMNS, contacts.c.data_key, contacts.c.pii)
        .where(
            contacts.c.tenant == tenant,
            contacts.c.merged_into.is_(None),  # a merged contact's tombstone: the survivor is messaged
            address.is_not(None),
            *consented,
        )
        .order_by(contacts.c.id)
    )
    if contact_ids:
        query = query.where(contacts.c.id.in_(contact_ids))
        return query if rule is None else query.where(segment_where(rule, contacts, cipher, tenant_scope(tenant, now)))
    return query.join(segment_members, sa.and_(segment_members.c.contact_id == contacts.c.id, segment_members.c.tenant == tenant)).where(
        segment_members.c.segment == campaign.segment
    )


def open_audience(cipher: TenantCipher, channel: str, rows: Sequence[sa.RowMapping], opened: dict[int, dict]) -> list[dict]:
    """The audience's rows as templates and the send path need them: the contact's columns, its
    opened personal data and the channel's ``address``. ``opened`` caches each contact's opened data
    across the channels of a run, so each is decrypted once."""
    field = CHANNEL_FIELD[channel]
    contacts_: list[dict] = []
    for row in rows:
        personal = opened.get(row["id"])
        if personal is None:
            personal = opened[row["id"]] = cipher.open(row["data_key"], row["pii"])
        contact = {key: value for key, value in row.items() if key not in ("data_key", "pii")} | personal
        if personal.get(field) is not None:
            contacts_.append(contact | {"address": personal[field]})
    return contacts_


def fallback_plan(conn: sa.Connection, tenant: str, campaign: Campaign, eligible: dict[str, list], now: dt.datetime) -> dict[str, list]:
    """Per channel, the contacts whose next channel (``orchestrator_assets.fallback``) it is."""
    history: dict[int, dict[str, Attempt]] = {}
    query = (
        sa.select(sends.c.contact_id, sends.c.channel, sends.c.provider, sends.c.status, sends.c.finished_at, deliveries.c.status.label("delivery"))
        .outerjoin(deliveries, deliveries.c.send_id == sends.c.send_id)
        .where(sends.c.tenant == tenant, sends.c.campaign == campaign.name, sends.c.step == campaign.step)
    )
    for row in conn.execute(query):
        finished = row.finished_at.replace(tzinfo=dt.UTC) if row.finished_at and row.finished_at.tzinfo is None else row.finished_at  # SQLite drops tz
        attempt = Attempt(row.status, row.delivery, finished, has_delivery_receipts(row.provider))
        history.setdefault(row.contact_id, {})[row.channel] = attempt
    order = [content.channel for content in campaign.channels]
    by_id = {channel: {contact["id"]: contact for contact in contacts_} for channel, contacts_ in eligible.items()}
    after = dt.timedelta(minutes=campaign.fallback.undelivered_after_minutes) if campaign.fallback.undelivered_after_minutes else None
    plan: dict[str, list] = {channel: [] for channel in order}
    for contact_id in sorted({cid for ids in by_id.values() for cid in ids}):
        reachable = {channel for channel in order if contact_id in by_id[channel]}
        channel = next_channel(order, reachable, history.get(contact_id, {}), now, after)
        if channel is not None:
            plan[channel].append(by_id[channel][contact_id])
    return plan


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
    """Rendered messages for every due campaign of one tenant, or for one campaign (and, for a
    trigger campaign, the contacts who triggered it).

    Grain: one row per (campaign, step, channel, contact). Source: ``campaigns.yaml`` (segment,
    channels, Jinja2 templates, schedule or trigger) × segment membership (or the triggered
    contacts) ∩ granted consent, screened by the recipient policies (orchestrator_assets/audience_policies.py).
    A contact whose template cannot be rendered is excluded with the error; a template syntax error fails at load.
    """
    tenant = context.partition_key
    now = dt.datetime.now(dt.UTC)
    gateway_url = get_settings().gateway_url
    bundle = load_bundle()
    tenant_accounts = bundle.tenants[tenant].accounts
    require_processing = bundle.policy.consent.require_processing
    due = [at_occurrence(campaign, config.occurrence, now) for campaign in selected_campaigns(bundle.campaigns[tenant], config, now)]
    rows: list[dict] = []
    summary: list[tuple] = []
    opened: dict[int, dict] = {}
    experiments = []
    with opstore.engine().begin() as conn:
        cipher = tenant_cipher(conn, tenant)
        senders = start_campaigns(conn, bundle, tenant, due, now, context.run_id)  # 38-FZ marking, immutable template versions
        policies = CampaignPolicies.load(conn, bundle, tenant, now, context.run.run_id)
        for campaign in due:
            rule = bundle.segments[tenant][campaign.segment].rule if campaign.segment else None
            candidates = len(config.contact_ids) if config.contact_ids else segment_size(conn, tenant, campaign.segment)
            eligible = {
                content.channel: open_audience(
                    cipher, content.channel,
                    conn.execute(audience_query(cipher, campaign, content.channel, now, require_processing, config.contact_ids, rule)).mappings().all(), opened,
                )
                for content in campaign.channels
            }
            plan = eligible if campaign.fallback is None else fallback_plan(conn, tenant, campaign, eligible, now)
            experiments.append(arms := campaign_arms(conn, tenant, campaign, plan, now))
            plan = policies.screen(conn, cipher, campaign, eligible, arms.sent_now(plan), config.contact_ids, rule)
            for content in campaign.channels:
                for contact in plan[content.channel]:
                    unsubscribe_url = f"{gateway_url}/unsubscribe/{tenant}/{sign_unsubscribe(tenant, contact['id'], campaign.name)}"
                    variables = {"unsubscribe_url": unsubscribe_url, "deep_link_token": sign_deep_link(tenant, contact["id"])}
                    worded = arms.content(content, contact["id"])  # the contact's A/B variant, if any
                    if (rendered := policies.render(campaign, worded, contact, variables, senders[campaign.name].render)) is None:
                        continue
                    text, html = rendered.text, rendered.html
                    if content.channel in TRACKED_CHANNELS:

                        def tracked(url: str, contact_id: int = contact["id"], channel: str = content.channel) -> str:
                            token = sign_click(tenant, campaign.name, campaign.step, contact_id, channel, url)
                            return f"{gateway_url}/c/{tenant}/{token}"

                        text = rewrite_links(text, tracked, keep={unsubscribe_url})
                        html = rewrite_links(html, tracked, keep={unsubscribe_url}) if html else html
                    rows.append(
                        {
                            "campaign": campaign.name,
                            "step": campaign.step,
                            "channel": content.channel,
                            "provider": str(tenant_accounts.provider_for(content.channel)),
                            "contact_id": contact["id"],
                            "address": str(contact["address"]),
                            "subject": rendered.subject,
                            "text": text,
                            "html": html,
                            "buttons": json.dumps([(b.label, b.callback_data) for b in rendered.buttons], ensure_ascii=False),
                            "unsubscribe_url": unsubscribe_url if content.channel == "email" else None,
                            "attachments": json.dumps([a.model_dump() for a in content.attachments], ensure_ascii=False),
                            "template": json.dumps(
                                None
                                if rendered.template is None
                                else {"template_id": rendered.template.id, "language": rendered.template.language, "variables": rendered.template_variables},
                                ensure_ascii=False,
                            ),
                            "variant": arms.variant(contact["id"]),
                        }
                    )
                audience = len(eligible[content.channel])
                summary.append((campaign.name, content.channel, candidates, audience, candidates - audience, len(plan[content.channel])))
            policies.finish(conn, campaign, config.contact_ids)
    context.log.info(f"{len(due)} due campaign(s), {len(rows)} messages rendered")
    return dg.Output(
        pd.DataFrame(rows, columns=MESSAGE_COLUMNS),
        metadata={
            "messages": len(rows),
            "messages_by_language": dg.MetadataValue.md(messages_by_language(senders)),
            "campaigns": dg.MetadataValue.md(
                markdown_table(
                    ["campaign", "channel", "segment members (or triggered)", "audience", "excluded (no consent/address/rule)", "to send now"],
                    summary,
                    empty="No campaign is due.",
                )
            ),
            **policies.metadata(),
            "experiments": dg.MetadataValue.md(
                markdown_table(["campaign", "arm", "contacts", "message now (the ledger skips those already sent)"], arms_table_rows(experiments), empty="No A/B test among these campaigns.")
            ),
        },
    )
