"""Grouping rendered e-mails into provider batch calls (Mailgun recipient variables, SendGrid
personalizations).

The caller renders every message fully, so two messages of one campaign usually differ only in the
recipient's own unsubscribe link (in the body and in List-Unsubscribe). Both batch APIs can put a
per-recipient value into a shared body: Mailgun substitutes `%recipient.<key>%`, SendGrid the
`substitutions` of each personalization. So each message's own unsubscribe URL is replaced by a
placeholder, and messages whose bodies are then identical share one call. Anything else that differs
(a first name in the greeting, a per-recipient price) keeps messages apart: such a campaign is sent one
call per message, which is correct, only slower.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass

from resources.channels.base import OutboundMessage


@dataclass(frozen=True)
class Batch:
    """Messages that go out in one provider call, with their shared (placeholder) content."""

    indexes: tuple[int, ...]  # positions in the list given to `plan`
    subject: str | None  # None when subjects may differ per recipient (see `plan`)
    text: str
    html: str | None
    unsubscribe: bool  # every member has an unsubscribe_url (the placeholder may appear above)


def templated(value: str | None, url: str | None, placeholder: str) -> str | None:
    """`value` with `url` (raw or HTML-escaped, as it appears in an href) replaced by `placeholder`."""
    if not value or not url:
        return value
    for form in {url, html.escape(url)}:
        value = value.replace(form, placeholder)
    return value


def plan(
    messages: Sequence[OutboundMessage], placeholder: str, max_batch: int, shared_subject: bool = True
) -> list[Batch]:
    """Split `messages` into batches of at most `max_batch`, in first-appearance order.

    Members of a batch have identical templated text and html (and subject, when `shared_subject`;
    SendGrid sets the subject per recipient, Mailgun per call) and pairwise different addresses
    (compared case-insensitively): both providers key per-recipient data by address, and neither
    takes an address twice in one call.
    """
    batches: list[list[int]] = []
    keys: list[tuple[str | None, str | None, str | None, bool]] = []
    addresses: list[set[str]] = []
    by_key: dict[tuple[str | None, str | None, str | None, bool], list[int]] = {}
    for index, message in enumerate(messages):
        url = message.unsubscribe_url
        key = (
            templated(message.subject, url, placeholder) if shared_subject else None,
            templated(message.text, url, placeholder),
            templated(message.html, url, placeholder),
            url is not None,
        )
        address = message.address.strip().lower()
        candidates = by_key.setdefault(key, [])
        slot = next((n for n in candidates if len(batches[n]) < max_batch and address not in addresses[n]), None)
        if slot is None:
            slot = len(batches)
            batches.append([])
            keys.append(key)
            addresses.append(set())
            candidates.append(slot)
        batches[slot].append(index)
        addresses[slot].add(address)
    return [
        Batch(tuple(indexes), subject, text or "", html_body, unsubscribe)
        for indexes, (subject, text, html_body, unsubscribe) in zip(batches, keys, strict=True)
    ]
