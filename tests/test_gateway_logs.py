"""``python -m gateway`` as operators run it: JSON log lines, one per request, tied to the request id
the response carries; a refusal says why; secrets in URLs never reach the log."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from policies.loader import load_tenants
from resources.settings import get_settings

SMSRU_SECRET_PATH = "s3cret-path-never-logged"


@pytest.fixture
def gateway_process(algor_home: Path, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """(base URL, stderr file) of ``python -m gateway --workers 2`` on a free loopback port."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url, log_path = f"http://127.0.0.1:{port}", tmp_path / "gateway.log"
    with log_path.open("w") as stderr:
        command = [sys.executable, "-m", "gateway", "--port", str(port), "--workers", "2"]
        process = subprocess.Popen(command, stderr=stderr, env={**os.environ, "ALGOR_GATEWAY_URL": url})
        try:
            deadline = time.monotonic() + 60
            while not _ready(url):
                assert process.poll() is None and time.monotonic() < deadline, log_path.read_text()
                time.sleep(0.2)
            yield url, log_path
        finally:
            process.terminate()
            process.wait(timeout=30)


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/ready", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def request_lines(log_path: Path) -> dict[str, dict]:
    """Every line must be a JSON object; returns the request lines by request id."""
    lines = [json.loads(line) for line in log_path.read_text().splitlines()]
    return {line["request_id"]: line for line in lines if line.get("event") == "request"}


def test_request_ids_and_refusal_reasons_in_json_logs(gateway_process):
    gateway, log_path = gateway_process
    hook = f"{gateway}/hooks/demo/telegram"
    secret = get_settings().secret(load_tenants().tenants["demo"].accounts.telegram.webhook_secret_env)

    forged = httpx.post(hook, json={"update_id": 1}, headers={"X-Telegram-Bot-Api-Secret-Token": "forged", "X-Request-ID": "tg-retry-42"})
    assert forged.status_code == 403 and forged.headers["x-request-id"] == "tg-retry-42"
    genuine = httpx.post(hook, json={"update_id": 2}, headers={"X-Telegram-Bot-Api-Secret-Token": secret})
    assert genuine.status_code == 200
    generated = genuine.headers["x-request-id"]
    insane = httpx.post(
        hook, json={"update_id": 2}, headers={"X-Telegram-Bot-Api-Secret-Token": secret, "X-Request-ID": 'a b"}' + "x" * 200}
    )
    assert insane.status_code == 200 and insane.headers["x-request-id"] not in ("", generated) and " " not in insane.headers["x-request-id"]
    unknown = httpx.post(f"{gateway}/hooks/demo/smsru/{SMSRU_SECRET_PATH}", data={"data[0]": "sms_status\n1\n103"})
    assert unknown.status_code == 404

    # Wait for these four requests' lines, not for any four: the readiness probes log lines too.
    ids = {"tg-retry-42", generated, insane.headers["x-request-id"], unknown.headers["x-request-id"]}
    deadline = time.monotonic() + 30
    while not ids <= (lines := request_lines(log_path)).keys() and time.monotonic() < deadline:
        time.sleep(0.1)
    refused = lines["tg-retry-42"]
    assert refused["level"] == "warning" and refused["status"] == 403
    assert (refused["tenant"], refused["provider"], refused["outcome"], refused["reason"]) == (
        "demo",
        "telegram",
        "refused",
        "bad secret token",
    )
    stored = lines[generated]
    assert (stored["status"], stored["outcome"], stored["events"], stored["new"]) == (200, "stored", 1, 1)
    duplicate = lines[insane.headers["x-request-id"]]
    assert (duplicate["outcome"], duplicate["events"], duplicate["new"]) == ("duplicate", 1, 0)
    no_account = lines[unknown.headers["x-request-id"]]
    assert no_account["route"] == "/hooks/{tenant_id}/smsru/{secret}" and no_account["reason"] == "no smsru account for this tenant"
    assert SMSRU_SECRET_PATH not in log_path.read_text()
