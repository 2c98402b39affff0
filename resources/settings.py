"""The one place that reads deployment settings.

Everything that depends on where the product runs (embedded default vs production) asks
`get_settings()` at run time, never at import time, so tests can point a fresh process or a
fresh call at other directories and databases without reloading modules.

Embedded default (nothing set): all state under ``<repo>/.algor`` — Dagster on SQLite, the
operational store on SQLite, the warehouse on chDB, providers answered by the local sandbox.
Production: ``ALGOR_ENV=production`` plus ``ALGOR_DATABASE_URL`` (Postgres) and
``ALGOR_WAREHOUSE_DSN`` (``http(s)://user:pass@host:8123/db``); provider secrets must then be
set explicitly.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]

EMBEDDED = "embedded"
PRODUCTION = "production"


class SettingsError(RuntimeError):
    """A deployment setting is missing or malformed; the message says which and how to fix it."""


@dataclass(frozen=True)
class Settings:
    environment: str
    home: Path
    database_url: str
    warehouse_dsn: str
    sandbox_url: str
    gateway_url: str
    dbt_target: str

    @property
    def is_embedded(self) -> bool:
        return self.environment == EMBEDDED

    @property
    def warehouse_is_chdb(self) -> bool:
        return self.warehouse_dsn.startswith("chdb:")

    @property
    def reports_dir(self) -> Path:
        return self.home / "reports"

    def configured_secret(self, name: str) -> str | None:
        """The secret if it is explicitly set, else None (no embedded derivation)."""
        return os.environ.get(name) or None

    def secret(self, name: str) -> str:
        """A provider credential by env-var name.

        In the embedded default a missing secret is derived deterministically from its name, so
        the connectors and the provider sandbox agree with zero setup. In production a missing
        secret is an error: we never send with an empty token.
        """
        value = os.environ.get(name)
        if value:
            return value
        if self.is_embedded:
            return "sbx_" + hashlib.sha256(name.encode()).hexdigest()[:24]
        raise SettingsError(f"secret {name} is not set (required when ALGOR_ENV=production)")


# What get_settings reads. It is memoised on their values and the working directory (a relative
# ALGOR_HOME depends on it): building Settings resolves paths (~70 µs), and the webhook gateway
# asks on every request.
SETTINGS_VARIABLES = ("ALGOR_ENV", "ALGOR_HOME", "ALGOR_DATABASE_URL", "ALGOR_WAREHOUSE_DSN", "ALGOR_SANDBOX_URL", "ALGOR_GATEWAY_URL", "ALGOR_DBT_TARGET")


def get_settings() -> Settings:
    """Read the current settings from the environment (cheap; call it where you need it)."""
    return _settings(tuple(os.environ.get(name) for name in SETTINGS_VARIABLES), os.getcwd())


@lru_cache(maxsize=32)
def _settings(values: tuple[str | None, ...], cwd: str) -> Settings:
    variables = {name: value for name, value in zip(SETTINGS_VARIABLES, values, strict=True) if value is not None}
    env = variables.get("ALGOR_ENV", EMBEDDED)
    if env not in (EMBEDDED, PRODUCTION):
        raise SettingsError(f"ALGOR_ENV={env!r}: expected {EMBEDDED!r} or {PRODUCTION!r}")
    home = Path(cwd, variables.get("ALGOR_HOME", REPO_ROOT / ".algor")).resolve()
    database_url = variables.get("ALGOR_DATABASE_URL") or f"sqlite:///{home / 'operational.sqlite3'}"
    warehouse_dsn = variables.get("ALGOR_WAREHOUSE_DSN") or f"chdb://{home / 'warehouse'}"
    if env == PRODUCTION:
        for key, value in (("ALGOR_DATABASE_URL", database_url), ("ALGOR_WAREHOUSE_DSN", warehouse_dsn)):
            if key not in variables:
                raise SettingsError(f"{key} must be set when ALGOR_ENV=production (got default {value})")
    return Settings(
        environment=env,
        home=home,
        database_url=database_url,
        warehouse_dsn=warehouse_dsn,
        sandbox_url=variables.get("ALGOR_SANDBOX_URL", "http://127.0.0.1:8765").rstrip("/"),
        gateway_url=variables.get("ALGOR_GATEWAY_URL", "http://127.0.0.1:8766").rstrip("/"),
        dbt_target=variables.get("ALGOR_DBT_TARGET") or ("embedded" if warehouse_dsn.startswith("chdb:") else "server"),
    )
