"""One person = one contact however the file spells them: phones, e-mails, names and time zones
normalised a column at a time, and duplicates within one file found.

Whole columns, not cells: a million-row import cannot afford a Python call per cell. Each
normaliser settles the common shapes with Arrow string kernels and hands only the rest, once per
distinct text, to the library that is the authority (``phonenumbers``, ``email-validator``), whose
reason is shown verbatim when it refuses a value. Every function returns Series aligned with its
input; a blank cell is NA everywhere (no value, no reason).
"""

from __future__ import annotations

from collections.abc import Callable
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np
import pandas as pd
import phonenumbers
from email_validator import SPECIAL_USE_DOMAIN_NAMES, EmailNotValidError, validate_email

from orchestrator_assets.imports.phones import SPACES, TEXT, extract, fast_e164, single_time_zones

# What people write before an extension: "доб. 12", "ext. 12", "x12", "#12" (phonenumbers reads
# the same words on the numbers it parses itself).
_EXTENSION = f"(?i)^(?P<main>.*?)[{SPACES},;]*(?:доб|доп|ext|extension|x|#)\\.?[{SPACES}]*(?P<ext>[0-9]{{1,7}})$"
_EXTENSION_MARK = "[a-zA-Zа-яА-Я#]"
# Plain ASCII addresses email-validator accepts unchanged but for case; anything else goes to it.
_PLAIN_EMAIL = (
    r"[A-Za-z0-9_%+\-]+(?:\.[A-Za-z0-9_%+\-]+)*"
    r"@(?:[A-Za-z0-9](?:[A-Za-z0-9\-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63}"
)
_SPECIAL_DOMAIN = r"(?i)(?:^|[.@])(?:" + "|".join(name.replace(".", r"\.") for name in SPECIAL_USE_DOMAIN_NAMES) + r")$"
_WHITESPACE = f"[{SPACES}]+"


def _text(series: pd.Series) -> pd.Series:
    """Stripped Arrow text, blank → NA."""
    text = series.astype(TEXT).str.strip()
    return text.where(text != "")


def _by_distinct(values: pd.Series, fn: Callable[[str], tuple]) -> list[pd.Series]:
    """``fn`` (returning a tuple of results) called once per distinct value, spread back over ``values``."""
    distinct = values.drop_duplicates()
    answers = [fn(value) for value in distinct]
    width = len(answers[0]) if answers else 0
    return [values.map(dict(zip(distinct, (answer[i] for answer in answers), strict=True))).astype(TEXT) for i in range(width)]


# --- phones -------------------------------------------------------------------------------------


def parse_phone(text: str, region: str) -> tuple[str | None, str | None, str | None]:
    """phonenumbers' verdict on one text: ``(e164, extension, None)`` or ``(None, None, reason)``.

    Well-formed numbers in unassigned ranges count as invalid: a send to them is wasted.
    """
    try:
        number = phonenumbers.parse(text, region)
    except phonenumbers.NumberParseException as exc:
        return None, None, f"not a phone number ({exc._msg})"
    if not phonenumbers.is_valid_number(number):
        hint = "" if text.lstrip().startswith("+") else f" (numbers without +country code are read as {region})"
        return None, None, f"not a valid phone number{hint}"
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164), number.extension or None, None


def normalise_phones(series: pd.Series, region: str) -> tuple[pd.Series, pd.Series, pd.Series]:
    """``(e164, extension, reason)`` for a column of phones read in ``region`` (ISO alpha-2).

    A written extension (``доб. 12``, ``ext. 12``, ``x12``, ``#12``) is kept, never dropped.
    """
    text = _text(series)
    # Only cells with a letter or "#" can carry an extension: one cheap scan spares the rest the pattern.
    marked = text.str.contains(_EXTENSION_MARK).to_numpy(dtype=bool, na_value=False)
    parts = extract(text[marked], _EXTENSION).reindex(text.index)
    has_ext = parts["ext"].notna()
    main = text.where(~has_ext, parts["main"])
    e164 = fast_e164(main.dropna(), region).reindex(text.index)
    ext = parts["ext"].where(e164.notna())
    reason = pd.Series(pd.NA, index=text.index, dtype=TEXT)
    rest = text[e164.isna() & text.notna()]
    if not rest.empty:
        slow_e164, slow_ext, slow_reason = _by_distinct(rest, lambda value: parse_phone(value, region))
        e164, ext, reason = e164.fillna(slow_e164), ext.fillna(slow_ext), reason.fillna(slow_reason)
    return e164, ext, reason


def derive_timezones(e164: pd.Series, default: str) -> pd.Series:
    """The time zone each phone says its owner lives in, where the numbering plan gives exactly one
    (a Moscow landline, any German number); ``default`` (the tenant's zone) elsewhere and for NA."""
    return single_time_zones(e164.dropna()).reindex(e164.index).fillna(default)


def check_timezones(series: pd.Series) -> pd.Series:
    """Reason per cell naming a zone the tz database does not know; NA for known zones and blanks."""

    def reason(name: str) -> tuple[str | None]:
        try:
            ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            return (f"unknown IANA time zone {name!r} (e.g. Europe/Moscow)",)
        return (None,)

    text = _text(series)
    return _by_distinct(text.dropna(), reason)[0].reindex(text.index) if text.notna().any() else text


# --- e-mails -----------------------------------------------------------------------------------


def _validated_email(text: str) -> tuple[str | None, str | None]:
    try:
        return validate_email(text, check_deliverability=False).normalized.lower(), None
    except EmailNotValidError as exc:
        return None, f"invalid e-mail: {exc}"


def normalise_emails(series: pd.Series) -> tuple[pd.Series, pd.Series]:
    """``(normalised, reason)``: syntax-checked addresses, no DNS (imports must work offline).

    The normalised form is email-validator's (IDN domains in Unicode, NFC) with the whole address
    lower-cased, so ``Ivan@Mail.ru`` and ``ivan@mail.ru`` are one contact: it is both the address
    we send to (no provider we use treats the local part as case-sensitive) and the dedup key.
    """
    text = _text(series)
    plain = text.str.fullmatch(_PLAIN_EMAIL).fillna(False) & ~text.str.contains(_SPECIAL_DOMAIN).fillna(False)
    plain &= (text.str.len() <= 254) & (text.str.find("@") <= 64) & ~text.str.contains("--", regex=False).fillna(False)
    normalised = text.str.lower().where(plain.astype(bool))
    reason = pd.Series(pd.NA, index=text.index, dtype=TEXT)
    rest = text[normalised.isna() & text.notna()]
    if not rest.empty:
        normalised[rest.index], reason[rest.index] = _by_distinct(rest, _validated_email)
    return normalised, reason


# --- names -------------------------------------------------------------------------------------


def normalise_names(series: pd.Series) -> pd.Series:
    """Trimmed, inner whitespace (any Unicode space) collapsed to one space; blank → NA."""
    return _text(series.astype(TEXT).str.replace(_WHITESPACE, " ", regex=True))


# --- duplicates within one file -----------------------------------------------------------------

# Rows sharing one of these (normalised) values are one person: a later row must not become a
# second contact nor silently overwrite the first.
DUPLICATE_KEYS = ("phone", "email")


def in_file_duplicates(frame: pd.DataFrame) -> tuple[np.ndarray, pd.DataFrame]:
    """``(keep, problems)`` for normalised rows (a ``row`` column holds spreadsheet row numbers).

    A row equal to an earlier one in every field is collapsed: not kept, reported as a notice
    (``notice`` True), not an error. A later row with the same ``external_id``, or with the same
    phone or e-mail as an earlier row, is not kept either: it is a problem naming the first row
    with that value, as the operator must decide which is right. ``problems`` has the columns
    ``row, column, value, reason, notice``; values are the normalised ones (mask before showing).
    """
    rows = frame["row"].to_numpy()
    ids = frame["external_id"].astype(TEXT)
    # Equal rows share their external_id: only rows whose id repeats (or is missing) can be repeats.
    maybe = (ids.duplicated(keep=False) | ids.isna()).to_numpy()
    same_as = rows.copy()
    if maybe.any():
        same_as[maybe] = _first_row(_row_key(frame[maybe].drop(columns="row")), rows[maybe])
    exact = same_as != rows
    records = [(row, "", "", f"row {row} is the same as row {first}; kept once", True) for row, first in zip(rows[exact], same_as[exact], strict=True)]
    conflict = np.zeros(len(frame), dtype=bool)
    for column, reason in (("external_id", "duplicate external_id, first seen on row {}"), *((key, f"same {key} as row {{}}") for key in DUPLICATE_KEYS)):
        values = frame[column].astype(TEXT)
        first = _first_row(values, rows)
        later = values.notna().to_numpy() & (first != rows) & ~exact & ~conflict
        for row, value, earlier in zip(rows[later], values[later].tolist(), first[later], strict=True):
            records.append((row, column, value, reason.format(earlier), False))
        conflict |= later
    problems = pd.DataFrame(records, columns=["row", "column", "value", "reason", "notice"])
    return ~(exact | conflict), problems.astype({"row": "int64", "notice": "bool"})


def _row_key(fields: pd.DataFrame) -> np.ndarray:
    """One integer per row, equal exactly for equal rows (NA equal to NA): each column's factorised
    codes folded in, re-factorised at each step so the key never overflows."""
    key = np.zeros(len(fields), dtype=np.int64)
    for column in fields.columns:
        codes, uniques = pd.factorize(fields[column], use_na_sentinel=False)
        key, _ = pd.factorize(key * (len(uniques) + 1) + codes)
    return key


def _first_row(values: pd.Series | np.ndarray, rows: np.ndarray) -> np.ndarray:
    """For each value, the spreadsheet row where it first appears (0 for NA)."""
    codes, _ = pd.factorize(values, use_na_sentinel=True)
    _, first = np.unique(codes, return_index=True)
    firsts = np.zeros(codes.max() + 2 if len(codes) else 1, dtype=np.int64)
    firsts[codes[first]] = rows[first]
    firsts[-1] = 0  # NA (code -1)
    return firsts[codes]
