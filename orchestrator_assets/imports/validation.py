"""Validation and normalisation of a contacts CSV before anything touches the operational store.

Pure functions, no Dagster: the import assets call them, tests call them directly. The contract
is the column list in ``CSV_COLUMNS``; every cell is read as text so that nothing is guessed by a
CSV parser (a leading ``8`` of a phone number or a 10-digit chat id must survive intact).

The split of work:

* pandera (``RAW_CONTACTS_SCHEMA``, lazy) checks what is a property of one cell: required columns
  present, lengths within the store's column limits, tokens (consent values, language codes),
  integers, ISO-8601 timestamps. Its collected failure cases become the error table.
* Small pure normalisers (``normalize_phone``, ``normalize_email``) do what needs a real library
  and whose failure reason is worth showing verbatim.
* A few cross-row/cross-column rules (duplicate ``external_id``, at least one address, a consent
  decision needs a source) are plain pandas, and so is the one rule that needs a clock: a
  ``consent_at`` further in the future than ``policies.consent_evidence`` allows.

A row with any problem is reported (once per problem) and never lands in ``good``; nothing is
half-imported. ``row`` everywhere is the row number a spreadsheet shows for the record (header =
1, first data row = 2), so an operator can jump straight to it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import pandas as pd
import pandera.pandas as pa
import phonenumbers
from email_validator import EmailNotValidError, validate_email
from pandera.errors import SchemaErrors

from policies.consent_evidence import future_dated

CSV_COLUMNS: tuple[str, ...] = (
    "external_id",
    "first_name",
    "last_name",
    "email",
    "phone",
    "telegram_chat_id",
    "city",
    "language",
    "consent_email",
    "consent_telegram",
    "consent_sms",
    "consent_source",
    "consent_at",
)
CHANNELS: tuple[str, ...] = ("email", "telegram", "sms", "vk", "whatsapp")
# Consent decisions by purpose (policies/consent_purposes.py): consent_<channel> is advertising on
# that channel, consent_processing the 152-FZ consent to processing, consent_<channel>_transactional
# service messages; consent_text_version names the text shown (sha256, consent_texts.yaml).
TRANSACTIONAL_COLUMNS: tuple[str, ...] = tuple(f"consent_{channel}_transactional" for channel in CHANNELS)
CONSENT_COLUMNS: tuple[str, ...] = (*(f"consent_{channel}" for channel in CHANNELS), "consent_processing", *TRANSACTIONAL_COLUMNS)
# Columns a file may leave out (added with later channels and purposes); absent means empty.
OPTIONAL_COLUMNS: tuple[str, ...] = ("vk_user_id", "consent_vk", "consent_whatsapp", "consent_processing", *TRANSACTIONAL_COLUMNS, "consent_text_version")
ADDRESS_COLUMNS: tuple[str, ...] = ("email", "phone", "telegram_chat_id", "vk_user_id")
# The error-table "column" of a row that has no address at all: no single cell is at fault.
NO_ADDRESS_COLUMN = "|".join(ADDRESS_COLUMNS)
ERROR_COLUMNS: tuple[str, ...] = ("row", "column", "value", "reason")

LANGUAGES: tuple[str, ...] = ("en", "ru")  # the languages we have templates for
CONSENT_TRUE = frozenset({"yes", "да", "1", "true"})
CONSENT_FALSE = frozenset({"no", "нет", "0", "false"})

# Spreadsheet row of the first data record: the header occupies row 1.
FIRST_DATA_ROW = 2

# Limits of the operational store's columns (resources/opstore_schema.py): a longer value would
# be truncated or rejected by the database, so it is rejected here with a readable reason.
_MAX_LENGTH = {
    "external_id": 128,
    "first_name": 128,
    "last_name": 128,
    "email": 320,
    "phone": 64,  # raw input; the stored E.164 form is at most 16 characters
    "city": 128,
    "consent_source": 256,
}
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


@dataclass(frozen=True)
class ValidationResult:
    """``good``: normalised rows ready for the store; ``errors``: one row per problem found."""

    good: pd.DataFrame
    errors: pd.DataFrame


# --- pure normalisers -----------------------------------------------------------------------


def normalize_phone(text: str, default_region: str = "RU") -> str:
    """E.164 form of a phone number; numbers without ``+country`` are read in ``default_region``.

    Raises ``ValueError`` with an operator-readable reason when the text is not a valid number
    (well-formed but unassigned ranges count as invalid: we would only waste a send on them).
    """
    try:
        number = phonenumbers.parse(text, default_region)
    except phonenumbers.NumberParseException as exc:
        raise ValueError(f"not a phone number ({exc._msg})") from exc
    if not phonenumbers.is_valid_number(number):
        hint = "" if text.lstrip().startswith("+") else f" (numbers without +country code are read as {default_region})"
        raise ValueError(f"not a valid phone number{hint}")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def normalize_email(text: str) -> str:
    """Lower-cased, syntax-checked e-mail address (no DNS lookup: imports must work offline).

    The whole address is lower-cased so that ``Ivan@Example.RU`` and ``ivan@example.ru`` are
    recognised as the same contact address; no mail provider we send to is case-sensitive.
    """
    try:
        return validate_email(text, check_deliverability=False).normalized.lower()
    except EmailNotValidError as exc:
        raise ValueError(f"invalid e-mail: {exc}") from exc


def parse_consent(text: str) -> bool | None:
    """``True``/``False`` for a consent decision, ``None`` for an empty cell (no decision)."""
    token = text.strip().lower()
    if not token:
        return None
    if token in CONSENT_TRUE:
        return True
    if token in CONSENT_FALSE:
        return False
    raise ValueError(f"not a consent value: {text!r}")


def parse_timestamp(text: str) -> pd.Timestamp | None:
    """UTC timestamp from ISO-8601 text that carries a timezone; ``None`` for an empty cell.

    A timestamp without an offset is rejected rather than guessed: consent evidence must say
    exactly when it was given.
    """
    if not text.strip():
        return None
    moment = datetime.fromisoformat(text.strip())  # ValueError when not ISO-8601
    if moment.tzinfo is None:
        raise ValueError("date-time has no timezone offset")
    return pd.Timestamp(moment).tz_convert("UTC")


# --- the pandera schema of the raw file ---------------------------------------------------------


def _blank(s: pd.Series) -> pd.Series:
    return s.str.strip() == ""


def _parses(parser, s: pd.Series) -> pd.Series:
    def ok(value: str) -> bool:
        try:
            parser(value)
        except ValueError:
            return False
        return True

    return s.map(ok).astype(bool)


def _is_iso(value: str) -> bool:
    try:
        datetime.fromisoformat(value.strip())
    except ValueError:
        return False
    return True


def is_int64(value: str) -> bool:
    """Plain decimal digits with an optional minus (Telegram group chats are negative).

    Excel's ``1.23E+09`` or a ``@username`` are rejected rather than converted: a guessed chat id
    would message a stranger.
    """
    text = value.strip()
    digits = text[1:] if text.startswith("-") else text
    return digits.isascii() and digits.isdigit() and _INT64_MIN <= int(text) <= _INT64_MAX


def _max_length(limit: int) -> pa.Check:
    return pa.Check(lambda s: s.str.strip().str.len() <= limit, error=f"longer than {limit} characters")


_CONSENT_HINT = "not a consent value (use yes/no, да/нет, 1/0, true/false, or leave empty)"

# No dtypes: ``_as_text`` turns every cell into text before validation, so a dtype check could
# never fail and would only cost time.
RAW_CONTACTS_SCHEMA = pa.DataFrameSchema(
    {
        **{column: pa.Column(checks=_max_length(limit)) for column, limit in _MAX_LENGTH.items()},
        "external_id": pa.Column(
            checks=[pa.Check(lambda s: ~_blank(s), error="required"), _max_length(_MAX_LENGTH["external_id"])]
        ),
        **{
            column: pa.Column(checks=pa.Check(lambda s: _blank(s) | s.map(is_int64).astype(bool), error="not an integer"))
            for column in ("telegram_chat_id", "vk_user_id")
        },
        "language": pa.Column(
            checks=pa.Check(
                lambda s: _blank(s) | s.str.strip().str.lower().isin(LANGUAGES),
                error=f"unknown language code (expected one of: {', '.join(LANGUAGES)})",
            )
        ),
        **{
            column: pa.Column(checks=pa.Check(lambda s: _parses(parse_consent, s), error=_CONSENT_HINT))
            for column in CONSENT_COLUMNS
        },
        "consent_at": pa.Column(
            checks=[
                pa.Check(lambda s: _blank(s) | s.map(_is_iso).astype(bool), error="not an ISO-8601 date-time"),
                # Only judged when the text parses, so a malformed date is reported once.
                pa.Check(
                    lambda s: _blank(s) | ~s.map(_is_iso).astype(bool) | _parses(parse_timestamp, s),
                    error="date-time has no timezone offset",
                ),
            ]
        ),
    },
    strict=False,  # extra columns (e.g. CRM fields we don't use) are ignored, not an error
    name="raw_contacts",
)

# pandera's own check names that can show up in failure cases, in operator language.
_PANDERA_REASONS = {"column_in_dataframe": "missing column"}


def _as_text(raw: pd.DataFrame, rows: Sequence[int] | None) -> pd.DataFrame:
    """Every cell as text with ``NaN``/``None`` → ``""``, indexed by spreadsheet row.

    ``rows`` are the rows the reader found the records on; without them (a frame built in a test
    or an asset) the records are taken as consecutive rows under the header.
    """
    frame = raw.astype(object)
    frame.index = pd.Index(rows if rows is not None else range(FIRST_DATA_ROW, FIRST_DATA_ROW + len(raw)), dtype="int64")
    return frame.where(frame.notna(), "").astype(str)


def _error_frame(records: list[dict]) -> pd.DataFrame:
    """The error table, ordered as an operator reads the file: by row, then by column."""
    records = sorted(records, key=lambda error: (error["row"], _column_order(error["column"])))
    errors = pd.DataFrame(records, columns=list(ERROR_COLUMNS))
    return errors.astype({"row": "int64", "column": "str", "value": "str", "reason": "str"})


def _schema_errors(text: pd.DataFrame, extra_columns: Mapping[str, pa.Column] | None) -> list[dict]:
    schema = RAW_CONTACTS_SCHEMA.add_columns(dict(extra_columns)) if extra_columns else RAW_CONTACTS_SCHEMA
    try:
        schema.validate(text, lazy=True)
    except SchemaErrors as exc:
        records = []
        for case in exc.failure_cases.itertuples(index=False):
            reason = _PANDERA_REASONS.get(case.check, case.check)
            if case.check == "column_in_dataframe":
                records.append({"row": 1, "column": case.failure_case, "value": "", "reason": reason})
            elif case.index is None or case.index != case.index:  # a whole-column failure
                records.append({"row": 1, "column": case.column, "value": "", "reason": reason})
            else:
                row = int(case.index)
                records.append({"row": row, "column": case.column, "value": text.at[row, case.column], "reason": reason})
        return records
    return []


def _normalise(column: pd.Series, normaliser, name: str, errors: list[dict]) -> pd.Series:
    """Apply ``normaliser`` to the non-blank cells; failures go to ``errors``, value → None."""

    def normalise(row: int, text: str) -> str | None:
        if not text.strip():
            return None
        try:
            return normaliser(text.strip())
        except ValueError as exc:
            errors.append({"row": row, "column": name, "value": text, "reason": str(exc)})
            return None

    return pd.Series([normalise(p, t) for p, t in column.items()], index=column.index, dtype=object)


def _row_rule_errors(text: pd.DataFrame, now: datetime) -> list[dict]:
    """Rules that span rows or columns, or need the clock, which per-cell checks cannot express."""
    errors = []
    parse = _or_none(parse_timestamp)  # a malformed date is the schema's to report
    for row, value in text["consent_at"].items():
        moment = parse(value)
        reason = future_dated(moment.to_pydatetime(), now) if moment is not None else None
        if reason:
            errors.append({"row": row, "column": "consent_at", "value": value, "reason": reason})
    first_seen: dict[str, int] = {}
    for row, value in text["external_id"].str.strip().items():
        if not value:
            continue
        if value not in first_seen:
            first_seen[value] = row
            continue
        errors.append(
            {
                "row": row,
                "column": "external_id",
                "value": text.at[row, "external_id"],
                "reason": f"duplicate external_id, first seen on row {first_seen[value]}",
            }
        )
    blank = text.map(lambda value: not value.strip()).astype(bool)
    no_address = blank[list(ADDRESS_COLUMNS)].all(axis=1)
    for row in text.index[no_address]:
        errors.append(
            {
                "row": row,
                "column": NO_ADDRESS_COLUMN,
                "value": "",
                "reason": "no address: need an email, phone, telegram_chat_id or vk_user_id",
            }
        )
    # Consent law asks us to prove where each decision came from; the store requires a source.
    has_decision = ~blank[list(CONSENT_COLUMNS)].all(axis=1)
    for row in text.index[has_decision & blank["consent_source"]]:
        errors.append(
            {
                "row": row,
                "column": "consent_source",
                "value": "",
                "reason": "required when a consent decision is given",
            }
        )
    return errors


def _each(s: pd.Series, fn, dtype: str = "object") -> pd.Series:
    """``fn`` applied to every cell, keeping ``None`` as ``None`` (``Series.map`` would infer a
    dtype and turn it into NaN, or turn big integers into floats)."""
    values = [fn(v) for v in s]
    return pd.Series(values if dtype == "object" else pd.array(values, dtype=dtype), index=s.index, dtype=dtype)


def _or_none(parser):
    """The parser's value, or ``None`` where it fails (that cell is already an error)."""

    def parse(value: str):
        try:
            return parser(value)
        except ValueError:
            return None

    return parse


def _tidy(value: str) -> str | None:
    """Strip and collapse inner whitespace; empty → None."""
    return " ".join(value.split()) or None


def validate_contact_rows(
    raw: pd.DataFrame,
    default_region: str = "RU",
    now: datetime | None = None,
    rows: Sequence[int] | None = None,
    extra_columns: Mapping[str, pa.Column] | None = None,
) -> ValidationResult:
    """Split a raw contacts table into normalised good rows and a table of every problem.

    ``raw`` is the file as text and ``rows`` the spreadsheet row of each record (see
    ``reading.read_contacts_file``); ``now`` (default: the clock) is what a
    ``consent_at`` must not lie beyond, give or take the allowed clock skew. A missing required column makes
    every row meaningless, so then the only errors are one ``missing column`` per absent column
    (row 1, the header) and ``good`` is empty. Among rows sharing an ``external_id`` the first
    one is authoritative; later ones are errors pointing at it. ``extra_columns`` (a tenant's
    custom fields, ``custom_fields.schema_columns``) are checked in the same lazy pass.
    """
    text = _as_text(raw, rows)
    for column in OPTIONAL_COLUMNS:
        if column not in text.columns:
            text[column] = ""
    errors = _schema_errors(text, extra_columns)
    missing = [error for error in errors if error["reason"] == "missing column"]
    if missing:
        return ValidationResult(good=no_rows(), errors=_error_frame(missing))

    good = _good_frame(text, default_region, errors)
    errors.extend(_row_rule_errors(text, now or datetime.now(UTC)))
    error_table = _error_frame(errors)
    good = good[~good["row"].isin(set(error_table["row"]))].reset_index(drop=True)
    return ValidationResult(good=good, errors=error_table)


def no_rows() -> pd.DataFrame:
    """A ``good`` frame without rows, typed like any other: what a file with no usable rows yields."""
    nothing = pd.DataFrame({column: pd.Series(dtype="str") for column in CSV_COLUMNS + OPTIONAL_COLUMNS})
    return _good_frame(nothing, "RU", [])


def _good_frame(text: pd.DataFrame, default_region: str, errors: list[dict]) -> pd.DataFrame:
    """Every row normalised; cells that fail normalisation become None and land in ``errors``."""
    return pd.DataFrame(
        {
            "row": pd.Series(text.index, index=text.index, dtype="int64"),
            "external_id": _each(text["external_id"], str.strip),
            "first_name": _each(text["first_name"], _tidy),
            "last_name": _each(text["last_name"], _tidy),
            "email": _normalise(text["email"], normalize_email, "email", errors),
            "phone": _normalise(text["phone"], lambda v: normalize_phone(v, default_region), "phone", errors),
            "telegram_chat_id": _each(text["telegram_chat_id"], lambda v: int(v) if is_int64(v) else None, "Int64"),
            "vk_user_id": _each(text["vk_user_id"], lambda v: int(v) if is_int64(v) else None, "Int64"),
            "city": _each(text["city"], _tidy),
            "language": _each(text["language"], lambda v: v.strip().lower() or None),
            **{column: _each(text[column], _or_none(parse_consent)) for column in CONSENT_COLUMNS},
            "consent_source": _each(text["consent_source"], _tidy),
            "consent_text_version": _each(text["consent_text_version"], lambda v: v.strip().lower() or None),
            "consent_at": pd.to_datetime(_each(text["consent_at"], _or_none(parse_timestamp)), utc=True).astype(
                "datetime64[us, UTC]"
            ),
        }
    )


def _column_order(column: str) -> int:
    first = column.split("|", 1)[0]
    columns = CSV_COLUMNS + OPTIONAL_COLUMNS
    return columns.index(first) if first in columns else len(columns)
