"""The demo and the operator console as an operator meets them.

One real `demo/run.py` on the embedded default (temp home), then `make ui` on its instance, looked
at in Debian's Chromium driven headless by Playwright (the system binary: a browser download cannot
work here), driven over GraphQL like an external scheduler would, and stopped with Ctrl-C.
Screenshots land in docs/img/, where the README shows them.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import httpx
import pandas as pd
import pytest

from demo.run import IMPORT_SAMPLE
from orchestrator_assets.imports.normalise import normalise_phones
from orchestrator_assets.imports.sample_contacts import SAMPLE_PATH
from demo.services import running_processes
from orchestrator_assets import groups

REPO = Path(__file__).resolve().parents[1]
SCREENSHOTS = REPO / "docs" / "img"
LOCATION = "algor_orchestrator"
DOMAINS = sorted(value for name, value in vars(groups).items() if name.isupper())
# What the Dagster UI shows when a page or a query fails, and a Markdown table left unrendered.
ERROR_MARKERS = ("Something went wrong", "Unexpected error", "An error occurred", "PythonError", "could not be found", "Page not found")
RAW_MARKDOWN_TABLE = re.compile(r"\|\s*-{3,}\s*\|")
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@dataclass
class Console:
    url: str
    process: subprocess.Popen
    log: Path


def clean_env(home: Path) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("ALGOR_", "DAGSTER_"))}
    env["ALGOR_HOME"] = str(home)
    return env


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """(home, printed output) of one demo run."""
    home = tmp_path_factory.mktemp("console") / "algor"
    result = subprocess.run([sys.executable, "demo/run.py"], cwd=REPO, env=clean_env(home), capture_output=True, text=True, timeout=900)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-5000:]
    return home, output


@pytest.fixture(scope="module")
def instance(demo):
    with dg.DagsterInstance.from_config(str(demo[0] / "dagster_home")) as inst:
        yield inst


@pytest.fixture(scope="module")
def console(demo):
    """`make ui` on the demo's home, in its own session as a terminal would run it."""
    from demo.services import free_port, stop_leftovers

    port = free_port()
    venv = Path(sys.executable).parent.parent
    log = demo[0].parent / "make-ui.log"
    with open(log, "w") as output:
        process = subprocess.Popen(
            ["make", "-s", "ui", f"UI_PORT={port}", f"VENV={venv}"],
            cwd=REPO,
            env=clean_env(demo[0]),
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 240  # what the operator waits for: the console's own line
    while "Operator console on" not in log.read_text() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.5)
    assert process.poll() is None and "Operator console on" in log.read_text(), log.read_text()[-5000:]
    assert httpx.get(f"{url}/server_info", timeout=10).status_code == 200
    # Dagster's one-time "join the community" dialog (stored in the instance) would cover the pages.
    httpx.post(f"{url}/graphql", json={"query": "mutation { setNuxSeen }"}, timeout=30).raise_for_status()
    yield Console(url, process, log)
    if process.poll() is None:  # the Ctrl-C test did not get to run
        os.killpg(process.pid, signal.SIGINT)
        process.wait(60)
    stop_leftovers(demo[0])  # nothing a failed test left behind outlives the module


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium")
    assert chromium, "Debian's chromium is missing: `make browser` installs it (make test does)"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_FLAGS)
        yield browser
        browser.close()


class Browse:
    """One browser page on the console; every visit fails on an error the operator would see."""

    def __init__(self, page, url: str):
        self.page = page
        self.url = url
        self.script_errors: list[str] = []
        page.on("pageerror", lambda error: self.script_errors.append(str(error)))

    def visit(self, path: str, wait_for: str) -> str:
        """Open ``path``, wait for ``wait_for`` to show, return the text."""
        self.page.goto(self.url + path)
        self.page.get_by_text(wait_for, exact=False).first.wait_for(timeout=60_000)
        self.page.wait_for_load_state("networkidle")
        text = self.page.inner_text("body")
        shown = [marker for marker in ERROR_MARKERS if marker in text]
        assert not shown, f"{path} shows {shown}"
        assert not RAW_MARKDOWN_TABLE.search(text), f"{path} shows a Markdown table as raw text"
        assert not self.script_errors, f"{path}: uncaught script errors {self.script_errors}"
        return text

    def table(self, containing: str):
        return self.page.locator("table", has_text=containing).first

    def screenshot(self, name: str) -> None:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(SCREENSHOTS / name))


@pytest.fixture
def ui(browser, console):
    context = browser.new_context(viewport={"width": 1600, "height": 1000})
    yield Browse(context.new_page(), console.url)
    context.close()


def demo_run(instance, job: str) -> dg.DagsterRun:
    runs = instance.get_runs(dg.RunsFilter(job_name=job))
    assert runs, f"no {job} run in the demo's instance"
    return runs[-1]


def test_the_console_starts_without_alarming_warnings(console):
    """Nothing on the documented path tells the operator their instance file is ignored, or that
    the command is superseded (both came from `dagster dev`)."""
    output = console.log.read_text()
    for alarm in ("will not be used", "SupersessionWarning", "Traceback"):
        assert alarm not in output, f"make ui printed {alarm!r}:\n{output[-3000:]}"


def test_demo_runs_end_to_end_and_prints_the_funnel(demo):
    home, output = demo
    assert "[8/8]" in output
    # The e-mail subject-line A/B test: each variant's sent and clicked contacts, and a verdict.
    assert re.search(r"^\s+\| control \(control\) \| \d+ \| \d+ \|", output, re.MULTILINE)
    assert re.search(r"^\s+\| deadline \| \d+ \| \d+ \|", output, re.MULTILINE)
    assert re.search(r"\| black_friday_2026 \| 1 of 3 \| (winner \w+|no winner yet \(look 1 of 3\)) \|", output)
    assert "rows_rejected=17" in output
    # The daemon's sensor, not the demo, launched the delivery processing.
    assert re.search(r"run [0-9a-f]{8} \(inbox:demo:\d+-\d+\): SUCCESS", output)
    # | tenant | campaign | channel | attempted | accepted | delivered | …
    rows = {
        m.group(1): (int(m.group(2)), int(m.group(3)), m.group(4))
        for m in re.finditer(r"\| demo \| black_friday_2026 \| (\w+) \| (\d+) \| (\d+) \| (\d+|—) \|", output)
    }
    assert set(rows) == {"email", "telegram"} and all(accepted > 0 for _, accepted, _ in rows.values())
    assert rows["telegram"][2] == "—" and rows["email"][2] != "—"  # no receipts on Telegram: delivery unknown
    # It tells where the report files are, and they are there.
    printed = dict(re.findall(r"^\s+(CSV|HTML)\s+(\S+)$", output, re.MULTILINE))
    assert Path(printed["HTML"]) == home / "reports" / "campaign_funnel.html" and Path(printed["HTML"]).is_file()
    assert Path(printed["CSV"]).is_file()


def _sample_personal_values() -> set[str]:
    """The demo sample's phones (as written and in E.164), e-mails, names and chat ids: 8 bytes at
    least, since a shorter value turns up by chance in megabytes of ciphertext."""
    sample = pd.read_csv(SAMPLE_PATH, dtype=str, keep_default_na=False)
    e164, _, _ = normalise_phones(sample["phone"], "RU")
    values = {value for field in ("first_name", "last_name", "email", "phone", "telegram_chat_id") for value in sample[field]}
    values |= {value for value in e164.dropna()} | {value.lower() for value in sample["email"]}
    return {value for value in values if len(value.strip().encode()) >= 8}


def _bytes_if_still_there(path) -> bytes:
    """The file's bytes, or none when it went after it was listed: the running daemon checkpoints
    its SQLite stores, and a ``-wal`` file goes with the checkpoint (its pages are then in the
    database file, which is read too)."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return b""


def test_the_demos_store_and_dagster_files_hold_no_plaintext_personal_data(demo):
    """What someone who copies the demo's home gets: the operational store (with its WAL), and
    every file of the Dagster instance (run storage, event logs, step outputs, compute logs) and of
    the gateway's logs. The sandbox's own files are left out: it plays the providers, who are
    given the addresses on purpose."""
    home, _ = demo
    files = [*home.glob("operational.sqlite3*"), *(p for p in (home / "dagster_home").rglob("*") if p.is_file())]
    files += [p for p in (home / "logs").glob("*") if p.is_file() and "sandbox" not in p.name]
    assert any(p.name == "operational.sqlite3" for p in files) and len(files) > 10
    known = _sample_personal_values()
    assert len(known) > 2000
    leaks = {p.relative_to(home).as_posix(): sorted(v for v in known if v.encode() in data)[:5] for p in files if (data := _bytes_if_still_there(p))}
    assert {path: found for path, found in leaks.items() if found} == {}


def test_demo_runs_are_launched_through_the_code_location(instance):
    """The operator finds them under their jobs and re-executes them from the same code."""
    for job in ("campaign_pipeline_job", "reports_job"):
        run = demo_run(instance, job)
        assert run.status == dg.DagsterRunStatus.SUCCESS
        assert run.remote_job_origin is not None, f"{job} ran outside the code location"
        assert run.remote_job_origin.location_name == LOCATION


def test_asset_graph_shows_every_asset_group(ui):
    ui.visit("/asset-groups", "Global asset lineage")
    for group in DOMAINS:  # the graph and its sidebar load after the page's frame
        ui.page.get_by_text(group, exact=True).first.wait_for(timeout=30_000)
    ui.screenshot("asset-graph.png")


def test_campaign_sends_and_its_last_materialisation_render(ui):
    text = ui.visit("/assets/sends/campaign_sends", "Latest materialization")
    assert "campaign_pipeline_job" in text
    assert ui.table("black_friday_2026").is_visible(), "the per-campaign table is not rendered"
    ui.screenshot("campaign-sends.png")

    ui.visit("/assets/reports/campaign_funnel_export", "Latest materialization")
    funnel = ui.table("black_friday_2026").inner_text()
    assert "telegram" in funnel and "email" in funnel

    ui.visit("/assets/imports/contact_import_rows", "Latest materialization")
    ui.page.get_by_text("Show Markdown").first.click()  # a long report opens in a dialog
    report = ui.table("reason")
    report.wait_for(timeout=10_000)
    assert "not a valid phone number" in report.inner_text()


def test_the_campaign_job_lists_its_run_and_the_run_page_reads_well(ui, instance):
    run = demo_run(instance, "campaign_pipeline_job")
    text = ui.visit(f"/locations/{LOCATION}/jobs/campaign_pipeline_job/runs", "campaign_pipeline_job")
    assert "No runs found" not in text
    assert run.run_id[:8] in text

    text = ui.visit(f"/runs/{run.run_id}", "RUN_SUCCESS")
    assert "Success" in text and "partition: demo" in text
    ui.screenshot("campaign-run.png")


def test_the_campaign_launchpad_opens(ui):
    text = ui.visit(f"/locations/{LOCATION}/jobs/campaign_pipeline_job/playground", "Launch Run")
    assert "csv_path" in text


def test_an_external_driver_launches_the_campaign_over_graphql(console, instance):
    """What an external scheduler or a CI pipeline does: submit through the webserver's GraphQL API
    and wait; the console's daemon takes it off the queue."""
    from dagster_graphql import DagsterGraphQLClient

    client = DagsterGraphQLClient("127.0.0.1", port_number=int(console.url.rsplit(":", 1)[1]))
    run_id = client.submit_job_execution(
        "campaign_pipeline_job",
        repository_location_name=LOCATION,
        run_config=IMPORT_SAMPLE,
        tags={"dagster/partition": "demo"},
    )
    deadline = time.monotonic() + 600
    status = client.get_run_status(run_id)
    while status not in (dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED) and time.monotonic() < deadline:
        time.sleep(2)
        status = client.get_run_status(run_id)
    assert status == dg.DagsterRunStatus.SUCCESS
    # Sent once already by the demo: this run sends nothing twice.
    records = instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION).records
    sends = [r.asset_materialization for r in records if r.asset_materialization.asset_key == dg.AssetKey(["sends", "campaign_sends"])]
    assert sends and sends[0].metadata["sent"].value == 0


def _descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for process in running_processes():
        children.setdefault(process.ppid, []).append(process.pid)
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def _alive(pids: set[int]) -> set[int]:
    return {process.pid for process in running_processes() if process.pid in pids and process.state != "Z"}


def test_ctrl_c_stops_the_console_and_everything_it_started_within_seconds(console):
    url, process = console.url, console.process
    started = _descendants(process.pid)
    assert len(started) >= 4, "expected make, the console, the webserver, the daemon and their code servers"
    began = time.monotonic()
    os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C in the terminal does
    process.wait(30)
    while _alive(started) and time.monotonic() - began < 30:
        time.sleep(0.2)
    took = time.monotonic() - began
    assert not _alive(started), "processes left running after Ctrl-C"
    assert took < 10, f"make ui took {took:.1f} s to stop"
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{url}/server_info", timeout=2)
