"""The template preview: a library template (or a campaign's channels) rendered for a few sample
contacts on every channel it targets, shown in the run's metadata; writes nothing to the store or
the warehouse.

The samples are real contacts of the tenant, one per language first so every language shows, with
their personal fields masked (``policies/masking.py``) before rendering: a preview is read by
people who need the layout, not the address book, and run metadata is kept forever. Or the
operator gives ``sample_data`` (contact fields) instead. Texts appear as Markdown; each e-mail's
HTML, with its CSS inlined by css-inline as the e-mail connectors send it, is written to
``<ALGOR_HOME>/previews/<run id>/`` and linked. The store is read on a connection that is never
committed.
"""


from pathlib import Path
from typing import Any

import css_inline
import dagster as dg
import sqlalchemy as sa
from pydantic import Field

from orchestrator_assets.campaigns import TEMPLATE_COLUMNS
from orchestrator_assets.partitions import tenant_partitions
from orchestrator_assets.tables import markdown_table
from policies.campaigns import Campaign
from policies.channels import Channel
from policies.loader import load_bundle
from policies.masking import mask_value
from policies.rendering import TemplateRenderError
from policies.sms_segments import segments as sms_segments
from policies.template_rendering import CampaignRenderer
from resources.opstore import OperationalStore
from resources.opstore_schema import contacts
from resources.pii import tenant_cipher
from resources.settings import get_settings

SCANNED_CONTACTS = 500  # contacts looked at to find one per language


class TemplatePreviewConfig(dg.Config):
    template: str = Field(default="", description="Library template to preview (templates.yaml); or give `campaign`")
    version: int = Field(default=0, description="Its version; 0 = the newest")
    values: dict[str, str] = Field(default_factory=dict, description="Values for the template's declared variables (defaults otherwise)")
    campaign: str = Field(default="", description="Preview this campaign's channels instead (inline or library, with its 38-FZ marking)")
    sample_contacts: int = Field(default=3, ge=1, le=20, description="How many of the tenant's contacts to render for (personal fields masked)")
    sample_data: list[dict[str, str]] = Field(default_factory=list, description="Render for these contact fields instead of real contacts")


def preview_campaign(bundle, tenant: str, config: TemplatePreviewConfig) -> Campaign:
    """The campaign to render: the named one, or a stand-in whose every channel pins the template
    (transactional, so no marking: the marking is the campaign's, not the template's)."""
    if config.campaign:
        campaign = bundle.campaigns[tenant].get(config.campaign)
        if campaign is None:
            raise dg.Failure(f"campaign {config.campaign!r} is not defined for tenant {tenant!r} (known: {', '.join(sorted(bundle.campaigns[tenant]))})")
        return campaign
    template = bundle.templates[tenant].get(config.template)
    if template is None:
        raise dg.Failure(f"give `campaign`, or `template` one of: {', '.join(sorted(bundle.templates[tenant])) or 'none (templates.yaml)'}")
    version = template.versions[-1] if config.version == 0 else template.version(config.version)
    if version is None:
        raise dg.Failure(f"template {template.name!r} has no version {config.version} (has: {[v.version for v in template.versions]})")
    ref = {"name": template.name, "version": version.version, "values": config.values}
    try:
        version.values(config.values)
        return Campaign.model_validate(
            {"name": "template_preview", "tenant": tenant, "purpose": "transactional", "trigger": {"event": "telegram_start"},
             "channels": [{"channel": channel, "message_template": ref} for channel in version.channels]}  # fmt: skip
        )
    except ValueError as exc:
        raise dg.Failure(f"template {template.name!r} version {version.version}: {exc}") from None


def sample_contacts(opstore: OperationalStore, tenant: str, wanted: int) -> list[dict[str, Any]]:
    """Up to ``wanted`` contacts, one per language before a second of any; personal fields masked."""
    engine = opstore.engine()
    with engine.connect() as conn:  # never committed: a preview writes nothing
        rows = conn.execute(
            sa.select(*TEMPLATE_COLUMNS, contacts.c.data_key, contacts.c.pii)
            .where(contacts.c.tenant == tenant, contacts.c.merged_into.is_(None))
            .order_by(contacts.c.id)
            .limit(SCANNED_CONTACTS)
        ).mappings().all()
        by_language: dict[str, list] = {}
        for row in rows:
            by_language.setdefault((row["language"] or "").lower(), []).append(row)
        chosen = []
        for rank in range(wanted):  # round robin over the languages
            chosen += [group[rank] for group in by_language.values() if rank < len(group)]
        chosen = chosen[:wanted]
        cipher = tenant_cipher(conn, tenant) if chosen else None
        conn.rollback()
        samples = []
        for row in chosen:
            personal = cipher.open(row["data_key"], row["pii"])
            columns = {key: value for key, value in row.items() if key not in ("data_key", "pii")}
            samples.append(columns | {field: mask_value(field, value) for field, value in personal.items() if value is not None})
    return samples


def _fenced(text: str) -> str:
    return "```\n" + text.replace("```", "ʼʼʼ") + "\n```"


@dg.op(description="Render a template or a campaign for sample contacts on every channel; writes nothing but the HTML preview files.", out=dg.Out(dg.Nothing))
def template_preview(context: dg.OpExecutionContext, config: TemplatePreviewConfig, opstore: OperationalStore):
    tenant = context.partition_key
    bundle = load_bundle()
    campaign = preview_campaign(bundle, tenant, config)
    samples = [dict(d, id=-n) for n, d in enumerate(config.sample_data, start=1)] or sample_contacts(opstore, tenant, config.sample_contacts)
    if not samples:
        raise dg.Failure(f"tenant {tenant!r} has no contacts to preview with: give `sample_data`")
    renderer = CampaignRenderer(campaign, bundle.templates[tenant])
    out_dir = get_settings().home / "previews" / context.run_id
    gateway = get_settings().gateway_url
    summary, metadata = [], {}
    for content in campaign.channels:
        for number, contact in enumerate(samples, start=1):
            key = f"{content.channel}_{number}"
            variables = {"unsubscribe_url": f"{gateway}/unsubscribe/{tenant}/preview", "deep_link_token": "preview"}
            try:
                rendered = renderer.render(content, contact, variables)
            except TemplateRenderError as exc:
                summary.append((content.channel, number, contact.get("language") or "—", "—", f"render error: {exc}"))
                continue
            message = rendered.message
            notes = []
            if content.channel == Channel.SMS:
                info = sms_segments(message.text)
                notes.append(f"{info.segments} segment(s), {info.encoding}, {info.units} units; cost needs per-provider prices (none configured)")
            body = (f"**{message.subject}**\n\n" if message.subject else "") + _fenced(message.text)
            if message.template is not None:
                body += f"\n\nWhatsApp template `{message.template.id}` ({message.template.language}): {list(message.template_variables)}"
            metadata[key] = dg.MetadataValue.md(body)
            if message.html is not None:
                out_dir.mkdir(parents=True, exist_ok=True)
                path = out_dir / f"{campaign.name}-{key}-{rendered.language or 'inline'}.html"
                path.write_text(css_inline.inline(message.html), encoding="utf-8")
                metadata[f"{key}_html"] = dg.MetadataValue.path(str(path))
                notes.append(f"HTML: {path.name}")
            summary.append((content.channel, number, contact.get("language") or "—", rendered.language or "inline", "; ".join(notes) or "ok"))
    table = markdown_table(["channel", "sample", "contact language", "rendered in", "notes"], summary)
    context.log.info(f"previewed {campaign.name!r}: {len(summary)} renders for {len(samples)} sample contact(s)")
    yield dg.Output(None, metadata={"previews": dg.MetadataValue.md(table), **metadata})


@dg.job(
    partitions_def=tenant_partitions,
    description="Preview a library template or a campaign for sample contacts (masked) on every channel; writes nothing to the store or warehouse.",
)
def template_preview_job():
    template_preview()
