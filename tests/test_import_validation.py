"""Contact CSV validation: the shipped sample's planted mistakes, normalisation, reports."""

from __future__ import annotations

from datetime import UTC, datetime

import pandas as pd
import pytest

from orchestrator_assets.imports.sample_contacts import (
    DEFAULT_ROWS,
    SAMPLE_PATH,
    generate_sample,
    write_sample,
)
from orchestrator_assets.imports.reading import read_contacts_file
from orchestrator_assets.imports.report import first_problems_markdown, grouped_markdown, write_report
from orchestrator_assets.imports.validation import (
    OPTIONAL_COLUMNS,
    CSV_COLUMNS,
    ERROR_COLUMNS,
    validate_contact_rows,
)
from policies.masking import mask_value


@pytest.fixture(scope="module")
def sample():
    return generate_sample()


@pytest.fixture(scope="module")
def shipped():
    read = read_contacts_file(SAMPLE_PATH)
    return read.frame, validate_contact_rows(read.frame, rows=read.rows)


def _raw(**overrides: str) -> dict[str, str]:
    """One valid raw row; tests override the cells they are about. Rows of other external ids get
    their own e-mail, or they would be one person twice."""
    row = dict.fromkeys(CSV_COLUMNS, "")
    row.update(external_id="c-1", first_name="Анна")
    row.update(overrides)
    if "email" not in overrides:
        row["email"] = "anna@example.ru" if row["external_id"] == "c-1" else f"anna+{row['external_id'].strip()}@example.ru"
    return row


def _validate(*rows: dict[str, str]):
    return validate_contact_rows(pd.DataFrame(list(rows), columns=list(CSV_COLUMNS)))


def test_shipped_sample_is_what_the_generator_writes(sample, tmp_path):
    # The planted list below is only trustworthy if the committed file is its generator's output.
    regenerated = write_sample(sample, tmp_path / "demo_contacts.csv")
    assert regenerated.read_bytes() == SAMPLE_PATH.read_bytes()


def test_shipped_sample_reports_exactly_the_planted_mistakes(sample, shipped):
    raw, result = shipped
    assert list(raw.columns) == list(CSV_COLUMNS)
    assert len(sample.bad_rows) >= 12
    assert set(zip(result.errors["row"], result.errors["column"], strict=True)) == {
        (error.row, error.column) for error in sample.planted
    }
    assert len(result.errors) == len(sample.planted)  # one error per planted mistake, no extras
    assert len(result.good) == DEFAULT_ROWS == len(raw) - len(sample.bad_rows)
    assert not set(result.good["row"]) & sample.bad_rows


@pytest.mark.parametrize(("rows", "seed"), [(1, 1), (40, 2)])
def test_generator_plants_exactly_at_any_size(rows, seed, tmp_path):
    sample = generate_sample(rows, seed)
    result = validate_contact_rows(read_contacts_file(write_sample(sample, tmp_path / "s.csv")).frame)
    assert set(zip(result.errors["row"], result.errors["column"], strict=True)) == {(e.row, e.column) for e in sample.planted}
    assert len(result.good) == rows


def test_duplicate_points_at_first_occurrence_which_is_kept(sample, shipped):
    raw, result = shipped
    (duplicate,) = [error for error in sample.planted if error.kind == "duplicate external_id"]
    external_id = raw.at[duplicate.row - 2, "external_id"]
    first_row = int(raw.index[raw["external_id"] == external_id][0]) + 2
    assert first_row < duplicate.row
    reason = result.errors.set_index("row").at[duplicate.row, "reason"]
    assert reason == f"duplicate external_id, first seen on row {first_row}"
    assert result.good.set_index("external_id").at[external_id, "row"] == first_row


def test_errors_quote_the_cell_and_say_why(sample, shipped):
    raw, result = shipped
    for error in result.errors.itertuples(index=False):
        assert error.reason
        if error.column in CSV_COLUMNS:
            assert error.value == raw.at[error.row - 2, error.column]


def test_sample_looks_like_the_crm_export_it_stands_for(shipped):
    raw, result = shipped
    good = result.good
    assert 0.5 < (good["language"] == "ru").mean() < 0.7
    assert 0.6 < good["telegram_chat_id"].notna().mean() < 0.8
    phones = raw["phone"]
    for pattern in (r"\+7 \(\d{3}\) \d{3}-\d{2}-\d{2}", r"8 \d{3} \d{3} \d{2} \d{2}", r"8\d{10}", r"\+7\d{10}", r"\d{3}-\d{3}-\d{2}-\d{2}"):
        assert phones.str.fullmatch(pattern).any(), pattern
    assert good["phone"].str.startswith("+44").any() and good["phone"].str.startswith("+49").any()
    assert raw["email"].str.contains("[A-Z]").any()
    assert set(good["email"].dropna().str.split("@").str[1]) <= {
        "example.ru",
        "example.com",
        "example.org",
    }
    assert {"Москва", "Санкт-Петербург", "Казань", "Новосибирск", "London", "Berlin"} <= set(good["city"].dropna())


@pytest.mark.parametrize(
    "phone",
    ["+7 (916) 123-45-67", "8 916 123 45 67", "89161234567", "+79161234567", "916-123-45-67", " +7 916 1234567 "],
)
def test_russian_phone_formats_become_e164(phone):
    assert _validate(_raw(phone=phone)).good.at[0, "phone"] == "+79161234567"


def test_foreign_phones_and_default_region():
    result = _validate(_raw(phone="+44 20 7946 0123"), _raw(external_id="c-2", email="", phone="+49 30 12345678"))
    assert list(result.good["phone"]) == ["+442079460123", "+493012345678"]
    national_uk = pd.DataFrame([_raw(phone="020 7946 0123")], columns=list(CSV_COLUMNS))
    assert validate_contact_rows(national_uk, default_region="GB").good.at[0, "phone"] == "+442079460123"
    assert list(validate_contact_rows(national_uk).errors["column"]) == ["phone"]


def test_normalised_row():
    result = _validate(
        _raw(
            external_id=" c-7 ",
            first_name="  Анна  Мария ",
            last_name=" Петрова",
            email=" Anna.Petrova@Example.RU ",
            telegram_chat_id="5007686286",
            city=" Казань ",
            language="RU",
            consent_email="Да",
            consent_telegram="нет",
            consent_sms="",
            consent_source="bot:/start promo",
            consent_at="2026-03-14T10:22:05+03:00",
        )
    )
    assert result.errors.empty
    row = result.good.iloc[0]
    assert row["row"] == 2
    assert row["external_id"] == "c-7"
    assert (row["first_name"], row["last_name"], row["city"]) == ("Анна Мария", "Петрова", "Казань")
    assert row["email"] == "anna.petrova@example.ru"
    assert pd.isna(row["phone"])
    assert result.good["telegram_chat_id"].dtype == "Int64" and row["telegram_chat_id"] == 5007686286
    assert row["language"] == "ru"
    assert (row["consent_email"], row["consent_telegram"], row["consent_sms"]) == (True, False, None)
    assert row["consent_at"] == pd.Timestamp("2026-03-14T07:22:05Z")
    assert str(result.good["consent_at"].dtype) == "datetime64[us, UTC]"


@pytest.mark.parametrize(
    ("token", "decision"),
    [("yes", True), ("YES", True), ("да", True), ("1", True), ("true", True), ("no", False), ("Нет", False), ("0", False), ("False", False), ("", None)],
)
def test_consent_tokens(token, decision):
    assert _validate(_raw(consent_email=token, consent_source="import:crm")).good.at[0, "consent_email"] is decision


def test_missing_column_is_one_clear_error():
    raw = pd.DataFrame([_raw()], columns=list(CSV_COLUMNS)).drop(columns="phone")
    result = validate_contact_rows(raw)
    assert result.errors.to_dict("records") == [{"row": 1, "column": "phone", "value": "", "reason": "missing column"}]
    assert result.good.empty and set(result.good.columns) == {"row", *CSV_COLUMNS, *OPTIONAL_COLUMNS, "phone_ext"}


def test_optional_channel_columns_may_be_absent_or_filled():
    without = validate_contact_rows(pd.DataFrame([_raw()], columns=list(CSV_COLUMNS)))
    assert without.errors.empty and pd.isna(without.good.at[0, "vk_user_id"])
    filled = validate_contact_rows(pd.DataFrame([{**_raw(), "vk_user_id": "555", "consent_vk": "да", "consent_whatsapp": "maybe", "consent_source": "bot:vk"}]))
    assert filled.errors[["column", "reason"]].to_dict("records") == [
        {"column": "consent_whatsapp", "reason": "not a consent value (use yes/no, да/нет, 1/0, true/false, or leave empty)"}
    ]


def test_row_with_several_problems_is_reported_per_problem_and_not_imported():
    result = _validate(
        _raw(),
        _raw(external_id="c-2", email="bad@", telegram_chat_id="@anna", language="de", consent_sms="может"),
    )
    assert list(result.errors["row"]) == [3, 3, 3, 3, 3]
    assert list(result.errors["column"]) == ["email", "telegram_chat_id", "language", "consent_sms", "consent_source"]
    assert list(result.errors.columns) == list(ERROR_COLUMNS)
    assert list(result.good["row"]) == [2]


def test_address_and_duplicate_rules():
    result = _validate(
        _raw(),
        _raw(email="second@example.ru"),
        _raw(external_id="c-3", email="", phone="", telegram_chat_id=""),
        _raw(external_id="c-4", email="", telegram_chat_id="-1001234567890"),
    )
    assert result.errors[["row", "column", "reason"]].to_dict("records") == [
        {"row": 3, "column": "external_id", "reason": "duplicate external_id, first seen on row 2"},
        {"row": 4, "column": "email|phone|telegram_chat_id|vk_user_id", "reason": "no address: need an email, phone, telegram_chat_id or vk_user_id"},
    ]
    assert list(result.good["external_id"]) == ["c-1", "c-4"]
    assert result.good.at[0, "email"] == "anna@example.ru"


def test_a_consent_dated_beyond_the_clock_skew_is_a_row_error_and_one_within_it_is_kept():
    now = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
    consent = {"consent_email": "да", "consent_source": "form:https://shop.example/subscribe"}
    result = validate_contact_rows(
        pd.DataFrame(
            [
                _raw(external_id="c-1", consent_at="2099-01-01T00:00:00+03:00", **consent),
                _raw(external_id="c-2", consent_at="2026-11-24T15:01:00+03:00", **consent),  # one minute ahead
                _raw(external_id="c-3", consent_at="2026-11-24T12:06:00Z", consent_email="нет", consent_source="form:x"),
            ],
            columns=list(CSV_COLUMNS),
        ),
        now=now,
    )
    assert result.errors.to_dict("records") == [
        {
            "row": 2,
            "column": "consent_at",
            "value": "2099-01-01T00:00:00+03:00",
            "reason": "dated 2098-12-31T21:00:00Z, more than 5 minutes after now (2026-11-24T12:00:00Z): a consent decision cannot be dated in the future",
        },
        {
            "row": 4,
            "column": "consent_at",
            "value": "2026-11-24T12:06:00Z",
            "reason": "dated 2026-11-24T12:06:00Z, more than 5 minutes after now (2026-11-24T12:00:00Z): a consent decision cannot be dated in the future",
        },
    ]
    assert list(result.good["external_id"]) == ["c-2"]
    assert result.good.at[0, "consent_at"] == pd.Timestamp("2026-11-24T12:01:00Z")


def test_markdown_reports_group_by_reason_and_cut_with_a_count(shipped):
    _, result = shipped
    first = first_problems_markdown(result.errors, limit=5).splitlines()
    assert first[0] == "| row | column | value | reason |"
    assert len([line for line in first if line.startswith("| ") and line[2].isdigit()]) == 5
    assert first[-1] == f"… and {len(result.errors) - 5} more in the report CSV"
    assert "email\\|phone\\|telegram_chat_id" in first_problems_markdown(result.errors, limit=len(result.errors))
    grouped = grouped_markdown(result.errors).splitlines()
    counts = result.errors["reason"].value_counts()
    assert grouped[0] == "| reason | count | rows |"
    assert len(grouped) == 2 + len(counts)
    for reason, count in counts.items():
        assert f"| {reason.replace('|', chr(92) + '|')} | {count} |" in "\n".join(grouped)
    assert [int(line.split(" | ")[1]) for line in grouped[2:]] == sorted(counts, reverse=True)
    assert first_problems_markdown(result.errors.iloc[:0]) == grouped_markdown(result.errors.iloc[:0]) == "_No problems._"


def test_error_report_csv_keeps_rows_and_reasons_and_masks_values(shipped, tmp_path):
    _, result = shipped
    path = write_report(result.errors, tmp_path / "reports" / "errors.csv")
    again = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    assert list(again.columns) == list(ERROR_COLUMNS)
    assert list(again["row"].astype(int)) == list(result.errors["row"])
    assert list(again["reason"]) == list(result.errors["reason"])
    masked = [str(mask_value(column, value)) for column, value in zip(result.errors["column"], result.errors["value"])]
    assert list(again["value"].str.removeprefix("'")) == masked
