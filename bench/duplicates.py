"""Duplicate-candidate matching at scale: how long blocking + scoring take, and what it finds.

    .venv/bin/python bench/duplicates.py [--contacts 100000] [--duplicates 0.02] [--seed 7]

Generates ``--contacts`` people (Faker ru_RU names; 30 % in Moscow, 15 % in St Petersburg, the rest
in Faker's cities; mobile numbers in a few operator ranges, dense
enough that unrelated numbers one digit apart are common, as in a real customer base; e-mails on a
handful of domains, a third of them Gmail), then makes ``--duplicates`` of them again with one
realistic slip each: a phone digit changed or two swapped, Gmail dots or a ``+tag`` added, the
name's words swapped, or a one-letter e-mail typo. Runs ``find_candidates`` over everything
(what the asset does after reading the store) and reports its time, the pairs found and how many
of the planted pairs are among them at the default threshold. With ``--store`` the same people
are also sealed into a scratch embedded store (SQLite, a temporary ``ALGOR_HOME``) and the asset
``contacts/contact_duplicate_candidates`` is materialised over them: ``asset_seconds`` is the whole
step (open every contact, match, replace the table). Measured, never asserted.

Progress goes to stderr; the last stdout line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from faker import Faker  # noqa: E402

from orchestrator_assets.merges.matching import MIN_SCORE, Person, find_candidates  # noqa: E402

DOMAINS = ["gmail.com", "gmail.com", "mail.ru", "yandex.ru", "bk.ru", "list.ru"]
OPERATORS = ["916", "903", "926", "985"]


def _people(count: int, rng: random.Random) -> list[Person]:
    fake = Faker("ru_RU")
    fake.seed_instance(rng.randrange(1 << 30))
    people = []
    for i in range(count):
        first, last = fake.first_name(), fake.last_name()
        local = f"{fake.user_name()}{rng.randrange(1000)}"
        phone = f"+7{rng.choice(OPERATORS)}{rng.randrange(10**7):07d}"
        city = rng.choices(["Москва", "Санкт-Петербург", fake.city()], weights=[30, 15, 55])[0]
        people.append(Person(i + 1, first, last, f"{local}@{rng.choice(DOMAINS)}", phone, city))
    return people


def _slip(person: Person, new_id: int, rng: random.Random) -> Person:
    kind = rng.randrange(5)
    phone, email, first, last = person.phone, person.email, person.first_name, person.last_name
    if kind == 0:
        i = rng.randrange(5, len(phone))
        phone = phone[:i] + str((int(phone[i]) + 1) % 10) + phone[i + 1:]
    elif kind == 1:
        i = rng.randrange(5, len(phone) - 1)
        phone = phone[:i] + phone[i + 1] + phone[i] + phone[i + 2:]
    elif kind == 2:
        local, domain = email.split("@")
        email = f"{local[:2]}.{local[2:]}+shop@{domain}" if domain == "gmail.com" else f"{local}+news@{domain}"
    elif kind == 3:
        first, last = last, first
    else:
        local, domain = email.split("@")
        i = rng.randrange(len(local))
        email = f"{local[:i]}{local[i + 1:]}@{domain}"
    return Person(new_id, first, last, email, phone, person.city)


def _asset_seconds(people: list[Person]) -> dict:
    """Seal ``people`` into a scratch store and time one materialisation of the candidates asset."""
    import datetime as dt
    import os
    import tempfile

    import dagster as dg
    import sqlalchemy as sa

    from orchestrator_assets.contact_pii import contact_columns
    from orchestrator_assets.merges.assets import contact_duplicate_candidates
    from resources.opstore import OperationalStore
    from resources.opstore_schema import contacts
    from resources.pii import tenant_cipher

    os.environ["ALGOR_HOME"] = tempfile.mkdtemp(prefix="algor-bench-duplicates-")
    store = OperationalStore()
    store.migrate()
    now = dt.datetime.now(dt.UTC)
    with store.engine().begin() as conn:
        cipher = tenant_cipher(conn, "demo")
        rows = []
        for person in people:
            key = cipher.new_contact_key()
            fields = {"first_name": person.first_name, "last_name": person.last_name, "email": person.email, "phone": person.phone}
            rows.append({"id": person.id, "tenant": "demo", "external_id": f"bench-{person.id}", "data_key": key, "city": person.city,
                         "created_at": now, "updated_at": now, **contact_columns(cipher, key, fields)})
        conn.execute(sa.insert(contacts), rows)
    print(f"sealed {len(people)} contacts into {os.environ['ALGOR_HOME']}", file=sys.stderr)
    started, cpu_started = time.perf_counter(), time.process_time()
    result = dg.materialize([contact_duplicate_candidates], partition_key="demo", resources={"opstore": store})
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    shown = result.asset_materializations_for_node("contacts__contact_duplicate_candidates")[0].metadata
    return {"asset_seconds": round(seconds, 2), "asset_cpu_seconds": round(cpu_seconds, 2), "asset_matching_seconds": shown["matching_seconds"].value, "asset_candidates": shown["candidates"].value}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--contacts", type=int, default=100_000)
    parser.add_argument("--duplicates", type=float, default=0.02)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--store", action="store_true", help="also run the asset over a scratch SQLite store")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    people = _people(args.contacts, rng)
    originals = rng.sample(people, int(args.contacts * args.duplicates))
    planted = {}
    for n, person in enumerate(originals):
        twin = _slip(person, args.contacts + n + 1, rng)
        people.append(twin)
        planted[(person.id, twin.id)] = twin
    print(f"{len(people)} people, {len(planted)} planted duplicates", file=sys.stderr)
    started, cpu_started = time.perf_counter(), time.process_time()
    found = find_candidates(people)
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    pairs = {(c.contact_id, c.other_id) for c in found}
    asset = _asset_seconds(people) if args.store else {}
    print(json.dumps({
        **asset,
        "contacts": len(people),
        "planted": len(planted),
        "seconds": round(seconds, 2),
        "cpu_seconds": round(cpu_seconds, 2),  # what a shared machine's load does not inflate
        "candidates": len(found),
        "planted_found": len(pairs & planted.keys()),
        "other_candidates": len(pairs - planted.keys()),
        "by_reason": dict(Counter(c.reason.split(" (")[0].split(";")[0] for c in found).most_common()),
        "min_score": MIN_SCORE,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }))


if __name__ == "__main__":
    main()
