"""The import → campaign → delivery → report flow, driven the way production drives it.

Shared by the SQLite/chDB and the PostgreSQL flow tests: real gateway and sandbox over HTTP on
loopback, real Dagster runs on a real instance, the inbox sensor evaluated for its run requests.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import dagster as dg
import httpx
import pytest

from definitions import defs
from gateway.app import create_app
from orchestrator_assets.imports.sample_contacts import SAMPLE_PATH
from policies.loader import load_tenants
from resources.connectors import sandbox_accounts
from resources.opstore import OperationalStore
from resources.warehouse import Warehouse
from sandbox.config import SandboxConfig
from sandbox.telegram import bot_id
from sandbox.server import run_uvicorn_in_thread, running_sandbox
from sensors.inbox import webhook_inbox_sensor

IMPORT_OP = "imports__contact_import_rows"


@dataclass
class Stack:
    gateway_url: str
    sandbox_url: str

    def sandbox_messages(self, provider: str) -> list[dict]:
        return httpx.get(f"{self.sandbox_url}/_sandbox/messages", params={"provider": provider}, timeout=10).json()["messages"]

    def sandbox_stats(self) -> dict:
        return httpx.get(f"{self.sandbox_url}/_sandbox/stats", timeout=10).json()

    def wait_for_callbacks(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while self.sandbox_stats()["callbacks"]["pending"]:
            if time.monotonic() > deadline:
                pytest.fail("sandbox callbacks still pending")
            time.sleep(0.1)


@contextmanager
def running_stack(monkeypatch: pytest.MonkeyPatch) -> Iterator[Stack]:
    """Gateway and provider sandbox on loopback; the env points connectors and links at them."""
    with run_uvicorn_in_thread(create_app()) as gateway_url:
        monkeypatch.setenv("ALGOR_GATEWAY_URL", gateway_url)
        config = SandboxConfig.model_validate(sandbox_accounts(load_tenants().tenants, gateway_url))
        with running_sandbox(config) as sandbox_url:
            monkeypatch.setenv("ALGOR_SANDBOX_URL", sandbox_url)
            yield Stack(gateway_url, sandbox_url)


def run_pipeline(instance: dg.DagsterInstance, tenant: str, csv_path: str = str(SAMPLE_PATH)) -> dg.ExecuteInProcessResult:
    """The campaign pipeline for ``tenant``, importing ``csv_path`` (default: the shipped demo
    sample, named explicitly as the demo does: the job imports nothing without a file)."""
    result = defs.resolve_job_def("campaign_pipeline_job").execute_in_process(
        instance=instance, partition_key=tenant, run_config={"ops": {IMPORT_OP: {"config": {"csv_path": csv_path}}}}
    )
    assert result.success
    return result


def metadata(result: dg.ExecuteInProcessResult, asset: str) -> dict:
    for event in result.get_asset_materialization_events():
        if "/".join(event.materialization.asset_key.path) == asset:
            return {key: value.value for key, value in event.materialization.metadata.items()}
    raise AssertionError(f"{asset} was not materialised")


def process_inbox(instance: dg.DagsterInstance, cursor: str | None = None) -> tuple[list[dg.RunRequest], str | None]:
    """Evaluate the inbox sensor once and execute the runs it requests, as the daemon would."""
    context = dg.build_sensor_context(instance=instance, cursor=cursor, resources={"opstore": OperationalStore()})
    outcome = webhook_inbox_sensor(context)
    if isinstance(outcome, dg.SkipReason):
        return [], cursor
    job = defs.resolve_job_def("delivery_processing_job")
    for request in outcome.run_requests:
        result = job.execute_in_process(
            instance=instance, partition_key=request.partition_key, run_config=request.run_config, tags=request.tags
        )
        assert result.success
    return list(outcome.run_requests), outcome.cursor


def build_reports(instance: dg.DagsterInstance) -> dg.ExecuteInProcessResult:
    result = defs.resolve_job_def("reports_job").execute_in_process(instance=instance)
    assert result.success
    return result


def funnel_rows() -> dict[tuple[str, str, str], dict]:
    with Warehouse().client() as client:
        result = client.query("select * from algor_reports.campaign_funnel")
        return {(row["tenant"], row["campaign"], row["channel"]): row for row in result.named_results()}


def expected_funnel(stack: Stack, tenants: dict) -> dict[tuple[str, str], dict]:
    """What the sandbox says happened, per (tenant, channel), in funnel terms. Telegram reports
    no deliveries, so there the funnel must say unknown (None), whatever the sandbox knows."""
    domains = {t.accounts.mailgun.domain: tid for tid, t in tenants.items() if t.accounts.mailgun}
    expected: dict[tuple[str, str], dict] = {}

    def bump(tenant: str, channel: str, **counts: int) -> None:
        row = expected.setdefault((tenant, channel), dict.fromkeys(("attempted", "accepted", "delivered", "clicked", "refused", "undelivered"), 0))
        for key, value in counts.items():
            row[key] += value

    for message in stack.sandbox_messages("mailgun"):
        outcome = message["outcome"]
        bump(
            domains[message["account"]],
            "email",
            attempted=1,
            accepted=1,
            delivered=int(outcome in ("deliver", "click", "complain")),
            clicked=int(outcome == "click"),
            undelivered=int(outcome == "bounce"),
        )
    bots = {str(bot_id(bot["token"])): bot["webhook_url"].split("/hooks/")[1].split("/")[0] for bot in sandbox_accounts(tenants, stack.gateway_url)["telegram"]}
    for message in stack.sandbox_messages("telegram"):
        outcome = message["outcome"]
        accepted = outcome != "blocked"
        bump(bots[message["account"]], "telegram", attempted=1, accepted=int(accepted), clicked=int(outcome == "click"), refused=int(not accepted))
    for (_, channel), row in expected.items():
        if channel == "telegram":
            row.update(delivered=None, undelivered=None)
    return expected
