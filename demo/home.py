"""The demo's home (`$ALGOR_HOME`, default `.algor/`): claimed by a marker, never guessed at.

`make demo` wipes the home it runs in, so it must never wipe a folder someone else owns. A home is
the demo's when it holds the marker file the demo (or `make ui`) wrote into it when it first
created it; an empty or missing folder is claimed by writing the marker first. Anything else is
refused, whatever it holds. Resetting removes everything except the marker, so a reset that is
interrupted half-way still leaves a home the next run recognises.

The Dagster instance of the demo and of `make ui` always lives in ``<home>/dagster_home`` with
the project's embedded instance settings (`deploy/embedded/dagster.yaml`), so an operator's own
``DAGSTER_HOME`` is never written to.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from demo.services import stop_leftovers

REPO = Path(__file__).resolve().parents[1]
MARKER = ".algor-demo-home"
MARKER_TEXT = "This folder is the Algor Orchestrator demo's home: `make demo` resets it on every run.\n"
INSTANCE_YAML = REPO / "deploy" / "embedded" / "dagster.yaml"


class NotADemoHome(RuntimeError):
    """The folder holds files and no marker: it is not ours to reset."""


def dagster_home(home: Path) -> Path:
    return home / "dagster_home"


def claim(home: Path) -> Path:
    """Make ``home`` the demo's: create it with the marker if it is missing or holds no file.

    Returns the Dagster home inside it, with the embedded instance settings in place.
    Raises :class:`NotADemoHome` for a non-empty folder without the marker.
    """
    marker = home / MARKER
    if not marker.is_file():
        if home.exists() and _holds_files(home):
            raise NotADemoHome(
                f"ALGOR_HOME={home} holds files and no {MARKER} marker, so it is not a demo's home; "
                "refusing to reset it. Point ALGOR_HOME at an empty or new folder, or, if it is an "
                "earlier demo's home from before the marker existed, remove it (`make clean`)."
            )
        home.mkdir(parents=True, exist_ok=True)
        marker.write_text(MARKER_TEXT, encoding="utf-8")
    instance_dir = dagster_home(home)
    instance_dir.mkdir(exist_ok=True)
    shutil.copyfile(INSTANCE_YAML, instance_dir / "dagster.yaml")
    return instance_dir


def _holds_files(folder: Path) -> bool:
    """Any file (or link) anywhere below ``folder``; stops at the first. Empty folders lose nothing
    (an older `make install` left an empty ``dagster_home`` in the default home)."""
    return any(not path.is_dir() or path.is_symlink() for path in folder.rglob("*"))


def reset(home: Path) -> Path:
    """Claim ``home``, stop what a killed earlier run left running on it, and empty it of
    everything but the marker (a fresh demo each time)."""
    claim(home)
    stop_leftovers(home)
    for child in home.iterdir():
        if child.name == MARKER:
            continue
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()
    return claim(home)
