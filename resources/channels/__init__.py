"""Channel connectors (one provider API call per send) and their webhook verification/parsing."""

from resources.channels.base import (
    CallbackEvent,
    ChannelConnector,
    OutboundMessage,
    SendResult,
)
from resources.channels.mailgun import MailgunConnector
from resources.channels.telegram import TelegramConnector

__all__ = [
    "CallbackEvent",
    "ChannelConnector",
    "MailgunConnector",
    "OutboundMessage",
    "SendResult",
    "TelegramConnector",
]
