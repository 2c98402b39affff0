"""The README's first command, exactly as a newcomer types it, on a fresh clone of HEAD.

`git clone` of this repository into a temporary folder (no `.venv`, no `.algor`, nothing from this
checkout but its commits), then `make demo` twice: the first installs and runs, the second must
recognise its own home and run again. The pip cache may be warm; the venv is built from scratch.
Slow (a full install), so developers can leave it out with `-m "not fresh_clone"`; `.ci/run`
runs it (`make test` selects everything).
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FUNNEL_ROW = re.compile(r"^\| demo \| black_friday_2026 \| (email|telegram) \| \d+ \|", re.MULTILINE)


@pytest.mark.fresh_clone
def test_make_demo_works_on_a_fresh_clone_and_again(tmp_path):
    clone = tmp_path / "algor-orchestrator"
    subprocess.run(["git", "clone", "--quiet", str(REPO), str(clone)], check=True, timeout=120)
    # A newcomer's shell: none of this session's project or Dagster settings, nor its venv.
    env = {key: value for key, value in os.environ.items() if not key.startswith(("ALGOR_", "DAGSTER_", "VIRTUAL_ENV", "PYTHONPATH"))}
    env["PATH"] = os.pathsep.join(p for p in env["PATH"].split(os.pathsep) if not p.startswith(str(REPO)))
    for attempt in ("first", "second"):
        result = subprocess.run(["make", "demo"], cwd=clone, env=env, capture_output=True, text=True, timeout=1800)
        output = result.stdout + result.stderr
        assert result.returncode == 0, f"{attempt} `make demo` failed:\n{output[-6000:]}"
        assert "[8/8]" in output, output[-3000:]
        assert {m.group(1) for m in FUNNEL_ROW.finditer(output)} == {"email", "telegram"}, output[-3000:]
    assert (clone / ".algor" / "reports" / "campaign_funnel.html").is_file()
