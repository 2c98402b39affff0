"""A campaign channel's pin on a library template: ``message_template: {name, version, values}``.

Its own module so ``policies/campaigns.py`` can hold the field without importing the library
(``policies/template_library.py``), which itself builds on the campaign models. The reference is
checked against ``templates.yaml`` when the bundle loads (``template_library.reference_problems``).
The key is ``message_template`` because ``template`` already names a WhatsApp provider template.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, StringConstraints

from policies.fields import Slug, StrictModel

VariableName = Annotated[str, StringConstraints(pattern=r"^[a-z_][a-z0-9_]{0,63}$")]


class MessageTemplateRef(StrictModel):
    """Render this channel from version ``version`` of library template ``name``, with ``values``
    for its declared variables (the others take their defaults)."""

    name: Slug
    version: int = Field(ge=1)
    values: dict[VariableName, Any] = Field(default_factory=dict)
