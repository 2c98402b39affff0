"""The one place that reads deployment settings.

Everything that depends on where the product runs (embedded default vs production) asks
`get_settings()` at run time, never at import time, so tests can point a fresh process or a
fresh call at other directories and databases without reloading modules.

Embedded default (nothing set): all state under ``<repo>/.algor`` — Dagster on SQLite, the
operational store on SQLite, the warehouse on chDB, providers answered by the local sandbox with
secrets random to this installation (``sandbox_secret``).
Production: ``ALGOR_ENV=production`` plus ``ALGOR_DATABASE_URL`` (Postgres) and
``ALGOR_WAREHOUSE_DSN`` (``http(s)://user:pass@host:8123/db``); provider secrets must then be
set explicitly.

A setting only a real deployment has (a PostgreSQL store, a ClickHouse server, a gateway URL that
is not loopback) without ``ALGOR_ENV=production`` is refused: that is a deployment whose operator
forgot ``ALGOR_ENV``, about to answer its providers with sandbox secrets. Tests and staging that
run the sandbox against such a setting on purpose name it in ``ALGOR_ALLOW_SANDBOX_WITH``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import os
import re
import secrets
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from urllib.parse import urlsplit

REPO_ROOT = Path(__file__).resolve().parents[1]

EMBEDDED = "embedded"
PRODUCTION = "production"
ALLOW_SANDBOX_WITH = "ALGOR_ALLOW_SANDBOX_WITH"
SANDBOX_KEY_FILE = "sandbox.key"
MASTER_KEY_FILE = "master.key"  # the embedded default's master key for PII at rest (resources/pii.py)
MASTER_KEY_VARIABLE = "ALGOR_MASTER_KEY"
PREVIOUS_MASTER_KEY_VARIABLE = "ALGOR_MASTER_KEY_PREVIOUS"
SANDBOX_SECRET_PREFIX = "sbx_"  # marks a value as a sandbox secret wherever it shows up (configs, logs)
_SANDBOX_KEY_TEXT = re.compile(r"[0-9a-f]{64}\n?")


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
    import_inbox: Path  # drop folder of contact CSVs, one sub-folder per tenant (sensors/imports.py)

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

        In the embedded default a missing secret is this installation's sandbox secret for it
        (``sandbox_secret``), so the connectors, the provider sandbox and the gateway agree with
        zero setup. In production a missing secret is an error: we never send with an empty token.
        """
        value = os.environ.get(name)
        if value:
            return value
        if self.is_embedded:
            return sandbox_secret(self.home, name)
        raise SettingsError(f"secret {name} is not set (required when ALGOR_ENV=production)")

    def master_key(self) -> bytes:
        """The 32-byte key that wraps every tenant's data keys (envelope encryption of PII at rest).

        ``ALGOR_MASTER_KEY`` (base64 of 32 bytes) when set: production must set it, from a secret
        store, and never keep it beside the database it protects. The embedded default makes a
        random one per installation (``<home>/master.key``, mode 0600), so a copied database file
        alone reads as ciphertext there too.
        """
        if key := _master_key_variable(MASTER_KEY_VARIABLE):
            return key
        if not self.is_embedded:
            raise SettingsError(f"{MASTER_KEY_VARIABLE} is not set (required when ALGOR_ENV=production)")
        return installation_key(self.home, MASTER_KEY_FILE)

    def previous_master_key(self) -> bytes | None:
        """The master key being replaced, while a rotation is under way (``ALGOR_MASTER_KEY_PREVIOUS``).

        Between the deployment of a new ``ALGOR_MASTER_KEY`` and the end of the ``rewrap`` run of
        ``pii_key_rotation_job``, tenant keys still wrapped by the old key open with this one, so
        sends keep running; once the run is done the variable is removed and the old key opens nothing.
        """
        return _master_key_variable(PREVIOUS_MASTER_KEY_VARIABLE)


def _master_key_variable(name: str) -> bytes | None:
    value = os.environ.get(name)
    if not value:
        return None
    try:
        key = base64.b64decode(value, validate=True)
    except ValueError:
        key = b""
    if len(key) != 32:
        raise SettingsError(f"{name} must be the base64 of 32 random bytes (e.g. `openssl rand -base64 32`)")
    return key


def sandbox_secret(home: Path, name: str) -> str:
    """The sandbox value of the secret held by env var ``name`` in the installation at ``home``.

    Every process of one installation (gateway, sandbox config writer, Dagster runs, demo, benches)
    must agree on it without talking to each other, and nobody who merely reads this repository may
    guess it: a value derived from the name alone would sign and verify as well for an attacker. So
    it is an HMAC of the name under the installation's own random key (``installation_key``).
    """
    return SANDBOX_SECRET_PREFIX + hmac.new(installation_key(home), name.encode(), hashlib.sha256).hexdigest()[:32]


def installation_key(home: Path, file_name: str = SANDBOX_KEY_FILE) -> bytes:
    """32 random bytes of the installation at ``home``: ``<home>/<file_name>`` (mode 0600),
    generated on first use. Processes starting at once all end up with the one key that won."""
    path = home / file_name
    try:
        identity = path.stat()
    except FileNotFoundError:
        _create_installation_key(path)
        identity = path.stat()
    # Read once per file (the gateway asks on every request); a home deleted and made anew is a new file.
    return _read_installation_key(path, identity.st_ino, identity.st_mtime_ns)


def _create_installation_key(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, draft = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # mode 0600
    try:
        with os.fdopen(descriptor, "w") as file:
            file.write(secrets.token_hex(32) + "\n")
            file.flush()
            os.fsync(file.fileno())
        try:
            os.link(draft, path)  # appears complete or not at all, and never replaces a key
        except FileExistsError:
            pass  # another process was first: its key is the installation's
    finally:
        os.unlink(draft)


@lru_cache(maxsize=16)
def _read_installation_key(path: Path, inode: int, mtime_ns: int) -> bytes:
    text = path.read_text(encoding="ascii", errors="replace")
    if not _SANDBOX_KEY_TEXT.fullmatch(text):
        raise SettingsError(
            f"{path} is not a key file (64 hex digits expected). Delete it with the gateway, the "
            "sandbox and Dagster stopped; the next start generates a new one"
        )
    return bytes.fromhex(text[:64])


# What get_settings reads. It is memoised on their values and the working directory (a relative
# ALGOR_HOME depends on it): building Settings resolves paths (~70 µs), and the webhook gateway
# asks on every request.
SETTINGS_VARIABLES = (
    "ALGOR_ENV",
    "ALGOR_HOME",
    "ALGOR_DATABASE_URL",
    "ALGOR_WAREHOUSE_DSN",
    "ALGOR_SANDBOX_URL",
    "ALGOR_GATEWAY_URL",
    "ALGOR_DBT_TARGET",
    "ALGOR_IMPORT_INBOX",
    ALLOW_SANDBOX_WITH,
)


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
    else:
        _refuse_production_looking(variables)
    return Settings(
        environment=env,
        home=home,
        database_url=database_url,
        warehouse_dsn=warehouse_dsn,
        sandbox_url=variables.get("ALGOR_SANDBOX_URL", "http://127.0.0.1:8765").rstrip("/"),
        gateway_url=variables.get("ALGOR_GATEWAY_URL", "http://127.0.0.1:8766").rstrip("/"),
        dbt_target=variables.get("ALGOR_DBT_TARGET") or ("embedded" if warehouse_dsn.startswith("chdb:") else "server"),
        import_inbox=Path(cwd, variables.get("ALGOR_IMPORT_INBOX", home / "imports" / "inbox")).resolve(),
    )


# Settings only a real deployment has: each maps to what its value says about where it points.
def _production_database(url: str) -> str | None:
    if url.startswith("sqlite"):
        return None
    return f"a {url.split(':', 1)[0].split('+', 1)[0]} database on {urlsplit(url).hostname or 'a local socket'}"


def _production_warehouse(dsn: str) -> str | None:
    return None if dsn.startswith("chdb:") else f"a ClickHouse server on {urlsplit(dsn).hostname}"


def _public_gateway(url: str) -> str | None:
    host = urlsplit(url).hostname or ""
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: reachable from elsewhere
        loopback = False
    return None if loopback else f"{url}, not a loopback address"


PRODUCTION_LOOKING = {
    "ALGOR_DATABASE_URL": _production_database,
    "ALGOR_WAREHOUSE_DSN": _production_warehouse,
    "ALGOR_GATEWAY_URL": _public_gateway,
}


def _refuse_production_looking(variables: dict[str, str]) -> None:
    """Raise SettingsError for a production-looking setting in the embedded default, unless
    ``ALGOR_ALLOW_SANDBOX_WITH`` names it. Values are shown without credentials."""
    allowed = {name.strip() for name in variables.get(ALLOW_SANDBOX_WITH, "").split(",") if name.strip()}
    if unknown := sorted(allowed - PRODUCTION_LOOKING.keys()):
        raise SettingsError(f"{ALLOW_SANDBOX_WITH} names {', '.join(unknown)}; it takes a comma-separated list of {', '.join(PRODUCTION_LOOKING)}")
    refused = {
        name: looks
        for name, describe in PRODUCTION_LOOKING.items()
        if name not in allowed and (value := variables.get(name)) and (looks := describe(value))
    }
    if refused:
        found = "; ".join(f"{name} points at {looks}" for name, looks in refused.items())
        raise SettingsError(
            f"{found}, but ALGOR_ENV is not {PRODUCTION!r}: messages would go to the provider sandbox and "
            f"every provider secret not set would be a sandbox secret. For a real deployment set "
            f"ALGOR_ENV={PRODUCTION} and its provider secrets; to run the sandbox against this on purpose "
            f"(tests, staging), set {ALLOW_SANDBOX_WITH}={','.join(refused)}"
        )
