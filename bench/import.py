"""Contact import at scale: a generated CSV through read → validate → normalise → dedup → commit.

    .venv/bin/python bench/import.py [--rows 1000000] [--seed 1] [--profile] [--profile-commit] [--skip-commit]

1. A CSV of ``--rows`` contacts is generated into a temp dir, shaped like a real CRM export:
   Russian, British, German and French phones in the spellings people type (``+7 (916) …``,
   ``8 916 …``, ``8916…``, ``916-…``, ``0049 …``, extensions), e-mails in mixed case, names with
   stray spaces, consent columns; 1 % bad rows (an unparseable phone or e-mail, a consent value
   no one understands) and 5 % duplicates (half exact repeats of an earlier row, half another
   person's phone under a new external id).
2. ``pandas.read_csv`` of the same file is the floor: nothing that reads the file can be faster.
3. The import as the asset runs it (``read_contacts_file``, ``validate_contact_rows`` for a tenant
   in Russia), timed per stage: ``normalise`` and ``dedup`` are the time spent in
   ``orchestrator_assets.imports.normalise`` (measured around its functions), ``validate`` the
   rest of validation (pandera checks, cross-column rules, building the frame).
4. ``commit``: the good rows into a fresh PostgreSQL database (``tests/pg.py``), in one
   transaction, by ``commit_rows`` (``imports.commit.commit_import``: stored duplicates, contacts,
   consent ledger, import history).
5. ``store_floor_seconds``: the rows the commit wrote, loaded by binary ``COPY`` alone into another
   fresh database with the same schema (``store_floor``): what PostgreSQL itself needs on this
   machine. ``commit_x_store_floor`` is the commit's time over it.

``peak_rss_mb`` is the process's high-water mark (``ru_maxrss``; the CSV is generated in a child).
``--profile`` prints the top of a cProfile of validate + normalise + dedup to stderr,
``--profile-commit`` one of the commit (main thread only: the sealing worker thread is invisible to
cProfile; ``py-spy record --threads`` sees both). Progress goes to stderr; the last stdout line is
one JSON object.
"""

from __future__ import annotations

import argparse
import cProfile
import datetime as dt
import functools
import json
import multiprocessing
import pstats
import resource
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import pandas as pd
import psycopg
import sqlalchemy as sa

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # tests/pg.py: throw-away PostgreSQL databases

from pg import create_database, drop_database  # noqa: E402

from orchestrator_assets.imports import normalise, validation  # noqa: E402
from orchestrator_assets.imports.commit import ImportSource, commit_import  # noqa: E402
from orchestrator_assets.imports.reading import read_contacts_file  # noqa: E402
from orchestrator_assets.imports.validation import CSV_COLUMNS, validate_contact_rows  # noqa: E402
from policies.tenants import ImportMode  # noqa: E402
from resources.opstore import engine_for, migrate  # noqa: E402

TENANT = "demo"
REGION, TIMEZONE = "RU", "Europe/Moscow"
NOW = dt.datetime(2026, 11, 30, 12, 0, tzinfo=dt.UTC)
BAD_SHARE, DUPLICATE_SHARE = 0.01, 0.05
FIRST = ["Иван", "Анна", "Пётр", "Мария", "John", "Emma", "Jürgen", "Léa", "Ольга", "Keith"]
LAST = ["Петров", "Иванова", "Smith", "Müller", "Dubois", "Сидоров", "Mercer", "Kuznetsova"]


def log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _phones(rng: np.random.Generator, n: int) -> pd.Series:
    """Distinct numbers (a permutation of the subscriber part), each in one of its country's spellings."""
    serial = pd.Series((np.arange(n, dtype=np.int64) * 7_919_173 + 1_234_567) % 10**7).astype(str).str.zfill(7)
    code = pd.Series(rng.choice(["916", "903", "905", "925", "926", "985", "999", "963", "915", "977"], n))
    s3, s2a, s2b = serial.str[:3], serial.str[3:5], serial.str[5:]
    spellings = {
        "+7 (916) 123-45-67": "+7 (" + code + ") " + s3 + "-" + s2a + "-" + s2b,
        "8 916 123 45 67": "8 " + code + " " + s3 + " " + s2a + " " + s2b,
        "89161234567": "8" + code + serial,
        "916-123-45-67": code + "-" + s3 + "-" + s2a + "-" + s2b,
        "+79161234567": "+7" + code + serial,
        "+7 495 123-45-67 доб. 45": "+7 495 " + s3 + "-" + s2a + "-" + s2b + " доб. " + s2a,
        "+44 7911 1234567": "+44 79" + code.str[2] + " " + serial,
        "0049 151 12345670": "0049 151 " + serial + "0",
        "+33 6 12 34 56 70": "+33 6 " + serial.str[:2] + " " + serial.str[2:4] + " " + serial.str[4:6] + " " + serial.str[6] + "0",
    }
    weights = [0.2, 0.15, 0.1, 0.08, 0.12, 0.03, 0.12, 0.12, 0.08]
    choice = rng.choice(len(spellings), n, p=weights)
    phones = pd.Series("", index=serial.index)
    for position, spelled in enumerate(spellings.values()):
        phones[choice == position] = spelled[choice == position]
    return phones


def generate(rows: int, seed: int, path: Path) -> dict[str, int]:
    """Write the benchmark CSV; returns what was planted."""
    rng = np.random.default_rng(seed)
    ids = np.char.add("B", np.char.zfill(np.arange(rows).astype(str), 8))
    local = np.char.add(np.char.add(rng.choice(["ivan", "anna", "john", "emma", "olga"], rows), "."), np.arange(rows).astype(str))
    email = np.char.add(np.char.add(local, "@"), rng.choice(["mail.ru", "example.com", "Example.ORG", "yandex.ru"], rows))
    email = np.where(rng.random(rows) < 0.2, np.char.upper(email), email)
    email = np.where(rng.random(rows) < 0.85, email, "")
    phone = np.where(rng.random(rows) < 0.8, _phones(rng, rows).to_numpy(dtype=str), "")
    decision = rng.choice(["yes", "да", "no", "нет", "", ""], (rows, 3))
    has_decision = (decision != "").any(axis=1)
    moments = (NOW - dt.timedelta(days=400)).timestamp() + rng.integers(0, 400 * 86400, rows)
    consent_at = pd.to_datetime(moments, unit="s", utc=True).strftime("%Y-%m-%dT%H:%M:%SZ").to_numpy()
    frame = pd.DataFrame(
        {
            "external_id": ids,
            "first_name": np.where(rng.random(rows) < 0.05, np.char.add(" ", rng.choice(FIRST, rows)), rng.choice(FIRST, rows)),
            "last_name": rng.choice(LAST, rows),
            "email": email,
            "phone": phone,
            "telegram_chat_id": np.where(rng.random(rows) < 0.7, rng.integers(10**8, 8 * 10**9, rows).astype(str), ""),
            "city": rng.choice(["Москва", "Казань", "London", "Berlin", "Paris", ""], rows),
            "language": rng.choice(["ru", "en", "RU"], rows),
            "consent_email": decision[:, 0],
            "consent_telegram": decision[:, 1],
            "consent_sms": decision[:, 2],
            "consent_source": np.where(has_decision, "import:bench", ""),
            "consent_at": np.where(has_decision, consent_at, ""),
        },
        columns=list(CSV_COLUMNS),
    )
    no_address = (frame["email"] == "") & (frame["phone"] == "") & (frame["telegram_chat_id"] == "")
    frame.loc[no_address, "telegram_chat_id"] = "123456789"
    positions = rng.permutation(np.arange(1, rows))
    bad = positions[: int(rows * BAD_SHARE)]
    frame.loc[bad[0::3], "phone"] = "12345"
    frame.loc[bad[1::3], "email"] = "nobody@@example.ru"
    frame.loc[bad[2::3], "consent_email"] = "может быть"
    duplicates = positions[len(bad) : len(bad) + int(rows * DUPLICATE_SHARE)]
    originals = rng.integers(0, duplicates, len(duplicates))  # always an earlier row
    exact, same_phone = duplicates[0::2], duplicates[1::2]
    frame.iloc[exact] = frame.iloc[originals[0::2]].to_numpy()
    frame.loc[same_phone, "phone"] = frame["phone"].to_numpy()[originals[1::2]]
    frame.to_csv(path, index=False)
    return {"bad_rows": len(bad), "exact_duplicates": len(exact), "same_phone_duplicates": len(same_phone)}


class StageClock:
    """Seconds spent inside the normalise functions validation calls, by stage."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)

    def wrap(self, stage: str, fn):
        @functools.wraps(fn)
        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[stage] += time.perf_counter() - start

        return timed

    def install(self) -> None:
        for name in ("normalise_phones", "normalise_emails", "normalise_names", "derive_timezones", "check_timezones"):
            setattr(validation, name, self.wrap("normalise", getattr(normalise, name)))
        validation.in_file_duplicates = self.wrap("dedup", normalise.in_file_duplicates)


# What one import writes, parents first (contact_import_changes refers to contact_imports).
WRITTEN_TABLES = ("contact_imports", "contacts", "contact_import_changes", "consent_events")


def store_floor(written_url: str, scratch: Path) -> float:
    """Seconds PostgreSQL takes to load, in one transaction, exactly the rows the commit wrote
    into a fresh migrated database (same indexes, constraints and foreign keys), as binary COPY
    with nothing for Python to compute: the most any commit of these rows could hope for on this
    machine. The rows go through files, so this step adds nothing to the peak RSS."""
    target = create_database("algor_bench_floor")
    try:
        migrate(target)
        with psycopg.connect(_libpq(written_url)) as source:
            for table in WRITTEN_TABLES:
                with (scratch / f"{table}.copy").open("wb") as out, source.cursor().copy(f"COPY {table} TO STDOUT (FORMAT BINARY)") as copy:
                    for block in copy:
                        out.write(block)
        with psycopg.connect(_libpq(target)) as conn:
            started = time.perf_counter()
            with conn.transaction():
                for table in WRITTEN_TABLES:
                    with (scratch / f"{table}.copy").open("rb") as rows, conn.cursor().copy(f"COPY {table} FROM STDIN (FORMAT BINARY)") as copy:
                        while block := rows.read(1 << 20):
                            copy.write(block)
            return time.perf_counter() - started
    finally:
        drop_database(target)


def _libpq(url: str) -> str:
    return sa.make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def commit_rows(engine: sa.Engine, good: pd.DataFrame) -> dict[str, int]:
    """The store's commit of one import: contacts and their consents in one transaction."""
    good.attrs["source_file"] = "bench.csv"
    with engine.begin() as conn:
        result = commit_import(conn, TENANT, good, ImportSource.of(good), ImportMode.VALID_ROWS_ONLY, NOW, actor="bench/import.py")
    return {**result.contacts, **result.consents, "store_duplicates": result.rows_rejected}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--profile", action="store_true", help="cProfile validate + normalise + dedup (stderr)")
    parser.add_argument("--profile-commit", action="store_true", help="cProfile the commit (stderr)")
    parser.add_argument("--skip-commit", action="store_true", help="stop after validation (the commit's time is then left out)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="algor-bench-import-") as scratch:
        path = Path(scratch) / "contacts.csv"
        started = time.perf_counter()
        # In a child process, so the generator's memory is not the import's peak RSS.
        with multiprocessing.get_context("fork").Pool(1) as pool:
            planted = pool.apply(generate, (args.rows, args.seed, path))
        log(f"generated {args.rows} rows ({path.stat().st_size / 2**20:.0f} MiB) in {time.perf_counter() - started:.1f} s: {planted}")

        started = time.perf_counter()
        pd.read_csv(path, dtype=str)
        floor = time.perf_counter() - started
        log(f"read floor (pandas.read_csv): {floor:.2f} s")

        clock = StageClock()
        clock.install()
        stages: dict[str, float] = {}
        started = time.perf_counter()
        read = read_contacts_file(path)
        stages["read"] = time.perf_counter() - started

        profiler = cProfile.Profile() if args.profile else None
        started = time.perf_counter()
        if profiler:
            profiler.enable()
        result = validate_contact_rows(read.frame, REGION, NOW, rows=read.rows, default_timezone=TIMEZONE)
        if profiler:
            profiler.disable()
            pstats.Stats(profiler, stream=sys.stderr).sort_stats("cumulative").print_stats(30)
        validated = time.perf_counter() - started
        stages["normalise"], stages["dedup"] = clock.seconds["normalise"], clock.seconds["dedup"]
        stages["validate"] = validated - stages["normalise"] - stages["dedup"]
        log(f"validated: {len(result.good)} good rows, {result.errors['row'].nunique()} rejected, {len(result.notices)} collapsed")

        counts, floors = {}, {}
        if not args.skip_commit:
            url = create_database("algor_bench")
            try:
                migrate(url)
                engine = engine_for(url)
                committer = cProfile.Profile() if args.profile_commit else None
                started = time.perf_counter()
                if committer:
                    committer.enable()
                counts = commit_rows(engine, result.good)
                stages["commit"] = time.perf_counter() - started
                if committer:
                    committer.disable()
                    pstats.Stats(committer, stream=sys.stderr).sort_stats("cumulative").print_stats("orchestrator_assets|resources|sql.py", 30)
                engine.dispose()
                floors["store"] = store_floor(url, Path(scratch))
                log(f"committed: {counts} in {stages['commit']:.1f} s; the same rows by COPY alone: {floors['store']:.1f} s")
            finally:
                drop_database(url)

    seconds = sum(stages.values())
    print(
        json.dumps(
            {
                "rows": args.rows,
                "seconds": round(seconds, 2),
                "read_floor_seconds": round(floor, 2),
                "rows_per_s": round(args.rows / seconds),
                "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
                "stages": {name: round(value, 2) for name, value in stages.items()},
                "x_floor": round(seconds / floor, 1),
                **(
                    {"store_floor_seconds": round(floors["store"], 2), "commit_x_store_floor": round(stages["commit"] / floors["store"], 2)}
                    if floors
                    else {}
                ),
                "good_rows": len(result.good),
                "rejected_rows": int(result.errors["row"].nunique()),
                "collapsed_rows": len(result.notices),
                **planted,
            }
        )
    )


if __name__ == "__main__":
    main()
