"""`make demo`: one real campaign end to end on the embedded default.

Starts the webhook gateway, the provider sandbox and the Dagster daemon as real processes, and
launches the campaign pipeline (import → contacts → consents → segment → campaign → send) through
the code location, as an operator would from the launchpad: the daemon's queue runs it, so it
shows under its job in the Dagster UI and re-executes from there. The sandbox then calls the
delivery webhooks back, the daemon's inbox sensor launches the delivery-processing runs, the
demo launches the dbt reports the same way and prints the campaign funnel.
State lives under $ALGOR_HOME (default .algor/, recognised by its marker) and is reset at the
start of every demo.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from demo.home import NotADemoHome, reset  # noqa: E402
from demo.services import ServiceError, Services, free_port, stop_on_signals, wait_http  # noqa: E402
from orchestrator_assets.imports.sample_contacts import SAMPLE_PATH  # noqa: E402

TENANT = "demo"
# The demo, and only the demo, imports the shipped sample: a run without csv_path imports nothing.
IMPORT_SAMPLE = {"ops": {"imports__contact_import_rows": {"config": {"csv_path": str(SAMPLE_PATH)}}}}
STEPS = 8
WAIT_CALLBACKS_S = 120
WAIT_DELIVERY_RUN_S = 240
WAIT_RUN_S = 600


class DemoError(RuntimeError):
    pass


def step(number: int, text: str) -> None:
    print(f"\n[{number}/{STEPS}] {text}", flush=True)


def main() -> int:
    from resources.settings import get_settings

    stop_on_signals()
    home = get_settings().home
    try:
        dagster_home = reset(home)
    except NotADemoHome as error:
        raise DemoError(str(error)) from error
    log_dir = home / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)

    gateway_url = f"http://127.0.0.1:{free_port()}"
    sandbox_url = f"http://127.0.0.1:{free_port()}"
    os.environ.update({"ALGOR_HOME": str(home), "DAGSTER_HOME": str(dagster_home), "ALGOR_GATEWAY_URL": gateway_url, "ALGOR_SANDBOX_URL": sandbox_url})
    env = dict(os.environ)
    bin_dir = Path(sys.executable).parent
    instance = create_instance()

    with Services(env, log_dir) as services:
        step(1, f"Starting services (logs in {log_dir})")
        gateway = services.start("gateway", [sys.executable, "-m", "gateway", "--port", gateway_url.rsplit(":", 1)[1]])
        wait_http(f"{gateway_url}/ready", "webhook gateway", gateway)
        print(f"  webhook gateway   {gateway_url}")

        from policies.loader import load_tenants
        from resources.connectors import sandbox_accounts

        sandbox_config = home / "sandbox.json"
        sandbox_config.write_text(json.dumps(sandbox_accounts(load_tenants().tenants, gateway_url), indent=2))
        sandbox = services.start("sandbox", [sys.executable, "-m", "sandbox", "--config", str(sandbox_config), "--port", sandbox_url.rsplit(":", 1)[1]])
        wait_http(f"{sandbox_url}/_sandbox/stats", "provider sandbox", sandbox)
        print(f"  provider sandbox  {sandbox_url}  (every provider's real wire protocol)")

        daemon = services.start("dagster-daemon", [str(bin_dir / "dagster-daemon"), "run", "-w", str(REPO / "workspace.yaml")])
        print(f"  dagster-daemon    pid {daemon.pid} (runs queued jobs, evaluates the webhook inbox sensor)")

        step(2, "Launching campaign_pipeline_job: import → contacts → consents → segments → campaign → send")
        run_id = launch(instance, daemon, "campaign_pipeline_job", env, run_config=IMPORT_SAMPLE, partition=TENANT)
        print_pipeline_summary(instance, run_id)

        step(3, "Waiting for the sandbox to deliver its callbacks to the gateway")
        stats = wait_callbacks(sandbox_url, sandbox)
        print(f"  callbacks delivered: {stats['callbacks']['delivered']}, failed: {stats['callbacks']['failed']}")

        step(4, "Waiting for the daemon's webhook_inbox_sensor to launch delivery_processing_job")
        wait_delivery_runs(instance, daemon)

        step(5, "Launching experiment_evaluation_job: one look at the e-mail subject-line A/B test")
        run_id = launch(instance, daemon, "experiment_evaluation_job", env, partition=TENANT)
        print_experiments(instance, run_id)

        step(6, "Launching reports_job: dbt staging + campaign funnel on chDB")
        run_id = launch(instance, daemon, "reports_job", env)

        step(7, "Campaign funnel (reports.campaign_funnel)")
        print_funnel(instance, run_id)

        step(8, "Cross-check against what the provider sandbox recorded")
        for provider, figures in sorted(stats["providers"].items()):
            if not (figures["accepted"] or figures["refused"]):
                continue  # a provider no demo campaign uses
            print(f"  {provider:9} accepted={figures['accepted']:5}  refused={figures['refused']:4}  outcomes={figures['outcomes']}")
        print(
            "\nDone. To browse these runs, assets, checks and metadata in the Dagster UI run `make ui`\n"
            f"(http://127.0.0.1:3000 on DAGSTER_HOME={dagster_home})."
        )
    return 0


def create_instance():
    """The demo's Dagster instance. Creating it creates its SQLite storages, before the daemon and
    `dagster job launch` start on the empty home and race to create the same tables."""
    import dagster as dg

    return dg.DagsterInstance.get()


def launch(instance, daemon: subprocess.Popen, job: str, env: dict[str, str], run_config: dict | None = None, partition: str | None = None) -> str:
    """Queue ``job`` through the code location (`dagster job launch`) and wait for the daemon to run it."""
    run_id = str(uuid.uuid4())
    command = [str(Path(sys.executable).parent / "dagster"), "job", "launch", "-w", str(REPO / "workspace.yaml"), "-j", job, "--run-id", run_id]
    if run_config:
        command += ["--config-json", json.dumps(run_config)]
    if partition:
        command += ["--tags", json.dumps({"dagster/partition": partition})]
    launched = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    if launched.returncode != 0:
        raise DemoError(f"`dagster job launch -j {job}` failed:\n{launched.stdout}{launched.stderr}")
    print(f"  run {run_id[:8]} queued; the daemon runs it", flush=True)
    return wait_run(instance, daemon, run_id, job)


def wait_run(instance, daemon: subprocess.Popen, run_id: str, job: str) -> str:
    import dagster as dg

    deadline = time.monotonic() + WAIT_RUN_S
    while time.monotonic() < deadline:
        if daemon.poll() is not None:
            raise DemoError("dagster-daemon exited; see its log")
        run = instance.get_run_by_id(run_id)
        if run is not None and run.is_finished:
            if run.status != dg.DagsterRunStatus.SUCCESS:
                raise DemoError(f"{job} run {run_id} ended {run.status.value}: {failure_message(instance, run_id)}\nOpen it with `make ui` for the step logs.")
            return run_id
        time.sleep(0.5)
    raise DemoError(f"{job} run {run_id} did not finish within {WAIT_RUN_S} s (see dagster-daemon.log)")


def failure_message(instance, run_id: str) -> str:
    import dagster as dg

    records = instance.get_records_for_run(run_id, of_type={dg.DagsterEventType.STEP_FAILURE, dg.DagsterEventType.RUN_FAILURE}).records
    messages = [record.event_log_entry.dagster_event.message or "" for record in records]
    return "; ".join(m for m in messages if m) or "no failure event recorded"


def materializations(instance, run_id: str) -> dict[str, dict]:
    """The run's materialised assets, ``"domain/name"`` → metadata."""
    import dagster as dg

    records = instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION).records
    return {"/".join(r.asset_materialization.asset_key.path): r.asset_materialization.metadata for r in records}


SUMMARY_FIGURES = ("import_id", "rows_read", "rows_valid", "rows_rejected", "inserted", "updated", "unchanged", "granted", "withdrawn", "messages", "sent", "failed", "skipped_already_sent", "ambiguous_held")


def print_pipeline_summary(instance, run_id: str) -> None:
    for key, meta in materializations(instance, run_id).items():
        figures = ", ".join(f"{name}={meta[name].value}" for name in SUMMARY_FIGURES if name in meta)
        print(f"  {key:32} {figures}")
        if key == "imports/contact_import_rows":
            print(f"    error report: {meta['error_report'].value}")
        if key == "segments/segment_members":
            print("    " + meta["segments"].value.replace("\n", "\n    "))
        if key == "campaigns/campaign_messages":  # each contact reads the template in their language (docs/templates.md)
            print("    " + meta["messages_by_language"].value.replace("\n", "\n    "))


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


def print_experiments(instance, run_id: str) -> None:
    """Each A/B test's per-variant results (sent = contacts sent the campaign, goal reached) and verdict."""
    meta = materializations(instance, run_id).get("experiments/experiment_results")
    if meta is None:
        raise DemoError(f"experiment_evaluation_job run {run_id} materialised no experiments/experiment_results")
    for name, value in meta.items():
        if name not in ("verdicts", "looks_taken"):
            print(f"  A/B test {name} — {value.value}\n".replace("\n", "\n  "))
    print("  " + meta["verdicts"].value.replace("\n", "\n  "))


def print_funnel(instance, run_id: str) -> None:
    meta = materializations(instance, run_id).get("reports/campaign_funnel_export")
    if meta is None:
        raise DemoError(f"reports_job run {run_id} materialised no reports/campaign_funnel_export")
    print(meta["funnel"].value)
    for name, label in (("csv_path", "CSV"), ("html_path", "HTML")):
        print(f"  {label:4} {meta[name].value}")


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (DemoError, ServiceError) as error:
        print(f"\nDEMO FAILED: {error}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("\nDemo interrupted; its services are stopped. `make demo` starts afresh.", file=sys.stderr)
        sys.exit(130)
