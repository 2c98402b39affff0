"""38-FZ art. 18.1 marking of advertising messages: the «Реклама» label, the advertiser and the
ORD's ``erid`` token, shown in every rendered advertising message.

The law asks every online advertisement distributed in Russia to carry the label, the advertiser
(or a link to a page naming them) and the creative's identifier (erid) that an advertising data
operator (ORD) issued when the creative was registered. The ORD's practice is to show the token
with the creative and to pass it in the creative's links as the ``erid`` URL parameter; we do
both: a footer in every text part and in the HTML part of an e-mail (appended to the template
sources by ``policies/template_rendering.py``, so channel limits count it), and ``erid=<token>``
on each link of the message (``with_erid``, applied by the campaign asset before click tracking).

A campaign without the marking is accepted when the YAML loads (the ORD issues the erid only after
the creative is registered, which comes after the campaign is drafted) and refused when it is
about to START (``marking_refusal``): nothing is rendered or sent.
"""

from __future__ import annotations

from typing import Annotated
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from pydantic import StringConstraints

from policies.consent_purposes import CampaignPurpose
from policies.fields import NonBlank, StrictModel

AD_LABEL = "Реклама"
# ORDs issue tokens of Latin letters and digits (e.g. "2VtzqvYkmGf", "LjN8KbH5X"); anything else is a typo.
Erid = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9]{4,64}$")]


class AdvertisingMarking(StrictModel):
    """``advertising: {advertiser: "ООО «Ромашка», ИНН 7701234567", erid: "2VtzqvYkmGf"}`` on a campaign."""

    advertiser: NonBlank  # name and INN, or a link to the page that names the advertiser
    erid: Erid
    label: NonBlank = AD_LABEL  # the law's word; kept overridable only for «Реклама.» styling variants


def marking_refusal(name: str, purpose: CampaignPurpose, marking: AdvertisingMarking | None) -> str | None:
    """Why an advertising campaign may not start, or None when it may."""
    if purpose != CampaignPurpose.ADVERTISING or marking is not None:
        return None
    return (
        f"campaign {name!r} is advertising (purpose: advertising, the default) but has no "
        "`advertising: {advertiser: …, erid: …}` block: 38-FZ art. 18.1 requires the «Реклама» label, the advertiser "
        "and the ORD's erid token on every advertising message. Register the creative with an ORD and add them, "
        "or set `purpose: transactional` if this is a service message. Nothing was sent."
    )


def footer_text(marking: AdvertisingMarking) -> str:
    return f"{marking.label}. Рекламодатель: {marking.advertiser}. erid: {marking.erid}"


def with_erid(url: str, erid: str) -> str:
    """``url`` with ``erid=<token>`` as its last query parameter (replacing one already there)."""
    parts = urlsplit(url)
    query = [(key, value) for key, value in parse_qsl(parts.query, keep_blank_values=True) if key != "erid"]
    return urlunsplit(parts._replace(query=urlencode([*query, ("erid", erid)])))
