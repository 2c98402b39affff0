"""Rendering one campaign message for one contact, safely and loudly.

A render that cannot be completed (a missing variable, a text over the channel's limit or SMS
segment cap) raises ``TemplateRenderError`` naming campaign, channel and part, so the caller can
skip or fail that one send with a reason.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from jinja2 import TemplateError

from policies.campaigns import Button, ChannelContent, TemplateSpec
from policies.sms_segments import segments as sms_segments
from policies.templates import ContactFields, compiled_template


class TemplateRenderError(ValueError):
    """A template could not be rendered for a contact; the message names campaign, channel,
    part and the missing variable, so the caller can skip or fail that send with a reason."""


@dataclass(frozen=True)
class RenderedMessage:
    subject: str | None
    text: str
    html: str | None
    buttons: tuple[Button, ...]
    template_variables: tuple[str, ...] = ()
    template: TemplateSpec | None = None  # the WhatsApp approved template the variables fill (inline or library)


def _where(content: ChannelContent, part: str) -> str:
    return f"campaign {content.campaign or '?'!r}, channel {content.channel}, {part}"


def render_message(channel_content: ChannelContent, contact: Mapping[str, Any], extra: Mapping[str, Any]) -> RenderedMessage:
    """Render one channel's message for one contact.

    ``contact`` is the contact row; NULL or empty fields are left out, so ``{{ contact.first_name }}``
    fails for a nameless contact unless the template asks for a ``default``. ``extra`` holds the
    other variables (``unsubscribe_url`` …) and must not redefine ``contact``. The subject is
    collapsed to one line because contact data may contain newlines and a subject cannot.
    """
    if "contact" in extra:
        raise ValueError("extra must not contain 'contact'; pass the contact row as `contact`")
    if channel_content.message_template is not None:
        raise ValueError(f"{_where(channel_content, 'text')} pins a library template: render it with policies.template_rendering.CampaignRenderer")
    context = {**extra, "contact": ContactFields({k: v for k, v in contact.items() if v is not None and v != ""})}
    channel = channel_content.channel

    def render(part: str, source: str | None, html: bool = False) -> str | None:
        if source is None:
            return None
        try:
            return compiled_template(source, html).render(context)
        # Anything a template expression raises is the template's failure for this contact.
        except (TemplateError, TypeError, ValueError, ArithmeticError) as exc:
            raise TemplateRenderError(f"{_where(channel_content, part)}: {exc}") from exc

    subject = render("subject", channel_content.subject)
    text = render("text", channel_content.text)
    html = render("html", channel_content.html, html=True)
    limit = channel.traits.max_text_chars
    if limit is not None and len(text) > limit:
        where = _where(channel_content, "text")
        raise TemplateRenderError(f"{where}: rendered {len(text)} characters; the limit is {limit}")
    if channel.traits.max_sms_segments is not None:
        info = sms_segments(text)
        if info.segments > channel.traits.max_sms_segments:
            raise TemplateRenderError(
                f"{_where(channel_content, 'text')}: rendered {info.segments} SMS segments ({info.encoding}, "
                f"{info.units} units); the cap is {channel.traits.max_sms_segments}"
            )
    template = channel_content.template
    variables = tuple(
        render(f"template variable {number}", source) for number, source in enumerate(template.variables if template else (), start=1)
    )
    return RenderedMessage(
        subject=" ".join(subject.split()) if subject is not None else None,
        text=text,
        html=html,
        buttons=tuple(channel_content.buttons),
        template_variables=variables,
        template=template,
    )
