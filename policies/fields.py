"""Field types and the strict base model shared by every policy file.

Every model forbids unknown keys: a misspelt optional key (``subjcet:``) would otherwise be
silently dropped. Secrets never appear in policy files, only the NAMES of the environment
variables that hold them (``EnvVarName``).
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, StringConstraints

TenantId = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{1,63}$")]
# Segment/campaign/step/purpose names end up in ledger keys and URLs: keep them slugs that fit
# the operational-store columns (segment and campaign are String(128), step String(64)).
Slug = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,127}$")]
StepName = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,63}$")]
_ENV_VAR_NAME = re.compile(r"[A-Z][A-Z0-9_]{2,127}")


def _env_var_name(value: Any) -> str:
    """Reject anything but an env-var name without echoing it: it may be a pasted secret."""
    if not isinstance(value, str) or not _ENV_VAR_NAME.fullmatch(value):
        raise ValueError("must be the NAME of an environment variable (A-Z, 0-9, _), not a secret (value not shown)")
    return value


EnvVarName = Annotated[str, BeforeValidator(_env_var_name)]
NonBlank = Annotated[str, StringConstraints(min_length=1, pattern=r"\S")]


class StrictModel(BaseModel):
    """Frozen, and refuses keys it does not define."""

    model_config = ConfigDict(extra="forbid", frozen=True)
