"""Deterministic generator of the shipped demo contacts CSV, with deliberately bad rows.

The demo and the import tests need a file that looks like a real CRM export (mixed Russian and
English contacts, phones in every format people type, upper-case e-mails, consent columns in
Russian and English) and that contains known mistakes at known rows. ``generate_sample`` returns
both the records and ``planted``: the exact (row, column) of every mistake, so tests can assert
the validator reports precisely those and nothing else.

Everything is derived from one seed; the same ``--rows``/``--seed`` always writes the same bytes.
Addresses are fake by construction: e-mails use the reserved ``example.*`` domains, UK numbers
come from Ofcom's drama range (020 7946 0xxx).

    python -m orchestrator_assets.imports.sample_contacts [--out PATH] [--rows N] [--seed S]
"""

from __future__ import annotations

import argparse
import csv
import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

from faker import Faker

from orchestrator_assets.imports.validation import CSV_COLUMNS, NO_ADDRESS_COLUMN

DEFAULT_ROWS = 1000
DEFAULT_SEED = 20261101
SAMPLE_PATH = Path(__file__).parent / "samples" / "demo_contacts.csv"

RU_SHARE = 0.6
TELEGRAM_SHARE = 0.7
RU_CITIES = {"Москва": 45, "Санкт-Петербург": 25, "Казань": 12, "Новосибирск": 10, "Екатеринбург": 4, "": 4}
EN_CITIES = {"London": 55, "Berlin": 35, "": 10}
# Consent tokens as exported by Russian and by English-language CRMs.
YES = {True: ("да", "Да", "yes", "1", "true"), False: ("yes", "Yes", "1", "true", "TRUE")}
NO = {True: ("нет", "Нет", "no", "0", "false"), False: ("no", "No", "0", "false")}
SOURCES = ("form:https://shop.example/subscribe", "form:https://shop.example/checkout", "import:crm-2026-10")
BOT_SOURCE = "bot:/start promo"
CONSENT_FROM = datetime(2024, 1, 1, tzinfo=UTC)
CONSENT_UNTIL = datetime(2026, 10, 31, tzinfo=UTC)

_TRANSLIT = dict(
    zip(
        "абвгдеёжзийклмнопрстуфхцчшщъыьэюя",
        "a b v g d e e zh z i y k l m n o p r s t u f kh ts ch sh shch - y - e yu ya".split(),
        strict=True,
    )
)


@dataclass(frozen=True)
class PlantedError:
    """One deliberate mistake: the spreadsheet row and the error-table column it must be reported on."""

    row: int
    column: str
    kind: str


@dataclass(frozen=True)
class Sample:
    """The CSV records (column → text, in file order) and every mistake planted in them."""

    records: tuple[dict[str, str], ...]
    planted: tuple[PlantedError, ...]

    @property
    def bad_rows(self) -> frozenset[int]:
        return frozenset(error.row for error in self.planted)


def _latin(text: str) -> str:
    return "".join(_TRANSLIT.get(ch, ch) for ch in text.lower()).replace("-", "")


def _local_part(first: str, last: str) -> str:
    return f"{_latin(first)}.{_latin(last)}"


class _Generator:
    def __init__(self, seed: int):
        self.rng = random.Random(seed)
        self.ru = Faker("ru_RU")
        self.en = Faker("en_US")
        self.ru.seed_instance(seed)
        self.en.seed_instance(seed + 1)
        self.next_id = 1000
        # Phones (last ten digits) and e-mails (lower-cased) already given to someone: one person
        # per address, or the import would rightly report the second as a duplicate.
        self.taken: set[str] = set()

    def weighted(self, options: dict[str, int]) -> str:
        return self.rng.choices(list(options), weights=list(options.values()))[0]

    def external_id(self) -> str:
        self.next_id += self.rng.randint(1, 9)  # gaps, as in a CRM that deletes records
        return f"CRM-{self.next_id:07d}"

    def ru_phone(self) -> str:
        code, a, b, c = self.rng.randint(900, 999), self.rng.randint(0, 999), self.rng.randint(0, 99), self.rng.randint(0, 99)
        formats = (
            f"+7 ({code}) {a:03d}-{b:02d}-{c:02d}",
            f"8 {code} {a:03d} {b:02d} {c:02d}",
            f"8{code}{a:03d}{b:02d}{c:02d}",
            f"+7{code}{a:03d}{b:02d}{c:02d}",
            f"{code}-{a:03d}-{b:02d}-{c:02d}",
        )
        return self.rng.choice(formats)

    def foreign_phone(self, city: str) -> str:
        if city == "London" or (not city and self.rng.random() < 0.5):
            n = self.rng.randint(0, 999)
            return self.rng.choice((f"+44 20 7946 0{n:03d}", f"+442079460{n:03d}"))
        n = self.rng.randint(20_000_000, 99_999_999)
        return self.rng.choice((f"+49 30 {n}", f"+49 151 {n}"))

    def consent_at(self, city: str) -> str:
        span = int((CONSENT_UNTIL - CONSENT_FROM).total_seconds())
        moment = CONSENT_FROM + timedelta(seconds=self.rng.randrange(span), milliseconds=self.rng.randrange(1000))
        offset = {"London": 0, "Berlin": 1, "": 0}.get(city, 3)  # Russian cities: Moscow time
        local = moment.astimezone(timezone(timedelta(hours=offset)))
        text = local.isoformat(timespec=self.rng.choice(("seconds", "seconds", "milliseconds")))
        if self.rng.random() < 0.3:
            text = text.replace("T", " ")
        return text.replace("+00:00", "Z") if self.rng.random() < 0.5 else text

    def decision(self, is_ru: bool, p_yes: float, p_no: float) -> str:
        draw = self.rng.random()
        if draw < p_yes:
            return self.rng.choice(YES[is_ru])
        if draw < p_yes + p_no:
            return self.rng.choice(NO[is_ru])
        return ""

    def unclaimed(self, key: str, value: str) -> str:
        """``value``, or ``""`` when its address (``key``) already belongs to an earlier person."""
        if key in self.taken:
            return ""
        if key:
            self.taken.add(key)
        return value

    def noisy(self, text: str) -> str:
        """Whitespace people leave around values; the validator must strip it."""
        return f" {text}  " if text and self.rng.random() < 0.04 else text

    def good_record(self) -> dict[str, str]:
        is_ru = self.rng.random() < RU_SHARE
        male = self.rng.random() < 0.5
        if is_ru:
            first = self.ru.first_name_male() if male else self.ru.first_name_female()
            last = self.ru.last_name_male() if male else self.ru.last_name_female()
            city = self.weighted(RU_CITIES)
        else:
            first = self.en.first_name_male() if male else self.en.first_name_female()
            last = self.en.last_name()
            city = self.weighted(EN_CITIES)

        email = phone = telegram = ""
        if self.rng.random() < 0.85:
            domains = ("example.ru", "example.ru", "example.com") if is_ru else ("example.com", "example.org")
            local = _local_part(first, last) + (str(self.rng.randint(1, 99)) if self.rng.random() < 0.4 else "")
            email = f"{local}@{self.rng.choice(domains)}"
            style = self.rng.random()
            if style < 0.2:
                email = email.title()
            elif style < 0.25:
                email = email.upper()
        if self.rng.random() < 0.8:
            phone = self.ru_phone() if is_ru else self.foreign_phone(city)
        email, phone = self.unclaimed(email.lower(), email), self.unclaimed("".join(filter(str.isdigit, phone))[-10:], phone)
        if self.rng.random() < TELEGRAM_SHARE:
            telegram = str(self.rng.randint(100_000_000, 7_999_999_999))
        if not (email or phone or telegram):
            telegram = str(self.rng.randint(100_000_000, 7_999_999_999))

        consent_email = self.decision(is_ru, 0.45, 0.2) if email else ""
        consent_telegram = self.decision(is_ru, 0.55, 0.15) if telegram else ""
        consent_sms = self.decision(is_ru, 0.3, 0.2) if phone else ""
        source = consent_at = ""
        if consent_email or consent_telegram or consent_sms:
            source = BOT_SOURCE if consent_telegram and self.rng.random() < 0.5 else self.rng.choice(SOURCES)
            consent_at = self.consent_at(city) if self.rng.random() < 0.93 else ""

        language = "ru" if is_ru else "en"
        if self.rng.random() < 0.03:
            language = language.upper()
        return {
            "external_id": self.external_id(),
            "first_name": self.noisy(first),
            "last_name": self.noisy(last),
            "email": email,
            "phone": phone,
            "telegram_chat_id": telegram,
            "city": city,
            "language": language,
            "consent_email": consent_email,
            "consent_telegram": consent_telegram,
            "consent_sms": consent_sms,
            "consent_source": source,
            "consent_at": consent_at,
        }


def _with_source(record: dict[str, str]) -> None:
    """Give a record a consent source so a planted consent mistake is the only mistake."""
    record["consent_source"] = record["consent_source"] or SOURCES[0]


def _name_local(record: dict[str, str]) -> str:
    return _local_part(record["first_name"].strip(), record["last_name"].strip())


# Each mutator breaks a good record in one deliberate way and returns the columns the validator
# must report. ``earlier`` holds the external ids of good rows already written.
Mutator = Callable[[dict[str, str], list[str], random.Random], tuple[str, ...]]


def _set(**values: str) -> Mutator:
    def mutate(record: dict[str, str], earlier: list[str], rng: random.Random) -> tuple[str, ...]:
        record.update(values)
        return tuple(values)

    return mutate


def _bad_email(template: str) -> Mutator:
    def mutate(record: dict[str, str], earlier: list[str], rng: random.Random) -> tuple[str, ...]:
        record["email"] = template.format(local=_name_local(record))
        return ("email",)

    return mutate


def _bad_consent(column: str, value: str) -> Mutator:
    def mutate(record: dict[str, str], earlier: list[str], rng: random.Random) -> tuple[str, ...]:
        record[column] = value
        _with_source(record)
        return (column,)

    return mutate


def _duplicate_id(record: dict[str, str], earlier: list[str], rng: random.Random) -> tuple[str, ...]:
    record["external_id"] = rng.choice(earlier)
    return ("external_id",)


def _telegram_username(record: dict[str, str], earlier: list[str], rng: random.Random) -> tuple[str, ...]:
    record["telegram_chat_id"] = "@" + _name_local(record).replace(".", "_")
    return ("telegram_chat_id",)


def _no_address(record: dict[str, str], earlier: list[str], rng: random.Random) -> tuple[str, ...]:
    record.update(email="", phone="", telegram_chat_id="")
    return (NO_ADDRESS_COLUMN,)


def _long_name(record: dict[str, str], earlier: list[str], rng: random.Random) -> tuple[str, ...]:
    # Several fields concatenated into the name, as happens with badly mapped CRM exports.
    record["first_name"] = " ".join([record["first_name"].strip(), record["last_name"].strip()] * 20)
    return ("first_name",)


def _no_source(record: dict[str, str], earlier: list[str], rng: random.Random) -> tuple[str, ...]:
    record.update(consent_email="да", consent_source="")
    return ("consent_source",)


def _email_and_phone(record: dict[str, str], earlier: list[str], rng: random.Random) -> tuple[str, ...]:
    record.update(email=f"{_name_local(record)}@example", phone="12345")
    return ("email", "phone")


BAD_ROW_KINDS: tuple[tuple[str, Mutator], ...] = (
    ("bad phone: too short", _set(phone="+7 (916) 123-45")),
    ("bad phone: too short for +44", _set(phone="+44 20 1234")),
    ("bad e-mail: two @-signs", _bad_email("{local}@@example.ru")),
    ("bad e-mail: no @-sign", _bad_email("{local} at example.com")),
    ("missing external_id", _set(external_id="")),
    ("duplicate external_id", _duplicate_id),
    ("bad consent value (ru)", _bad_consent("consent_email", "может быть")),
    ("bad consent value (en)", _bad_consent("consent_sms", "maybe")),
    ("bad consent date: 30 February", _set(consent_at="2026-02-30T10:00:00+03:00")),
    ("bad consent date: no timezone", _set(consent_at="2026-03-01 12:00:00")),
    ("telegram_chat_id is a @username", _telegram_username),
    ("telegram_chat_id mangled by Excel", _set(telegram_chat_id="1.23456789E+09")),
    ("no address at all", _no_address),
    ("unknown language code", _set(language="xx")),
    ("name too long", _long_name),
    ("consent without source", _no_source),
    ("bad e-mail and bad phone", _email_and_phone),
)


def generate_sample(rows: int = DEFAULT_ROWS, seed: int = DEFAULT_SEED) -> Sample:
    """``rows`` good records with every kind in ``BAD_ROW_KINDS`` spread evenly among them.

    Bad rows are built from an ordinary record and broken in one way, so each reports exactly
    the planted columns.
    """
    if rows < 1:
        raise ValueError("rows must be at least 1")
    generator = _Generator(seed)
    total = rows + len(BAD_ROW_KINDS)
    bad_at = {(k + 1) * total // (len(BAD_ROW_KINDS) + 1): kind for k, kind in enumerate(BAD_ROW_KINDS)}
    records: list[dict[str, str]] = []
    planted: list[PlantedError] = []
    good_ids: list[str] = []
    for position in range(total):
        record = generator.good_record()
        if position in bad_at:
            kind, mutate = bad_at[position]
            for column in mutate(record, good_ids, generator.rng):
                planted.append(PlantedError(row=position + 2, column=column, kind=kind))
        else:
            good_ids.append(record["external_id"])
        records.append(record)
    return Sample(records=tuple(records), planted=tuple(planted))


def write_sample(sample: Sample, path: str | Path) -> Path:
    """Write the records as UTF-8 CSV with ``\\n`` line ends, so regenerating is byte-stable."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(sample.records)
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=SAMPLE_PATH, help="where to write the CSV")
    parser.add_argument("--rows", type=int, default=DEFAULT_ROWS, help="number of good rows")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    args = parser.parse_args(argv)
    sample = generate_sample(args.rows, args.seed)
    path = write_sample(sample, args.out)
    print(f"wrote {len(sample.records)} rows ({len(sample.bad_rows)} deliberately bad) to {path}")
    for error in sample.planted:
        print(f"  row {error.row}: {error.column} — {error.kind}")


if __name__ == "__main__":
    main()
