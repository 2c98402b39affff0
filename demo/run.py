"""`make demo`: one real campaign end to end on the embedded default.

Starts the webhook gateway, the provider sandbox and the Dagster daemon as real processes, runs
the campaign pipeline (import → contacts → consents → segment → campaign → send), lets the
sandbox call the delivery webhooks back, waits for the daemon's inbox sensor to launch the
delivery-processing run, builds the dbt reports and prints the campaign funnel.
State lives under $ALGOR_HOME (default .algor/) and is reset at the start of every demo.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

TENANT = "demo"
# The demo prints its own progress; the runs' full logs are in the Dagster UI.
QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
STEPS = 7
WAIT_CALLBACKS_S = 120
WAIT_DELIVERY_RUN_S = 240


class DemoError(RuntimeError):
    pass


def step(number: int, text: str) -> None:
    print(f"\n[{number}/{STEPS}] {text}", flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_http(url: str, what: str, process: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise DemoError(f"{what} exited with code {process.returncode} before it was ready (see its log in $ALGOR_HOME/logs)")
        try:
            if httpx.get(url, timeout=1).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise DemoError(f"{what} did not answer at {url} within {timeout:.0f} s")


def start(stack: ExitStack, name: str, args: list[str], env: dict[str, str], log_dir: Path) -> subprocess.Popen:
    log = open(log_dir / f"{name}.log", "w")  # noqa: SIM115 - closed by the ExitStack
    stack.callback(log.close)
    process = subprocess.Popen(args, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)

    def stop() -> None:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()

    stack.callback(stop)
    return process


def main() -> int:
    from resources.settings import get_settings

    settings = get_settings()
    home = settings.home
    dagster_home = Path(os.environ.get("DAGSTER_HOME", home / "dagster_home"))
    if home.exists():
        if any(home.iterdir()) and not (home / "operational.sqlite3").exists() and not (home / "logs").exists():
            raise DemoError(f"ALGOR_HOME={home} holds files that are not a previous demo's; refusing to reset it")
        shutil.rmtree(home)
    dagster_home.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "dagster.yaml", dagster_home / "dagster.yaml")
    log_dir = home / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)

    gateway_url = f"http://127.0.0.1:{free_port()}"
    sandbox_url = f"http://127.0.0.1:{free_port()}"
    os.environ.update({"ALGOR_HOME": str(home), "DAGSTER_HOME": str(dagster_home), "ALGOR_GATEWAY_URL": gateway_url, "ALGOR_SANDBOX_URL": sandbox_url})
    env = dict(os.environ)
    bin_dir = Path(sys.executable).parent

    with ExitStack() as stack:
        step(1, f"Starting services (logs in {log_dir})")
        gateway = start(stack, "gateway", [sys.executable, "-m", "gateway", "--port", gateway_url.rsplit(":", 1)[1]], env, log_dir)
        wait_http(f"{gateway_url}/ready", "webhook gateway", gateway)
        print(f"  webhook gateway   {gateway_url}")

        from policies.loader import load_tenants
        from resources.connectors import sandbox_accounts

        sandbox_config = home / "sandbox.json"
        sandbox_config.write_text(json.dumps(sandbox_accounts(load_tenants().tenants, gateway_url), indent=2))
        sandbox = start(
            stack, "sandbox", [sys.executable, "-m", "sandbox", "--config", str(sandbox_config), "--port", sandbox_url.rsplit(":", 1)[1]], env, log_dir
        )
        wait_http(f"{sandbox_url}/_sandbox/stats", "provider sandbox", sandbox)
        print(f"  provider sandbox  {sandbox_url}  (Telegram Bot API + Mailgun, real wire protocol)")

        daemon = start(stack, "dagster-daemon", [str(bin_dir / "dagster-daemon"), "run", "-w", str(REPO / "workspace.yaml")], env, log_dir)
        print(f"  dagster-daemon    pid {daemon.pid} (evaluates the webhook inbox sensor)")

        import dagster as dg

        from definitions import defs

        instance = dg.DagsterInstance.get()
        step(2, "Running campaign_pipeline_job: import → contacts → consents → segments → campaign → send")
        result = defs.resolve_job_def("campaign_pipeline_job").execute_in_process(instance=instance, partition_key=TENANT, run_config=QUIET, raise_on_error=False)
        if not result.success:
            raise DemoError(f"campaign_pipeline_job failed (run {result.run_id}); open it with `make ui` for the step logs")
        print_pipeline_summary(result)

        step(3, "Waiting for the sandbox to deliver its callbacks to the gateway")
        stats = wait_callbacks(sandbox_url, sandbox)
        print(f"  callbacks delivered: {stats['callbacks']['delivered']}, failed: {stats['callbacks']['failed']}")

        step(4, "Waiting for the daemon's webhook_inbox_sensor to launch delivery_processing_job")
        wait_delivery_runs(instance, daemon)

        step(5, "Building dbt reports (staging + campaign funnel) on chDB")
        result = defs.resolve_job_def("reports_job").execute_in_process(instance=instance, run_config=QUIET, raise_on_error=False)
        if not result.success:
            raise DemoError(f"reports_job failed (run {result.run_id}); see `make ui` or {log_dir}")

        step(6, "Campaign funnel (reports.campaign_funnel)")
        print_funnel(result)

        step(7, "Cross-check against what the provider sandbox recorded")
        for provider, figures in sorted(stats["providers"].items()):
            print(f"  {provider:9} accepted={figures['accepted']:5}  refused={figures['refused']:4}  outcomes={figures['outcomes']}")
        print(
            "\nDone. To browse these runs, assets, checks and metadata in the Dagster UI run `make ui`\n"
            f"(dagster dev on http://127.0.0.1:3000 with DAGSTER_HOME={dagster_home})."
        )
    return 0


def print_pipeline_summary(result) -> None:
    for event in result.get_asset_materialization_events():
        materialization = event.materialization
        key = "/".join(materialization.asset_key.path)
        meta = materialization.metadata
        wanted = [k for k in ("rows_read", "rows_valid", "rows_rejected", "inserted", "updated", "unchanged", "granted", "withdrawn", "messages", "sent", "failed", "skipped_already_sent", "ambiguous_held") if k in meta]
        figures = ", ".join(f"{k}={meta[k].value}" for k in wanted)
        print(f"  {key:32} {figures}")
        if key == "imports/contact_import_rows":
            print(f"    error report: {meta['error_report'].value}")
        if key == "segments/segment_members":
            print("    " + meta["segments"].value.replace("\n", "\n    "))


def wait_callbacks(sandbox_url: str, sandbox: subprocess.Popen) -> dict:
    deadline = time.monotonic() + WAIT_CALLBACKS_S
    while time.monotonic() < deadline:
        if sandbox.poll() is not None:
            raise DemoError("the provider sandbox exited while delivering callbacks")
        stats = httpx.get(f"{sandbox_url}/_sandbox/stats", timeout=5).json()
        if stats["callbacks"]["pending"] == 0:
            return stats
        time.sleep(0.5)
    raise DemoError(f"the sandbox still had callbacks pending after {WAIT_CALLBACKS_S} s")


def wait_delivery_runs(instance, daemon: subprocess.Popen) -> None:
    import dagster as dg
    import sqlalchemy as sa

    from resources.opstore import engine_for
    from resources.opstore_schema import webhook_inbox
    from resources.settings import get_settings

    engine = engine_for(get_settings().database_url)
    deadline = time.monotonic() + WAIT_DELIVERY_RUN_S
    seen: set[str] = set()
    while time.monotonic() < deadline:
        if daemon.poll() is not None:
            raise DemoError("dagster-daemon exited; see its log")
        runs = instance.get_runs(dg.RunsFilter(job_name="delivery_processing_job"))
        for run in runs:
            if run.run_id not in seen and run.status in (dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE):
                seen.add(run.run_id)
                print(f"  run {run.run_id[:8]} ({run.tags.get('dagster/run_key')}): {run.status.value}")
                if run.status == dg.DagsterRunStatus.FAILURE:
                    raise DemoError(f"delivery_processing_job run {run.run_id} failed; open it with `make ui`")
        with engine.connect() as conn:
            pending = conn.execute(
                sa.select(sa.func.count()).where(webhook_inbox.c.processed_at.is_(None), webhook_inbox.c.dead_lettered_at.is_(None))
            ).scalar_one()
            total = conn.execute(sa.select(sa.func.count()).select_from(webhook_inbox)).scalar_one()
        in_flight = [r for r in runs if r.status not in (dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE)]
        if total and not pending and not in_flight:
            print(f"  inbox: {total} callbacks stored, all processed")
            return
        time.sleep(1)
    raise DemoError(f"delivery processing did not finish within {WAIT_DELIVERY_RUN_S} s (is the sensor running? see dagster-daemon.log)")


def print_funnel(result) -> None:
    for event in result.get_asset_materialization_events():
        materialization = event.materialization
        if materialization.asset_key.path[-1] == "campaign_funnel_export":
            meta = materialization.metadata
            print(meta["funnel"].value)
            for name in ("csv", "html"):
                if name in meta:
                    print(f"  {name}: {meta[name].value}")
            return
    raise DemoError("reports_job produced no campaign_funnel_export materialization")


if __name__ == "__main__":
    try:
        sys.exit(main())
    except DemoError as error:
        print(f"\nDEMO FAILED: {error}", file=sys.stderr)
        sys.exit(1)
