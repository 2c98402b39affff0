"""The drop-folder sensor: a contact CSV dropped in ``<inbox>/<tenant>/`` imports itself, once.

``<inbox>`` is ``$ALGOR_HOME/imports/inbox`` unless ``ALGOR_IMPORT_INBOX`` says otherwise
(``resources.settings``). A file is taken only when two ticks in a row found it with the same size
and modification time, so one still being copied or saved waits. Then it is moved, under the
SHA-256 of its content, to ``<tenant>/processed/<sha256>/<name>`` (the inbox shows what is still to
come, and the run reads a file nobody is writing to) and one ``contact_import_job`` run is requested
with ``run_key = import:<tenant>:<sha256>``: Dagster launches one run per key, so the same content
dropped again, under any name, is never imported twice. Folders of unknown tenants are left alone.

Moving a file and launching its run are two steps: if the daemon stopped between them the file
would sit in ``processed/`` with no run. So files moved within ``RETRY_WINDOW`` are requested again
on every tick; their run key makes that a no-op once the run exists.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
from pathlib import Path

import dagster as dg

from jobs.imports import contact_import_job
from orchestrator_assets.groups import IMPORTS
from policies.loader import load_tenants
from resources.settings import get_settings

IMPORT_OP = f"{IMPORTS}__contact_import_rows"
PROCESSED = "processed"
RETRY_WINDOW = dt.timedelta(minutes=10)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _request(tenant: str, sha256: str, path: Path) -> dg.RunRequest:
    return dg.RunRequest(
        run_key=f"import:{tenant}:{sha256}",
        partition_key=tenant,
        run_config={"ops": {IMPORT_OP: {"config": {"csv_path": str(path)}}}},
        tags={"algor/import_file": path.name[:200]},
    )


def drop_folder_requests(inbox: Path, tenants: set[str], seen: dict[str, list[int]], now: dt.datetime) -> tuple[list[dg.RunRequest], dict[str, list[int]]]:
    """Planning step: run requests for the files that are stable since the last tick (moved to
    ``processed/``), and the new ``seen`` map (``tenant/name`` → [size, mtime_ns]) of files still
    waiting."""
    requests: dict[str, dg.RunRequest] = {}
    still_waiting: dict[str, list[int]] = {}
    for tenant in sorted(tenants):
        folder = inbox / tenant
        if not folder.is_dir():
            continue
        for path in sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() == ".csv"):  # Windows saves CRM.CSV
            stat = path.stat()
            key, observed = f"{tenant}/{path.name}", [stat.st_size, stat.st_mtime_ns]
            if seen.get(key) != observed:
                still_waiting[key] = observed  # new or changed since the last tick: wait for the next
                continue
            sha256 = _sha256(path)
            target = folder / PROCESSED / sha256 / path.name
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, target)
            os.utime(target)  # the retry window counts from the move
            requests.setdefault(f"{tenant}:{sha256}", _request(tenant, sha256, target))
        for path in sorted((folder / PROCESSED).glob("*/*")):
            moved_at = dt.datetime.fromtimestamp(path.stat().st_mtime, dt.UTC)
            if now - moved_at <= RETRY_WINDOW:
                requests.setdefault(f"{tenant}:{path.parent.name}", _request(tenant, path.parent.name, path))
    return list(requests.values()), still_waiting


@dg.sensor(
    name="contact_drop_folder_sensor",
    job=contact_import_job,
    minimum_interval_seconds=15,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Imports each contact CSV dropped in the import inbox (<inbox>/<tenant>/*.csv) once it stops changing; one run per content (run_key = SHA-256).",
)
def contact_drop_folder_sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult | dg.SkipReason:
    inbox = get_settings().import_inbox
    tenants = set(load_tenants().tenants)
    if inbox.is_dir():
        unknown = sorted(p.name for p in inbox.iterdir() if p.is_dir() and p.name not in tenants)
        if unknown:
            context.log.warning(f"import inbox {inbox}: folders of no configured tenant left alone: {unknown}")
    seen = json.loads(context.cursor) if context.cursor else {}
    requests, waiting = drop_folder_requests(inbox, tenants, seen, dt.datetime.now(dt.UTC))
    cursor = json.dumps(waiting, sort_keys=True)
    if not requests:
        return dg.SensorResult(skip_reason=f"no stable new file in {inbox} ({len(waiting)} waiting to settle)", cursor=cursor)
    return dg.SensorResult(run_requests=requests, cursor=cursor)
