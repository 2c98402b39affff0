"""Templates in the campaigns domain: the ``message_templates`` asset (the tenant's library, its
versions and their recorded history) and what a campaign run needs before its first render —
the 38-FZ marking check, the immutability check of the versions it pins, and a renderer that adds
``erid`` to links and counts messages by language.
"""


import dataclasses
import datetime as dt
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

import dagster as dg
import sqlalchemy as sa

from orchestrator_assets.groups import CAMPAIGNS
from orchestrator_assets.partitions import tenant_partitions
from orchestrator_assets.tables import markdown_table
from orchestrator_assets.template_history import TemplateVersionChanged, record_versions
from policies.ad_marking import marking_refusal, with_erid
from policies.campaigns import Campaign, ChannelContent
from policies.channels import Channel
from policies.loader import PolicyBundle, load_bundle
from policies.rendering import RenderedMessage
from policies.sms_segments import segments as sms_segments
from policies.template_library import LibraryTemplate, pinned_versions, resolve
from policies.template_rendering import CampaignRenderer
from resources.links import rewrite_links
from resources.opstore import OperationalStore

INLINE = "inline"  # the language column of a channel written inline in campaigns.yaml
SMS_COST_NOTE = "cost = segments × the provider's price per segment; no prices are configured, so only segments are counted"


class CampaignSender:
    """One campaign's renderer for a run: language choice and marking (``CampaignRenderer``),
    ``erid`` on every link but the unsubscribe one, and counts by channel × language."""

    def __init__(self, campaign: Campaign, library: Mapping[str, LibraryTemplate]):
        self.renderer = CampaignRenderer(campaign, library)
        self.messages: Counter[tuple[str, str]] = Counter()
        self.sms_segments: Counter[tuple[str, str]] = Counter()

    def render(self, content: ChannelContent, contact: Mapping[str, Any], variables: Mapping[str, Any]) -> RenderedMessage:
        rendered = self.renderer.render(content, contact, variables)
        message = rendered.message
        key = (content.channel, rendered.language or INLINE)
        self.messages[key] += 1
        if content.channel == Channel.SMS:
            self.sms_segments[key] += sms_segments(message.text).segments
        marking = self.renderer.marking
        if marking is None:
            return message
        keep = {variables["unsubscribe_url"]} if "unsubscribe_url" in variables else set()

        def tag(text: str | None) -> str | None:
            return rewrite_links(text, lambda url: with_erid(url, marking.erid), keep=keep) if text else text

        return dataclasses.replace(message, text=tag(message.text), html=tag(message.html))


def start_campaigns(conn: sa.Connection, bundle: PolicyBundle, tenant: str, due: Iterable[Campaign], now: dt.datetime, run_id: str) -> dict[str, CampaignSender]:
    """A sender per due campaign, once every one of them may start: an advertising campaign
    without its 38-FZ marking, or a pinned template version changed since it was first used,
    fails the run before anything is rendered. The versions used are recorded (first use)."""
    due = list(due)
    refusals = [why for campaign in due if (why := marking_refusal(campaign.name, campaign.purpose, campaign.advertising))]
    if refusals:
        raise dg.Failure("\n".join(refusals))
    library = bundle.templates.get(tenant, {})
    for campaign in due:
        used = [(ref.name, resolve(library, ref)) for ref in pinned_versions(campaign)]
        try:
            record_versions(conn, tenant, used, now, campaign.name, run_id)
        except TemplateVersionChanged as exc:
            raise dg.Failure(f"campaign {campaign.name!r} cannot start: {exc}") from None
    return {campaign.name: CampaignSender(campaign, library) for campaign in due}


def messages_by_language(senders: Mapping[str, CampaignSender]) -> str:
    """Markdown: messages rendered per campaign × channel × language (``inline`` = no library), SMS segments."""
    rows = [
        (name, channel, language, count, sender.sms_segments.get((channel, language), "—") if channel == Channel.SMS else "—")
        for name, sender in senders.items()
        for (channel, language), count in sorted(sender.messages.items())
    ]
    table = markdown_table(["campaign", "channel", "language", "messages", "SMS segments"], rows, empty="Nothing rendered.")
    return table + (f"\n\nSMS: {SMS_COST_NOTE}." if any(sender.sms_segments for sender in senders.values()) else "")


@dg.asset(key=[CAMPAIGNS, "message_templates"], group_name=CAMPAIGNS, partitions_def=tenant_partitions)
def message_templates(context: dg.AssetExecutionContext, opstore: OperationalStore) -> dg.MaterializeResult:
    """The tenant's template library (``templates.yaml``): every version with its languages per
    channel, declared variables, content hash and when it was first seen. Materialising records
    versions seen for the first time, and fails on a version whose content changed since — before
    a campaign pinning it would."""
    tenant = context.partition_key
    bundle = load_bundle()
    library = bundle.templates.get(tenant, {})
    versions = [(name, version) for name, template in library.items() for version in template.versions]
    with opstore.engine().begin() as conn:
        try:
            history = record_versions(conn, tenant, versions, dt.datetime.now(dt.UTC), "", context.run_id)
        except TemplateVersionChanged as exc:
            raise dg.Failure(str(exc)) from None
    pinned: dict[tuple[str, int], set[str]] = {}
    for campaign in bundle.campaigns.get(tenant, {}).values():
        for content in campaign.channels:
            if (ref := content.message_template) is not None:
                pinned.setdefault((ref.name, ref.version), set()).add(campaign.name)
    rows = []
    for name, version in versions:
        seen = history[name, version.version]
        languages = "; ".join(f"{channel}: {', '.join(sorted(langs))}" for channel, langs in version.channels.items())
        variables = ", ".join(f"{n}: {v.type}" + (f" = {v.default}" if v.default is not None else "") for n, v in version.variables.items()) or "—"
        rows.append((name, version.version, languages, f"{version.fallback_language}", variables, version.content_hash[:12],
                     f"{seen.first_seen_at:%Y-%m-%d %H:%M} UTC", seen.first_campaign or "—", ", ".join(sorted(pinned.get((name, version.version), ()))) or "—"))  # fmt: skip
    table = markdown_table(
        ["template", "version", "languages per channel", "fallback", "variables", "content hash", "first seen", "first used by", "pinned by"],
        rows,
        empty="This tenant has no library templates (templates.yaml).",
    )
    return dg.MaterializeResult(metadata={"templates": len(library), "versions": len(versions), "library": dg.MetadataValue.md(table)})
