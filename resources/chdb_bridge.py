"""``algor-dbt``: the dbt command line, able to reach the embedded chDB warehouse.

Why this exists
---------------
dbt-clickhouse talks to ClickHouse through clickhouse-connect's HTTP client (or the native
driver); it has no chDB driver. clickhouse-connect itself does have one: ``get_client(dsn=
"chdb:///abs/path")`` returns an in-process chDB client with the same interface. Upstream
dbt-clickhouse PR #693 proposes wiring that in; until something like it ships, this module does
the same from the outside:

* it wraps ``clickhouse_connect.get_client`` so that a ``host`` starting with ``chdb:`` (the
  ``embedded`` target in ``dbt_project/profiles.yml``) returns ONE client per process, shared by
  every model. chDB lets a single process hold a data path, and dbt opens and closes a client per
  model, so the shared client's ``close()`` is a no-op and the real one is closed at process exit
  (``atexit``); the profile pins ``threads: 1`` for the same reason;
* any other host (the ``server`` target) goes to the real ``get_client`` untouched;
* ``dbt --version`` (which dagster-dbt runs before every invocation) and ``dbt debug`` would
  ask PyPI for the latest release; the bridge never does (a lone ``--version`` is answered from
  package metadata without importing dbt, ~4 s saved per run), and usage tracking is off;
* then it runs dbt's own click entry point (``dbt.cli.main.cli``) with the given arguments.

Single source of truth for the connection
-----------------------------------------
``profiles.yml`` reads only ``ALGOR_DBT_*`` environment variables. Before dbt starts, this module
derives them from :func:`resources.settings.get_settings` (``warehouse_dsn`` and ``dbt_target``)
and exports each one that is not already set, so the warehouse DSN is configured in one place
(``ALGOR_WAREHOUSE_DSN`` or the embedded default) and dbt always agrees with the ``Warehouse``
resource. Explicitly set ``ALGOR_DBT_*`` variables win, for debugging.

Run it as ``algor-dbt <dbt args>`` (console script) or ``python -m resources.chdb_bridge <dbt args>``.
Note: a module named ``dbt_*`` would be imported by dbt as a plugin, hence this name.
"""

from __future__ import annotations

import atexit
import functools
import os
import sys
import threading
from typing import Any
from urllib.parse import unquote, urlparse

from resources.settings import SettingsError, get_settings

CHDB_SCHEME = "chdb:"

# Environment variables read by dbt_project/profiles.yml (and nothing else).
ENV_TARGET = "ALGOR_DBT_TARGET"
ENV_CHDB_HOST = "ALGOR_DBT_CHDB_HOST"
ENV_HOST = "ALGOR_DBT_HOST"
ENV_PORT = "ALGOR_DBT_PORT"
ENV_USER = "ALGOR_DBT_USER"
ENV_PASSWORD = "ALGOR_DBT_PASSWORD"
ENV_SECURE = "ALGOR_DBT_SECURE"


def profile_env(warehouse_dsn: str, dbt_target: str) -> dict[str, str]:
    """The ``ALGOR_DBT_*`` variables ``profiles.yml`` needs for this DSN (pure; unit tested).

    ``chdb:///abs/path`` -> ``ALGOR_DBT_CHDB_HOST`` (the DSN itself, used as the dbt ``host``).
    ``http(s)://user:pass@host:port/db`` -> host, port, user, password and secure. The DSN's
    database is not passed on: dbt-clickhouse requires ``database`` to be empty or equal to the
    model schema (``algor_reports``), and the source table is always ``algor.events``.
    """
    env = {ENV_TARGET: dbt_target}
    if warehouse_dsn.startswith(CHDB_SCHEME):
        env[ENV_CHDB_HOST] = warehouse_dsn
        return env
    parsed = urlparse(warehouse_dsn)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise SettingsError(
            f"warehouse DSN {_redact(warehouse_dsn)!r}: expected chdb:///abs/path or "
            "http(s)://user:pass@host:port/db"
        )
    secure = parsed.scheme == "https"
    env.update(
        {
            ENV_HOST: parsed.hostname,
            ENV_PORT: str(parsed.port or (8443 if secure else 8123)),
            ENV_USER: unquote(parsed.username or "default"),
            ENV_PASSWORD: unquote(parsed.password or ""),
            ENV_SECURE: "True" if secure else "False",
        }
    )
    return env


def export_profile_env(environ: Any = None) -> dict[str, str]:
    """Export :func:`profile_env` for the current settings into ``environ`` where unset.

    Returns the variables that were actually set (so callers and tests can see the effect).
    """
    environ = os.environ if environ is None else environ
    settings = get_settings()
    exported = {}
    for key, value in profile_env(settings.warehouse_dsn, settings.dbt_target).items():
        if not environ.get(key):
            environ[key] = value
            exported[key] = value
    return exported


def _redact(dsn: str) -> str:
    parsed = urlparse(dsn)
    if parsed.password:
        return dsn.replace(f":{parsed.password}@", ":***@", 1)
    return dsn


class _SharedChdbClient:
    """Proxy to the process-wide chDB client whose ``close()`` does nothing (dbt closes per model)."""

    def __init__(self, client: Any) -> None:
        object.__setattr__(self, "_client", client)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def __setattr__(self, name: str, value: Any) -> None:
        # dbt-clickhouse sets ``client.database``; pass it through to the real client.
        setattr(self._client, name, value)

    def close(self) -> None:  # noqa: D401 - deliberately a no-op
        """No-op: the real client is closed once, at process exit."""


_lock = threading.Lock()
_shared: dict[str, Any] = {}


def _close_shared() -> None:
    with _lock:
        clients = list(_shared.values())
        _shared.clear()
    for client in clients:
        try:
            client.close()
        except Exception:  # pragma: no cover - best effort at interpreter exit
            pass


def install_chdb_get_client() -> None:
    """Patch ``clickhouse_connect.get_client`` so ``host='chdb:…'`` yields the shared chDB client."""
    import clickhouse_connect

    original = clickhouse_connect.get_client
    if getattr(original, "_algor_chdb_bridge", False):
        return

    @functools.wraps(original)
    def get_client(*args: Any, **kwargs: Any) -> Any:
        host = kwargs.get("host")
        if isinstance(host, str) and host.startswith(CHDB_SCHEME):
            with _lock:
                client = _shared.get(host)
                if client is None:
                    client = original(dsn=host)
                    _shared[host] = client
            return _SharedChdbClient(client)
        return original(*args, **kwargs)

    get_client._algor_chdb_bridge = True  # type: ignore[attr-defined]
    clickhouse_connect.get_client = get_client
    atexit.register(_close_shared)


def disable_network_checks() -> None:
    """No PyPI look-ups for the latest dbt/adapter version, no usage tracking."""
    import dbt.version

    dbt.version.get_latest_version = lambda *args, **kwargs: None
    os.environ.setdefault("DBT_SEND_ANONYMOUS_USAGE_STATS", "false")


def version_text() -> str:
    """What ``dbt --version`` prints, minus the PyPI look-up (dagster-dbt parses the first x.y.z)."""
    from importlib.metadata import version

    return f"Core:\n  - installed: {version('dbt-core')}\n\nPlugins:\n  - clickhouse: {version('dbt-clickhouse')}\n"


def main(argv: list[str] | None = None) -> None:
    """Console script ``algor-dbt``: export profile env, patch the client factory, run dbt."""
    args = sys.argv[1:] if argv is None else argv
    if args == ["--version"]:
        sys.stdout.write(version_text())
        sys.exit(0)
    export_profile_env()
    install_chdb_get_client()
    disable_network_checks()
    from dbt.cli.main import cli

    sys.argv[0] = "algor-dbt"
    sys.exit(cli.main(args=args, prog_name="algor-dbt", standalone_mode=True))


if __name__ == "__main__":
    main()
