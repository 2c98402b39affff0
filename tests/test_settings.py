"""Deployment settings: sandbox secrets random per installation, and a production-looking
configuration refused in the embedded default unless the operator opts in by name."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from policies.loader import load_tenants
from resources.connectors import sandbox_accounts
from resources.embedded_keys import sendgrid_public_key
from resources.links import sign
from resources.settings import SANDBOX_KEY_FILE, SettingsError, get_settings
from test_gateway_providers import TENANT as EVERY

REPO = Path(__file__).resolve().parents[1]
TELEGRAM_TOKEN_ENV = "ALGOR_DEMO_TELEGRAM_BOT_TOKEN"


def old_derivation(name: str) -> str:
    """What every installation used to get for an unset secret: guessable from the name alone."""
    return "sbx_" + hashlib.sha256(name.encode()).hexdigest()[:24]


def env_names(tenants: dict) -> set[str]:
    """Every env-var name the tenants' accounts refer to."""
    return {
        value
        for tenant in tenants.values()
        for account in tenant.accounts.model_dump(exclude_none=True).values()
        if isinstance(account, dict)
        for field, value in account.items()
        if field.endswith("_env")
    }


def test_two_fresh_homes_get_different_secrets_and_keep_them_private(tmp_path, monkeypatch, algor_home):
    monkeypatch.delenv(TELEGRAM_TOKEN_ENV, raising=False)
    seen = []
    for home in (tmp_path / "one", tmp_path / "two"):
        monkeypatch.setenv("ALGOR_HOME", str(home))
        seen.append((get_settings().secret(TELEGRAM_TOKEN_ENV), sendgrid_public_key("ALGOR_X_SENDGRID_KEY"), sign({"u": 1})))
        assert get_settings().secret(TELEGRAM_TOKEN_ENV) == seen[-1][0]  # stable within the installation
        assert stat.S_IMODE((home / SANDBOX_KEY_FILE).stat().st_mode) == 0o600
    (token_one, sendgrid_one, link_one), (token_two, sendgrid_two, link_two) = seen
    assert token_one != token_two and sendgrid_one != sendgrid_two and link_one != link_two


def test_processes_starting_together_on_one_home_agree(algor_home, monkeypatch):
    """The gateway, the Dagster runs, the sandbox config writer and the demo all start around the
    same moment on a fresh home: whoever writes the key first, every one of them reads that key."""
    monkeypatch.delenv(TELEGRAM_TOKEN_ENV, raising=False)
    start_at = time.time() + 3  # past every interpreter's start-up, so they really race
    program = (
        "import sys, time\n"
        "from resources.settings import get_settings\n"
        f"time.sleep(max(0.0, {start_at} - time.time()))\n"
        f"print(get_settings().secret({TELEGRAM_TOKEN_ENV!r}))\n"
    )
    processes = [subprocess.Popen([sys.executable, "-c", program], cwd=REPO, env=os.environ.copy(), stdout=subprocess.PIPE, text=True) for _ in range(6)]
    answers = {process.communicate(timeout=60)[0].strip() for process in processes}
    assert all(process.returncode == 0 for process in processes)
    assert answers == {get_settings().secret(TELEGRAM_TOKEN_ENV)}
    assert [path.name for path in algor_home.iterdir()] == [SANDBOX_KEY_FILE]  # no draft left behind


def test_the_name_derived_secrets_are_never_produced(algor_home, monkeypatch):
    tenants = {**load_tenants().tenants, "every": EVERY}  # the shipped tenants and one at every provider
    names = env_names(tenants)
    assert len(names) > 25
    for name in names:
        monkeypatch.delenv(name, raising=False)
    config = json.dumps(sandbox_accounts(tenants, "http://127.0.0.1:8766"))  # what the sandbox is told
    for name in names:
        assert get_settings().secret(name) != old_derivation(name)
        assert old_derivation(name) not in config, name


def test_a_key_file_that_is_not_a_key_is_a_clear_error(algor_home):
    algor_home.mkdir(parents=True)
    (algor_home / SANDBOX_KEY_FILE).write_text("not a key\n")
    with pytest.raises(SettingsError, match=f"{SANDBOX_KEY_FILE} is not a key file"):
        get_settings().secret(TELEGRAM_TOKEN_ENV)


def test_a_postgres_store_without_production_or_the_opt_in_refuses_to_start(algor_home, monkeypatch):
    monkeypatch.setenv("ALGOR_DATABASE_URL", "postgresql+psycopg://algor:hunter2@db.example.ru:5432/algor")
    with pytest.raises(SettingsError) as refused:
        get_settings()
    message = str(refused.value)
    assert "ALGOR_DATABASE_URL points at a postgresql database on db.example.ru" in message
    assert "ALGOR_ENV=production" in message and "ALGOR_ALLOW_SANDBOX_WITH=ALGOR_DATABASE_URL" in message
    assert "hunter2" not in message
    monkeypatch.setenv("ALGOR_ALLOW_SANDBOX_WITH", "ALGOR_DATABASE_URL")
    settings = get_settings()
    assert settings.is_embedded and settings.database_url.startswith("postgresql+psycopg://")
    assert settings.secret(TELEGRAM_TOKEN_ENV).startswith("sbx_")


@pytest.mark.parametrize(
    ("name", "value", "says"),
    [
        ("ALGOR_GATEWAY_URL", "https://hooks.shop.example.ru", "https://hooks.shop.example.ru, not a loopback address"),
        ("ALGOR_GATEWAY_URL", "http://10.0.0.5:8766", "http://10.0.0.5:8766, not a loopback address"),
        ("ALGOR_WAREHOUSE_DSN", "https://reports:s3cret@ch.example.ru:8443/algor", "a ClickHouse server on ch.example.ru"),
    ],
    ids=["public-gateway", "lan-gateway", "clickhouse-server"],
)
def test_other_production_looking_settings_are_refused_unless_named(algor_home, monkeypatch, name, value, says):
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError, match=f"{name} points at {says}") as refused:
        get_settings()
    assert "s3cret" not in str(refused.value)
    monkeypatch.setenv("ALGOR_ALLOW_SANDBOX_WITH", "ALGOR_DATABASE_URL")  # opting in for another setting is no opt-in for this one
    with pytest.raises(SettingsError, match=name):
        get_settings()
    monkeypatch.setenv("ALGOR_ALLOW_SANDBOX_WITH", f"ALGOR_DATABASE_URL, {name}")
    assert get_settings().is_embedded


@pytest.mark.parametrize("url", ["http://127.0.0.1:8766", "http://localhost:9000", "http://[::1]:8766", "http://127.8.0.1"])
def test_a_loopback_gateway_and_the_embedded_stores_need_no_opt_in(algor_home, monkeypatch, url):
    monkeypatch.setenv("ALGOR_GATEWAY_URL", url)
    monkeypatch.setenv("ALGOR_DATABASE_URL", f"sqlite:///{algor_home / 'ops.sqlite3'}")
    monkeypatch.setenv("ALGOR_WAREHOUSE_DSN", f"chdb://{algor_home / 'warehouse'}")
    assert get_settings().gateway_url == url


def test_an_unknown_name_in_the_opt_in_is_an_error(algor_home, monkeypatch):
    monkeypatch.setenv("ALGOR_ALLOW_SANDBOX_WITH", "ALGOR_DATABASE_URL,ALGOR_DATABSE_URL")
    with pytest.raises(SettingsError, match="ALGOR_ALLOW_SANDBOX_WITH names ALGOR_DATABSE_URL; it takes"):
        get_settings()


def test_production_is_not_affected(algor_home, monkeypatch):
    monkeypatch.setenv("ALGOR_ENV", "production")
    monkeypatch.setenv("ALGOR_DATABASE_URL", "postgresql+psycopg://algor@db.example.ru/algor")
    monkeypatch.setenv("ALGOR_WAREHOUSE_DSN", "https://ch.example.ru:8443/algor")
    monkeypatch.setenv("ALGOR_GATEWAY_URL", "https://hooks.shop.example.ru")
    monkeypatch.delenv(TELEGRAM_TOKEN_ENV, raising=False)
    with pytest.raises(SettingsError, match=f"secret {TELEGRAM_TOKEN_ENV} is not set"):
        get_settings().secret(TELEGRAM_TOKEN_ENV)
    assert not (algor_home / SANDBOX_KEY_FILE).exists()  # production never makes sandbox secrets


def test_the_gateway_refuses_to_start_on_a_forgotten_algor_env(algor_home):
    env = {**os.environ, "ALGOR_DATABASE_URL": "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"}
    process = subprocess.run([sys.executable, "-m", "gateway", "--port", "0"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert process.returncode != 0
    assert "SettingsError: ALGOR_DATABASE_URL points at a postgresql database" in process.stderr, process.stderr[-2000:]


def test_the_master_key_is_random_per_installation_and_kept(algor_home, tmp_path, monkeypatch):
    first = get_settings().master_key()
    assert len(first) == 32 and get_settings().master_key() == first  # kept in the home, not re-made
    assert oct((algor_home / "master.key").stat().st_mode & 0o777) == "0o600"
    monkeypatch.setenv("ALGOR_HOME", str(tmp_path / "other"))
    assert get_settings().master_key() != first


def test_a_configured_master_key_wins_and_a_malformed_one_is_refused(algor_home, monkeypatch):
    monkeypatch.setenv("ALGOR_MASTER_KEY", base64.b64encode(bytes(range(32))).decode())
    assert get_settings().master_key() == bytes(range(32))
    monkeypatch.setenv("ALGOR_MASTER_KEY", "c2hvcnQ=")
    with pytest.raises(SettingsError, match="base64 of 32 random bytes"):
        get_settings().master_key()


def test_production_without_a_master_key_refuses(algor_home, monkeypatch):
    monkeypatch.setenv("ALGOR_ENV", "production")
    monkeypatch.setenv("ALGOR_DATABASE_URL", "postgresql+psycopg://algor@db.example.ru/algor")
    monkeypatch.setenv("ALGOR_WAREHOUSE_DSN", "https://ch.example.ru:8443/algor")
    monkeypatch.delenv("ALGOR_MASTER_KEY", raising=False)
    with pytest.raises(SettingsError, match="ALGOR_MASTER_KEY is not set"):
        get_settings().master_key()
    assert not (algor_home / "master.key").exists()  # never a key file beside a production database
