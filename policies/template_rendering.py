"""Rendering a campaign's channels for one contact: inline or library content, the contact's
language, and the 38-FZ marking of an advertising campaign.

The concrete content (the library parts in the chosen language, with the marking footer appended
to its sources) is built once per channel × language and handed to ``policies.rendering.
render_message``, so the channel limits (Telegram/VK length, SMS segments) are checked on the
message as the reader gets it, marking included.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from policies.ad_marking import AdvertisingMarking, footer_text
from policies.campaigns import Campaign, ChannelContent
from policies.consent_purposes import CampaignPurpose
from policies.rendering import RenderedMessage, render_message
from policies.template_library import LibraryTemplate, Version, library_content, resolve

FOOTER_VARIABLE = "ad_marking_footer"  # set by the renderer only; templates cannot declare it
_TEXT_FOOTER = "\n\n{{ " + FOOTER_VARIABLE + " }}\n"
_HTML_FOOTER = '<p class="ad-marking" style="font-size:12px;color:#666">{{ ' + FOOTER_VARIABLE + " }}</p>\n"


@dataclass(frozen=True)
class ContactMessage:
    message: RenderedMessage
    language: str | None  # the library language rendered; None for inline content


def _marked(content: ChannelContent) -> ChannelContent:
    """``content`` with the marking footer as the last paragraph of the text and of the HTML
    (before ``</body>`` when there is one). Built from the sources, so limits count the footer."""
    update: dict[str, str] = {"text": content.text.rstrip() + _TEXT_FOOTER}
    if content.html is not None:
        head, closing, tail = content.html.rpartition("</body>")
        update["html"] = f"{head}{_HTML_FOOTER}{closing}{tail}" if closing else content.html.rstrip() + "\n" + _HTML_FOOTER
    return content.model_copy(update=update)


class CampaignRenderer:
    """Renders one campaign for many contacts; caches the concrete content per channel × language."""

    def __init__(self, campaign: Campaign, library: Mapping[str, LibraryTemplate]):
        self.campaign = campaign
        self.library = library
        self.marking: AdvertisingMarking | None = campaign.advertising if campaign.purpose == CampaignPurpose.ADVERTISING else None
        # Keyed by the content object: an A/B variant hands in its own content for a channel
        # (``orchestrator_assets/experiments/arms.py`` keeps one object per variant × channel).
        self._contents: dict[tuple[int, str | None], ChannelContent] = {}
        self._values: dict[int, dict[str, Any]] = {}

    def version(self, content: ChannelContent) -> Version | None:
        return resolve(self.library, content.message_template) if content.message_template else None

    def language(self, content: ChannelContent, contact: Mapping[str, Any]) -> str | None:
        version = self.version(content)
        return version.language_for(content.channel, contact.get("language")) if version else None

    def _content(self, content: ChannelContent, language: str | None) -> ChannelContent:
        key = (id(content), language)
        if key not in self._contents:
            version = self.version(content)
            concrete = content if version is None else library_content(version, content, language)
            self._contents[key] = _marked(concrete) if self.marking else concrete
            self._values[id(content)] = version.values(content.message_template.values) if version else {}
        return self._contents[key]

    def render(self, content: ChannelContent, contact: Mapping[str, Any], extra: Mapping[str, Any]) -> ContactMessage:
        """``content`` (a channel of this campaign) for ``contact``; ``extra`` as for ``render_message``."""
        language = self.language(content, contact)
        concrete = self._content(content, language)
        variables = {**self._values[id(content)], **extra}
        if self.marking:
            variables |= {"erid": self.marking.erid, FOOTER_VARIABLE: footer_text(self.marking)}
        return ContactMessage(render_message(concrete, contact, variables), language)
