"""The dbt project behind the reports, and how Dagster invokes it.

dbt always runs through ``algor-dbt`` (:mod:`resources.chdb_bridge`), never plain ``dbt``: that
entry point derives the connection from :func:`resources.settings.get_settings` and lets
dbt-clickhouse reach the embedded chDB warehouse. Nothing here reads the environment at import
time; the dbt target is chosen when a resource is built (:func:`make_dbt_resource`).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
from pathlib import Path

from dagster_dbt import DbtCliResource, DbtProject

from resources.settings import REPO_ROOT, get_settings

DBT_PROJECT_DIR = REPO_ROOT / "dbt_project"
DBT_EXECUTABLE_NAME = "algor-dbt"
MANIFEST_PATH = DBT_PROJECT_DIR / "target" / "manifest.json"

# target=None: the profile's default target, which algor-dbt sets from settings.dbt_target
# (ALGOR_DBT_TARGET) in the dbt process itself, so the choice is made at run time, not import.
dbt_project = DbtProject(project_dir=DBT_PROJECT_DIR, profiles_dir=DBT_PROJECT_DIR)


class DbtExecutableNotFound(RuntimeError):
    """``algor-dbt`` is not installed where Dagster can find it."""


def dbt_executable() -> str:
    """Path of the ``algor-dbt`` console script: next to the running interpreter, else on PATH."""
    candidate = Path(sys.executable).with_name(DBT_EXECUTABLE_NAME)
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return str(candidate)
    on_path = shutil.which(DBT_EXECUTABLE_NAME)
    if on_path:
        return on_path
    raise DbtExecutableNotFound(
        f"{DBT_EXECUTABLE_NAME!r} was not found next to {sys.executable} nor on PATH. It is the "
        "project's console script (resources.chdb_bridge:main): install the project into this "
        "environment with `pip install -e .` (or `make install`)."
    )


def make_dbt_resource() -> DbtCliResource:
    """The ``dbt`` resource: this project, run by ``algor-dbt``, on the target the settings pick."""
    return DbtCliResource(
        project_dir=dbt_project,
        dbt_executable=dbt_executable(),
        target=get_settings().dbt_target,
    )


# What dbt reads when it parses; a manifest older than any of these is stale.
_PROJECT_INPUTS = ("dbt_project.yml", "profiles.yml", "models", "seeds", "tests", "macros")


def _newest_input_mtime() -> float:
    newest = 0.0
    for name in _PROJECT_INPUTS:
        path = DBT_PROJECT_DIR / name
        if path.is_file():
            newest = max(newest, path.stat().st_mtime)
        elif path.is_dir():
            for child in path.rglob("*"):
                if child.suffix in (".sql", ".yml", ".yaml", ".csv", ".md"):
                    newest = max(newest, child.stat().st_mtime)
    return newest


def manifest_is_current() -> bool:
    """True if the manifest exists and no project file changed after it was written."""
    return MANIFEST_PATH.is_file() and MANIFEST_PATH.stat().st_mtime >= _newest_input_mtime()


def ensure_manifest(force: bool = False) -> Path:
    """Make sure ``dbt_project/target/manifest.json`` exists and is current; ``dbt parse`` if not.

    Cheap when it is (a stat of the few project files). ``parse`` needs no database connection.
    It runs the bridge module with this interpreter (so it works before the console script is
    installed), with the settings' target (dagster-dbt passes ``--target`` too, and a different
    target would void dbt's partial parsing), under a file lock so processes importing the
    definitions at the same time parse once.
    """
    if not force and manifest_is_current():
        return MANIFEST_PATH
    MANIFEST_PATH.parent.mkdir(parents=True, exist_ok=True)
    with open(MANIFEST_PATH.parent / ".parse.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if force or not manifest_is_current():
                _parse()
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return MANIFEST_PATH


def _parse() -> None:
    package_root = str(Path(__file__).resolve().parents[1])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    command = [
        sys.executable,
        "-m",
        "resources.chdb_bridge",
        "parse",
        "--quiet",
        "--project-dir",
        str(DBT_PROJECT_DIR),
        "--profiles-dir",
        str(DBT_PROJECT_DIR),
        "--target",
        get_settings().dbt_target,
    ]
    result = subprocess.run(command, cwd=DBT_PROJECT_DIR, env=env, capture_output=True, text=True)
    if result.returncode != 0 or not MANIFEST_PATH.is_file():
        raise RuntimeError(
            f"dbt parse failed (exit {result.returncode}); the reports assets need "
            f"{MANIFEST_PATH}.\n{result.stdout}\n{result.stderr}"
        )


if __name__ == "__main__":
    # `python -m resources.dbt`: (re)build the manifest, e.g. from the Makefile at install.
    print(ensure_manifest(force=True))
