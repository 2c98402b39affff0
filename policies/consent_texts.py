"""Consent texts (``consent_texts.yaml``): the exact words a person agreed to, versioned.

A consent event names the text it rests on by its version, the sha256 of the exact text, so a
text can never be edited under an event that cites it: an edited text is a new version. Texts
are kept per tenant × purpose × language, oldest first; the last one is the current text, which
a decision is recorded with unless its source names an earlier version.
"""

from __future__ import annotations

import hashlib

from pydantic import Field

from policies.consent_purposes import Purpose
from policies.fields import NonBlank, StrictModel, TenantId


def text_version(text: str) -> str:
    """The version of a consent text: sha256 of its exact UTF-8 bytes."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class ConsentTextsFile(StrictModel):
    # tenant → purpose → language → texts, oldest first
    texts: dict[TenantId, dict[Purpose, dict[NonBlank, list[NonBlank]]]] = Field(default_factory=dict)

    def current(self, tenant: str, purpose: Purpose, language: str | None) -> str | None:
        """The version of the tenant's current text for ``purpose`` in ``language`` (else the first
        language listed), or None when the tenant has no text for it."""
        by_language = self.texts.get(tenant, {}).get(purpose, {})
        versions = by_language.get(language or "") or next(iter(by_language.values()), [])
        return text_version(versions[-1]) if versions else None

    def text(self, tenant: str, version: str) -> str | None:
        """The text of ``version`` among the tenant's texts, or None when it is not one of them."""
        for by_language in self.texts.get(tenant, {}).values():
            for versions in by_language.values():
                for text in versions:
                    if text_version(text) == version:
                        return text
        return None
