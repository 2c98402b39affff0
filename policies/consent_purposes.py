"""What a consent is for, where its proof came from, and which consents a send needs.

Russian law asks for separate consents, so the ledger keeps them apart:

* ``processing`` — consent to the processing of personal data (152-FZ art. 9). It is not about a
  channel, so it is recorded on the pseudo-channel ``any``.
* ``advertising`` — consent to receive advertising on one channel (38-FZ art. 18); what the
  import's ``consent_<channel>`` columns mean.
* ``transactional`` — consent to service messages on one channel (``consent_<channel>_transactional``).

A campaign declares its purpose (advertising unless it says ``transactional``); the send path then
asks for a granted consent of that purpose on the channel and, when the policy says so
(``consent.require_processing``), a granted ``processing`` consent as well.
"""

from __future__ import annotations

from enum import StrEnum

ANY_CHANNEL = "any"


class Purpose(StrEnum):
    PROCESSING = "processing"
    ADVERTISING = "advertising"
    TRANSACTIONAL = "transactional"


class CampaignPurpose(StrEnum):
    """The purposes a campaign may declare; processing is a precondition, never a campaign's aim."""

    ADVERTISING = "advertising"
    TRANSACTIONAL = "transactional"


class SourceKind(StrEnum):
    """How the decision reached us; ``source_ref`` then names the exact record of that kind."""

    IMPORT = "import"  # a contact file: file and row
    BOT_COMMAND = "bot_command"  # /start, /stop in a messenger: inbox row
    WEB_FORM = "web_form"
    API = "api"
    PROVIDER_WEBHOOK = "provider_webhook"  # a provider's callback or answer: inbox row, send id, HLR lookup
    OPERATOR = "operator"
    MERGE = "merge"  # copied from a merged contact's history


def subject_channel(purpose: Purpose, channel: str) -> str:
    """The channel a consent of ``purpose`` is recorded on: processing is channel-independent."""
    return ANY_CHANNEL if purpose == Purpose.PROCESSING else channel


def required_consents(purpose: CampaignPurpose, channel: str, require_processing: bool) -> list[tuple[Purpose, str]]:
    """Every (purpose, channel) that must be granted before a ``purpose`` message goes out on ``channel``."""
    needed = [(Purpose(purpose.value), channel)]
    if require_processing:
        needed.append((Purpose.PROCESSING, ANY_CHANNEL))
    return needed
