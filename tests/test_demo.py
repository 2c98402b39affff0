"""The demo's home: recognised by the marker the demo writes, never guessed from what it holds.

The demo end to end, and the console on its runs, are in test_operator_console.py; the README's
commands on a fresh clone in test_fresh_clone.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from demo.home import MARKER, NotADemoHome, claim, reset
from demo.services import PIDS_FILE, Services

REPO = Path(__file__).resolve().parents[1]


def test_a_missing_or_empty_home_is_claimed_with_the_marker_and_the_instance_settings(tmp_path):
    for home in (tmp_path / "new", tmp_path / "empty", tmp_path / "old-install"):
        if home.name != "new":
            home.mkdir()
        if home.name == "old-install":
            (home / "dagster_home").mkdir()  # what `make install` used to create
        dagster_home = claim(home)
        assert (home / MARKER).is_file()
        assert dagster_home == home / "dagster_home"
        assert "QueuedRunCoordinator" in (dagster_home / "dagster.yaml").read_text()


def test_reset_keeps_only_the_marker_so_an_interrupted_run_is_still_recognised(tmp_path):
    home = tmp_path / "algor"
    claim(home)
    (home / "operational.sqlite3").write_text("old state")
    (home / "logs").mkdir()
    (home / "logs" / "gateway.log").write_text("old log")
    reset(home)
    assert sorted(p.name for p in home.iterdir()) == sorted([MARKER, "dagster_home"])
    assert list((home / "dagster_home").iterdir()) == [home / "dagster_home" / "dagster.yaml"]
    # What `make ui` leaves (an instance with runs) is a demo home too.
    (home / "dagster_home" / "history").mkdir()
    reset(home)
    assert not (home / "dagster_home" / "history").exists()


def test_a_foreign_folder_is_refused_and_left_untouched(tmp_path):
    home = tmp_path / "mine"
    (home / "dagster_home").mkdir(parents=True)  # looks like ours, holds no marker
    (home / "precious.txt").write_text("keep me")
    with pytest.raises(NotADemoHome, match="refusing to reset"):
        reset(home)
    assert (home / "precious.txt").read_text() == "keep me"


def test_services_a_killed_run_left_behind_are_stopped_by_the_next_reset_and_strangers_are_not(tmp_path):
    home = tmp_path / "algor"
    env = {**os.environ, "DAGSTER_HOME": str(claim(home))}
    left_behind = Services(env).start("daemon", ["sleep", "300"])  # its run is SIGKILLed: never stopped
    # A recorded pid now belonging to a process that is not on this home (pids are reused).
    stranger = subprocess.Popen(["sleep", "300"], start_new_session=True)
    with open(home / PIDS_FILE, "a") as pids:
        pids.write(f"{stranger.pid}\n")
    try:
        reset(home)
        assert left_behind.wait(timeout=15) is not None
        assert stranger.poll() is None
    finally:
        stranger.kill()
        left_behind.kill()


def test_demo_fails_loudly_with_a_reason(tmp_path):
    home = tmp_path / "not-a-demo-dir"
    home.mkdir()
    (home / "precious.txt").write_text("keep me")
    env = {key: value for key, value in os.environ.items() if not key.startswith(("ALGOR_", "DAGSTER_"))}
    env["ALGOR_HOME"] = str(home)
    result = subprocess.run([sys.executable, "demo/run.py"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert "DEMO FAILED" in result.stderr and "refusing to reset" in result.stderr
    assert (home / "precious.txt").read_text() == "keep me"
