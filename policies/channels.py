"""Providers and channels, and what each channel's messages may contain (``ChannelTraits``).

Validation (campaigns), rendering and account choice (accounts) read a channel's traits only, so
a new channel is one member here plus its providers' accounts.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from policies.sms_segments import MAX_SEGMENTS


class Provider(StrEnum):
    """An external delivery service; each tenant holds at most one account per provider."""

    TELEGRAM = "telegram"
    MAILGUN = "mailgun"
    SENDGRID = "sendgrid"
    VK = "vk"
    SMSC = "smsc"
    SMSRU = "smsru"
    TWILIO = "twilio"
    D360 = "d360"
    GREENAPI = "greenapi"


@dataclass(frozen=True)
class ChannelTraits:
    """What a channel's messages may contain; the validators and the renderer read only this."""

    providers: tuple[Provider, ...]  # who can carry this channel, in default preference order
    needs_subject: bool = False
    allows_html: bool = False
    allows_buttons: bool = False
    max_text_chars: int | None = None
    needs_unsubscribe_link: bool = False
    allows_template: bool = False  # provider-approved templates (WhatsApp outside the 24-hour window)
    attachment_kinds: frozenset[str] = frozenset()  # what every provider of the channel can attach
    max_sms_segments: int | None = None  # GSM-7/UCS-2 segments, checked after rendering


class Channel(StrEnum):
    """A messaging channel; validation and rendering follow from its traits."""

    TELEGRAM = "telegram", ChannelTraits(
        providers=(Provider.TELEGRAM,),
        allows_buttons=True,
        max_text_chars=4096,  # the user leaves by blocking the bot: no unsubscribe link needed
        attachment_kinds=frozenset({"photo", "document"}),
    )
    EMAIL = "email", ChannelTraits(
        providers=(Provider.MAILGUN, Provider.SENDGRID),
        needs_subject=True,
        allows_html=True,
        needs_unsubscribe_link=True,
    )
    # VK attachments are media ids uploaded beforehand ("photo-123_456").
    VK = "vk", ChannelTraits(
        providers=(Provider.VK,), allows_buttons=True, max_text_chars=4096, attachment_kinds=frozenset({"photo", "document"})
    )
    SMS = "sms", ChannelTraits(providers=(Provider.SMSC, Provider.SMSRU, Provider.TWILIO), max_sms_segments=MAX_SEGMENTS)
    WHATSAPP = "whatsapp", ChannelTraits(
        providers=(Provider.D360, Provider.TWILIO, Provider.GREENAPI),
        allows_buttons=True,
        max_text_chars=4096,
        allows_template=True,
        attachment_kinds=frozenset({"photo", "document"}),
    )

    traits: ChannelTraits

    def __new__(cls, value: str, traits: ChannelTraits) -> Channel:
        member = str.__new__(cls, value)
        member._value_ = value
        member.traits = traits
        return member
