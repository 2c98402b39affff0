"""`make demo` as a test, so it cannot rot: a real subprocess on the embedded default, in temp dirs."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_demo_runs_end_to_end_and_prints_the_funnel(tmp_path):
    env = {key: value for key, value in os.environ.items() if not key.startswith(("ALGOR_", "DAGSTER_"))}
    env["ALGOR_HOME"] = str(tmp_path / "algor")
    result = subprocess.run([sys.executable, "demo/run.py"], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-5000:]
    assert "[7/7]" in output
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
    assert (tmp_path / "algor" / "reports" / "campaign_funnel.html").is_file()


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
