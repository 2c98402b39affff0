"""Validation and normalisation of a contacts CSV before anything touches the operational store.

Pure functions, no Dagster: the import assets call them, tests call them directly. The contract
is the column list in ``CSV_COLUMNS``; every cell is read as text so that nothing is guessed by a
CSV parser (a leading ``8`` of a phone number or a 10-digit chat id must survive intact).

The split of work:

* pandera (``RAW_CONTACTS_SCHEMA``, lazy) checks what is a property of one cell: required columns
  present, lengths within the store's column limits, tokens (consent values, language codes),
  integers, ISO-8601 timestamps (parsed a column at a time by ``columns``). Its collected
  failure cases become the error table.
* ``normalise`` turns phones, e-mails, names and time zones into one spelling a column at a time
  (its libraries' failure reasons are shown verbatim) and finds rows that are one person twice
  (same ``external_id``, phone or e-mail: errors; an exact repeat: collapsed, with a notice).
* A few cross-column rules (at least one address, a consent decision needs a source) are plain
  pandas, and so is the one rule that needs a clock: a ``consent_at`` further in the future than
  ``policies.consent_evidence`` allows.

A row with any problem is reported (once per problem) and never lands in ``good``; nothing is
half-imported. ``row`` everywhere is the row number a spreadsheet shows for the record (header =
1, first data row = 2), so an operator can jump straight to it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pandera.pandas as pa
from pandera.errors import SchemaErrors

from orchestrator_assets.imports.columns import CONSENT_FALSE, CONSENT_TRUE, consent_decisions, int64_cells, is_int64, utc_timestamps
from orchestrator_assets.imports.normalise import (
    check_timezones,
    derive_timezones,
    in_file_duplicates,
    normalise_emails,
    normalise_names,
    normalise_phones,
)
from orchestrator_assets.imports.phones import TEXT

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
# An empty ``timezone`` is derived from the phone (see ``normalise.derive_timezones``).
OPTIONAL_COLUMNS: tuple[str, ...] = ("vk_user_id", "consent_vk", "consent_whatsapp", "consent_processing", *TRANSACTIONAL_COLUMNS, "consent_text_version", "timezone")
ADDRESS_COLUMNS: tuple[str, ...] = ("email", "phone", "telegram_chat_id", "vk_user_id")
# The error-table "column" of a row that has no address at all: no single cell is at fault.
NO_ADDRESS_COLUMN = "|".join(ADDRESS_COLUMNS)
ERROR_COLUMNS: tuple[str, ...] = ("row", "column", "value", "reason")

LANGUAGES: tuple[str, ...] = ("en", "ru")  # the languages we have templates for
__all__ = ["CONSENT_FALSE", "CONSENT_TRUE", "is_int64"]  # custom_fields reads consent tokens and ids the same way

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


@dataclass(frozen=True)
class ValidationResult:
    """``good``: normalised rows ready for the store; ``errors``: one row per problem found;
    ``notices``: what was done without rejecting anything (exact repeats collapsed), same columns."""

    good: pd.DataFrame
    errors: pd.DataFrame
    notices: pd.DataFrame = field(default_factory=lambda: _error_frame([]))


# --- the pandera schema of the raw file ---------------------------------------------------------


def _blank(s: pd.Series) -> pd.Series:
    return s.str.strip() == ""


def _accepted(s: pd.Series, refused: np.ndarray) -> pd.Series:
    """A column parser's refusals as the per-cell outcome pandera expects."""
    return pd.Series(~refused, index=s.index)


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
            column: pa.Column(checks=pa.Check(lambda s: _accepted(s, int64_cells(s)[1]), error="not an integer"))
            for column in ("telegram_chat_id", "vk_user_id")
        },
        "language": pa.Column(
            checks=pa.Check(
                lambda s: _blank(s) | s.str.strip().str.lower().isin(LANGUAGES),
                error=f"unknown language code (expected one of: {', '.join(LANGUAGES)})",
            )
        ),
        **{
            column: pa.Column(checks=pa.Check(lambda s: _accepted(s, consent_decisions(s)[1]), error=_CONSENT_HINT))
            for column in CONSENT_COLUMNS
        },
        "consent_at": pa.Column(
            checks=[
                pa.Check(lambda s: _accepted(s, utc_timestamps(s)[1]), error="not an ISO-8601 date-time"),
                # Only judged when the text parses, so a malformed date is reported once.
                pa.Check(lambda s: _accepted(s, utc_timestamps(s)[2]), error="date-time has no timezone offset"),
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
    frame = raw.astype(TEXT).fillna("")
    frame.index = pd.Index(rows if rows is not None else range(FIRST_DATA_ROW, FIRST_DATA_ROW + len(raw)), dtype="int64")
    return frame


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


def _row_rule_errors(text: pd.DataFrame, now: datetime) -> list[dict]:
    """Rules that span columns, or need the clock, which per-cell checks cannot express."""
    errors = []
    moments = utc_timestamps(text["consent_at"])[0]  # a malformed date is the schema's to report
    # A cheap vectorised bound first: only consents later than now can be too far ahead of it.
    for position in np.flatnonzero((moments > pd.Timestamp(now)).to_numpy(dtype=bool)):
        reason = future_dated(moments.iat[position].to_pydatetime(), now)
        if reason:
            errors.append({"row": int(text.index[position]), "column": "consent_at", "value": text["consent_at"].iat[position], "reason": reason})
    blank = pd.DataFrame({column: _blank(text[column]) for column in (*ADDRESS_COLUMNS, *CONSENT_COLUMNS, "consent_source")})
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


def validate_contact_rows(
    raw: pd.DataFrame,
    default_region: str = "RU",
    now: datetime | None = None,
    rows: Sequence[int] | None = None,
    extra_columns: Mapping[str, pa.Column] | None = None,
    *,
    default_timezone: str | None = None,
) -> ValidationResult:
    """Split a raw contacts table into normalised good rows, a table of every problem and notices.

    ``raw`` is the file as text and ``rows`` the spreadsheet row of each record (see
    ``reading.read_contacts_file``); phones without ``+country`` are read in ``default_region``
    (the tenant's ``country``); a row whose phone names no single time zone gets
    ``default_timezone`` (the tenant's). ``now`` (default: the clock) is what a
    ``consent_at`` must not lie beyond, give or take the allowed clock skew. A missing required column makes
    every row meaningless, so then the only errors are one ``missing column`` per absent column
    (row 1, the header) and ``good`` is empty. Among rows that are one person (same
    ``external_id``, phone or e-mail) the first is kept and later ones are errors pointing at it;
    a row repeating an earlier one exactly is dropped with a notice. ``extra_columns`` (a tenant's
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

    good = _good_frame(text, default_region, errors, default_timezone)
    errors.extend(_row_rule_errors(text, now or datetime.now(UTC)))
    keep, duplicates = in_file_duplicates(good)
    notices = duplicates[duplicates["notice"]].drop(columns="notice")
    errors.extend(duplicates[~duplicates["notice"]].drop(columns="notice").to_dict("records"))
    error_table = _error_frame(errors)
    good = good[keep & ~good["row"].isin(set(error_table["row"])).to_numpy()].reset_index(drop=True)
    return ValidationResult(good=good, errors=error_table, notices=_error_frame(notices.to_dict("records")))


def no_rows() -> pd.DataFrame:
    """A ``good`` frame without rows, typed like any other: what a file with no usable rows yields."""
    nothing = pd.DataFrame({column: pd.Series(dtype="str") for column in CSV_COLUMNS + OPTIONAL_COLUMNS})
    return _good_frame(nothing, "RU", [], None)


def _reasons(errors: list[dict], text: pd.DataFrame, column: str, reason: pd.Series) -> None:
    """One error per cell a normaliser refused, quoting the cell as the file has it."""
    refused = reason.notna().to_numpy()
    cells = zip(text.index[refused], text[column][refused].tolist(), reason[refused].tolist(), strict=True)
    errors.extend({"row": int(row), "column": column, "value": value, "reason": why} for row, value, why in cells)


def _good_frame(text: pd.DataFrame, default_region: str, errors: list[dict], default_timezone: str | None) -> pd.DataFrame:
    """Every row normalised; cells that fail normalisation become NA and land in ``errors``.

    Text columns stay Arrow strings (NA for no value): a million rows of them as Python objects
    would cost ~600 MB more at the peak; the store reads NA as NULL.
    """
    phone, phone_ext, phone_reason = normalise_phones(text["phone"], default_region)
    email, email_reason = normalise_emails(text["email"])
    zone_reason = check_timezones(text["timezone"])
    for column, reason in (("phone", phone_reason), ("email", email_reason), ("timezone", zone_reason)):
        _reasons(errors, text, column, reason)
    derived = derive_timezones(phone, default_timezone) if default_timezone else derive_timezones(phone, pd.NA)
    timezone = normalise_names(text["timezone"]).where(zone_reason.isna()).fillna(derived)
    return pd.DataFrame(
        {
            "row": pd.Series(text.index, index=text.index, dtype="int64"),
            "external_id": normalise_names(text["external_id"]),
            "first_name": normalise_names(text["first_name"]),
            "last_name": normalise_names(text["last_name"]),
            "email": email,
            "phone": phone,
            "phone_ext": phone_ext,
            "telegram_chat_id": int64_cells(text["telegram_chat_id"])[0],
            "vk_user_id": int64_cells(text["vk_user_id"])[0],
            "city": normalise_names(text["city"]),
            "language": normalise_names(text["language"]).str.lower(),
            "timezone": timezone,
            **{column: consent_decisions(text[column])[0] for column in CONSENT_COLUMNS},
            "consent_source": normalise_names(text["consent_source"]),
            "consent_text_version": normalise_names(text["consent_text_version"]).str.lower(),
            "consent_at": utc_timestamps(text["consent_at"])[0],
        }
    )


def _column_order(column: str) -> int:
    first = column.split("|", 1)[0]
    columns = CSV_COLUMNS + OPTIONAL_COLUMNS
    return columns.index(first) if first in columns else len(columns)
