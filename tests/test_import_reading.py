"""The ugly-CSV corpus (tests/data/ugly_csv/): every kind of file real users export, each through the
real import asset on a real Dagster instance and store, each with its exact report, and never a
partial import."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import dagster as dg
import pytest
import sqlalchemy as sa

from pg import create_database, drop_database

from orchestrator_assets.contacts import commit_contact_import
from orchestrator_assets.imports import inspection as inspection_module
from orchestrator_assets.imports.assets import contact_import_rows
from orchestrator_assets.imports.headers import OUR_COLUMNS
from orchestrator_assets.imports.inspection import error_report_path, inspect_file
from orchestrator_assets.imports.reading import ReadResult, Refusal, read_contacts_file
from orchestrator_assets.imports.validation import CSV_COLUMNS, validate_contact_rows
from policies.loader import load_tenants
from policies.tenants import CustomField
from resources.opstore import OperationalStore
from resources.opstore_schema import consent_events
from resources.opstore_schema import contacts as contacts_table

CORPUS = Path(__file__).resolve().parent / "data" / "ugly_csv"
IMPORT_OP = "imports__contact_import_rows"
NAMES = ["Иван", "Ольга", "Пётр", "Anna", "Сергей", "Мария"]
ALL_SIX = [f"u-{n}" for n in range(1, 7)]
CONSENT_HINT = "not a consent value (use yes/no, да/нет, 1/0, true/false, or leave empty)"
LANGUAGE_HINT = "unknown language code (expected one of: en, ru)"

# file → (external ids stored, report rows (row, column, reason))
IMPORTED = {
    "utf8.csv": (ALL_SIX, []),
    "utf8_bom.csv": (ALL_SIX, []),
    "cp1251.csv": (ALL_SIX, []),
    "cp1252_german.csv": (["a-1", "a-2"], []),
    "utf16_tab.csv": (ALL_SIX, []),
    "semicolon.csv": (ALL_SIX, []),
    "tab.csv": (ALL_SIX, []),
    "excel_sep_line.csv": (ALL_SIX, []),
    "quoted_newlines.csv": (ALL_SIX, []),
    "ru_headers.csv": (ALL_SIX, []),
    "stray_quote.csv": (
        ["u-1", "u-2", "u-6"],
        [(4, "", 'lines 4–6 were read as one record: a quote opened in this row is closed only on line 6 (a stray " in a cell?)')],
    ),
    "formula_cells.csv": (
        ["u-5", "u-6"],
        [
            (2, "language", LANGUAGE_HINT),
            (3, "consent_email", CONSENT_HINT),
            (4, "consent_sms", CONSENT_HINT),
            (4, "consent_source", "required when a consent decision is given"),
            (5, "language", LANGUAGE_HINT),
        ],
    ),
}

# file → (report row, reason: detail)
REFUSED = {
    "empty.csv": (None, "empty file: the file has 0 bytes"),
    "png_renamed.csv": (None, "not a CSV file: the file is a PNG image"),
    "header_only.csv": (None, "no data rows: the file has a header (13 columns) and no rows under it"),
    "too_many_columns.csv": (1, "too many columns: the header has 263 columns; at most 200 are read"),
    "unterminated_quote.csv": (6, "unterminated quote: a quote opened in the record starting on line 6 is never closed"),
    "no_known_column.csv": (
        1,
        "no known column: read with the semicolon as delimiter, the header is 'Дата;Сумма;Назначение платежа';"
        " expected columns such as external_id, phone, email (or Телефон, E-mail, Имя)",
    ),
    "missing_columns.csv": (
        1,
        "missing columns: first_name, last_name, telegram_chat_id, city, language, consent_email, consent_telegram,"
        " consent_sms, consent_source, consent_at not found; read with the comma as delimiter, the header is 'ID,Телефон,E-mail'",
    ),
}


def test_the_corpus_is_exactly_the_files_the_tests_name():
    assert sorted(path.name for path in CORPUS.iterdir()) == sorted({*IMPORTED, *REFUSED})


def _materialize(instance: dg.DagsterInstance, path: Path, tenant: str = "demo") -> dg.ExecuteInProcessResult:
    return dg.materialize(
        [contact_import_rows, commit_contact_import],
        instance=instance,
        partition_key=tenant,
        resources={"opstore": OperationalStore()},
        run_config={"ops": {IMPORT_OP: {"config": {"csv_path": str(path)}}}},
        raise_on_error=False,
    )


def _report(tenant: str, path: Path) -> list[tuple[int | None, str, str]]:
    with error_report_path(tenant, path).open(encoding="utf-8-sig", newline="") as handle:
        rows = list(csv.DictReader(handle))
    return [(int(r["row"]) if r["row"] else None, r["column"], r["reason"]) for r in rows]


def _stored_external_ids() -> list[str]:
    with OperationalStore().engine().connect() as conn:
        return sorted(conn.execute(sa.select(contacts_table.c.external_id)).scalars())


def _consent_events() -> int:
    with OperationalStore().engine().connect() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(consent_events)).scalar_one()


@pytest.mark.parametrize("name", sorted(IMPORTED))
def test_a_readable_file_imports_its_good_rows_and_reports_the_rest(name, algor_home, instance):
    stored, report = IMPORTED[name]
    result = _materialize(instance, CORPUS / name)
    assert result.success
    assert _stored_external_ids() == sorted(stored)
    assert _report("demo", CORPUS / name) == report


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_a_refused_file_fails_cleanly_with_a_one_row_report_and_stores_nothing(name, algor_home, instance):
    row, reason = REFUSED[name]
    path = CORPUS / name
    stale = error_report_path("demo", path)
    stale.parent.mkdir(parents=True)
    stale.write_text("row,column,value,reason\n7,phone,+7 916 ***-**-67,from an older run\n", encoding="utf-8")

    result = _materialize(instance, path)

    assert not result.success
    failure = result.failure_data_for_node(IMPORT_OP)
    assert failure.user_failure_data.description == f"{name} not imported: {reason}"
    assert failure.user_failure_data.metadata["error_report"].path == str(stale)
    assert _report("demo", path) == [(row, "", reason)]
    assert _stored_external_ids() == [] and _consent_events() == 0


def test_a_ten_megabyte_cell_is_refused_and_not_copied_into_the_report(algor_home, instance, tmp_path):
    path = tmp_path / "huge_cell.csv"
    row = {**dict.fromkeys(CSV_COLUMNS, ""), "external_id": "u-1", "email": "a@example.ru", "city": "x" * 10_000_000}
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        writer.writerow(row)

    result = _materialize(instance, path)

    assert not result.success
    assert _report("demo", path) == [
        (2, "", "cell too large: a cell in the record starting on line 2 is longer than 65536 characters (a quote that is never closed makes one too)")
    ]
    assert error_report_path("demo", path).stat().st_size < 1000
    assert _stored_external_ids() == []


def test_a_clean_run_replaces_the_report_of_an_earlier_bad_file_of_the_same_name(algor_home, instance, tmp_path):
    path = tmp_path / "contacts.csv"
    path.write_bytes((CORPUS / "formula_cells.csv").read_bytes())
    assert _materialize(instance, path).success and len(_report("demo", path)) == 5
    path.write_bytes((CORPUS / "utf8.csv").read_bytes())
    assert _materialize(instance, path).success
    assert _report("demo", path) == []
    assert error_report_path("demo", path).read_text(encoding="utf-8-sig") == "row,column,value,reason\n"


def test_the_report_defuses_formulas_and_masks_personal_data(algor_home, instance, tmp_path):
    path = tmp_path / "leaky.csv"
    text = (CORPUS / "formula_cells.csv").read_text(encoding="utf-8").replace("ivan.petrov@example.ru", "ivan.petrov@@example.ru")
    path.write_text(text, encoding="utf-8")
    assert _materialize(instance, path).success
    with error_report_path("demo", path).open(encoding="utf-8-sig", newline="") as handle:
        values = {(r["row"], r["column"]): r["value"] for r in csv.DictReader(handle)}
    assert values[("2", "language")] == "'=HYPERLINK(\"http://evil.example/x\",\"click\")"
    assert values[("3", "consent_email")] == "'@SUM(1+1)*cmd|' /C calc'!A0"
    assert values[("4", "consent_sms")] == "'-2+3"
    assert values[("5", "language")] == "'+1"
    assert values[("2", "email")] == "i***@example.ru"
    assert "ivan.petrov" not in error_report_path("demo", path).read_text(encoding="utf-8-sig")


def test_a_refusal_on_postgres_stores_nothing(algor_home, instance, monkeypatch):
    url = create_database()  # its own: the session's database is expected empty by other tests
    monkeypatch.setenv("ALGOR_DATABASE_URL", url)
    monkeypatch.setenv("ALGOR_ALLOW_SANDBOX_WITH", "ALGOR_DATABASE_URL")
    try:
        assert _materialize(instance, CORPUS / "utf8.csv").success
        before = _stored_external_ids()
        result = _materialize(instance, CORPUS / "unterminated_quote.csv")
        assert not result.success
        assert OperationalStore().engine().dialect.name == "postgresql"
        assert _stored_external_ids() == before == ALL_SIX
    finally:
        OperationalStore().engine().dispose()
        drop_database(url)


# --- the reader on its own ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "encoding", "delimiter"),
    [
        ("utf8.csv", "utf-8", ","),
        ("utf8_bom.csv", "utf-8-sig", ","),
        ("cp1251.csv", "cp1251", ";"),
        ("utf16_tab.csv", "utf-16", "\t"),
        ("semicolon.csv", "utf-8", ";"),
        ("tab.csv", "utf-8", "\t"),
        ("excel_sep_line.csv", "utf-8", ";"),
        ("ru_headers.csv", "utf-8", ";"),
    ],
)
def test_encoding_and_delimiter_are_detected_and_the_text_comes_out_right(name, encoding, delimiter):
    read = read_contacts_file(CORPUS / name)
    assert (read.encoding, read.delimiter) == (encoding, delimiter)
    assert list(read.frame["first_name"]) == NAMES
    assert list(read.frame["phone"])[1] == "8 916 123-45-02"
    assert read.rows == [2, 3, 4, 5, 6, 7]


def test_a_german_excel_file_is_windows_1252_not_cyrillic():
    read = read_contacts_file(CORPUS / "cp1252_german.csv")
    assert read.encoding == "cp1252"
    assert list(read.frame["last_name"]) == ["Müller", "Groß"]


def test_quoted_cells_keep_their_newlines_commas_and_quotes():
    frame = read_contacts_file(CORPUS / "quoted_newlines.csv").frame
    assert frame.at[0, "city"] == "Москва\nул. Ленина, д. 5"
    assert frame.at[1, "first_name"] == 'Ольга, "Оля"'
    assert frame.at[3, "city"] == "Berlin\nMitte\nApt. 3"


def test_russian_headers_are_renamed_and_an_unknown_column_is_named_and_left_out():
    read = read_contacts_file(CORPUS / "ru_headers.csv")
    assert read.renamed["Моб. телефон"] == "phone" and read.renamed["Эл. почта"] == "email"
    assert read.ignored_columns == ("Комментарий",)
    assert list(read.frame.columns) == list(CSV_COLUMNS)


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "file.csv"
    path.write_text(text, encoding="utf-8")
    return path


HEADER = ",".join(CSV_COLUMNS)


def test_header_names_match_whatever_the_case_spacing_and_punctuation(tmp_path):
    spelled = {"email": "ЭЛ.ПОЧТА", "phone": "моб телефон", "external_id": "Id"}
    header = ",".join(spelled.get(column, column) for column in CSV_COLUMNS)
    read = read_contacts_file(_write(tmp_path, f"{header}\nu-1,,,a@example.ru,,,,,,,,,\n"))
    assert read.frame.at[0, "email"] == "a@example.ru"
    assert set(read.renamed) == {"ЭЛ.ПОЧТА", "моб телефон", "Id"}


def test_two_columns_meaning_the_same_field_are_refused(tmp_path):
    read = read_contacts_file(_write(tmp_path, f"{HEADER},E-mail\nu-1,,,a@example.ru,,,,,,,,,,b@example.ru\n"))
    assert read == Refusal("column given twice", "'email' and 'E-mail' both mean email", row=1)


def test_blank_lines_keep_the_row_numbers_a_spreadsheet_shows(tmp_path):
    read = read_contacts_file(_write(tmp_path, f"{HEADER}\nu-1,,,a@example.ru,,,,,,,,,\n\n,,,,,,,,,,,,\nu-2,,,not-an-email,,,,,,,,,\n"))
    assert isinstance(read, ReadResult) and read.rows == [2, 5]
    errors = validate_contact_rows(read.frame, rows=read.rows).errors
    assert list(errors[["row", "column"]].itertuples(index=False, name=None)) == [(5, "email")]


def test_a_row_with_more_cells_than_the_header_is_reported_and_left_out(tmp_path):
    read = read_contacts_file(_write(tmp_path, f"{HEADER}\nu-1,,,a@example.ru,,,,,,,,,,surplus\nu-2,,,b@example.ru,,,,,,,,,,\n"))
    assert read.problems == [{"row": 2, "column": "", "value": "", "reason": "14 cells, the header has 13"}]
    assert read.rows == [3] and list(read.frame["external_id"]) == ["u-2"]


def test_a_quote_in_the_middle_of_a_quoted_cell_is_refused_with_its_line(tmp_path):
    read = read_contacts_file(_write(tmp_path, f'{HEADER}\nu-1,,,a@example.ru,,,,,,,,,\nu-2,"Anna "Ann" B",,b@example.ru,,,,,,,,,\n'))
    assert read.reason == "malformed quote" and read.row == 3
    assert read.detail.startswith("line 3: ")


@pytest.mark.parametrize(
    ("data", "detail"),
    [
        (b"\x00\x01\x02binary", "the file holds binary data (NUL bytes), not text"),
        (b"PK\x03\x04rest-of-a-workbook", "the file is a ZIP archive (an .xlsx workbook is one: save it as CSV)"),
        (b"  \r\n\r\n", "the file has 6 bytes and no text"),
    ],
)
def test_files_that_are_not_text_are_refused(tmp_path, data, detail):
    path = tmp_path / "x.csv"
    path.write_bytes(data)
    assert read_contacts_file(path).detail == detail


# --- a tenant's custom fields (demo: loyalty_level enum, first_order date, orders int, average_check decimal, vip bool) ---


def test_custom_fields_are_read_under_their_aliases_checked_in_one_pass_and_stored_as_canonical_json(algor_home, tmp_path):
    header = HEADER + ",Уровень лояльности,Первый заказ,Заказов,Средний чек,VIP,Комментарий"
    path = _write(
        tmp_path,
        f"{header}\n"
        "u-1,,,a@example.ru,,,,,,,,,,GOLD,01.03.2025,12,\"1 500,50\",да,x\n"
        "u-2,,,b@example.ru,,,,,,,,,,silver,2025-03-02,7,99,no,\n"
        "u-3,,,c@example.ru,,,,,,,,,,,,,,,\n"
        "u-4,,,d@example.ru,,,,,,,,,,platinum,31.02.2025,1.5,abc,maybe,\n",
    )
    inspection = inspect_file(path, "demo")
    assert inspection.read.ignored_columns == ("Комментарий",)
    problems = list(inspection.problems[["row", "column", "reason"]].itertuples(index=False, name=None))
    assert problems == [
        (5, "loyalty_level", "not one of: bronze, silver, gold"),
        (5, "first_order", "not a date (YYYY-MM-DD or DD.MM.YYYY)"),
        (5, "orders", "not an integer"),
        (5, "average_check", "not a decimal number (e.g. 12.5 or 12,5)"),
        (5, "vip", "not yes/no (use yes/no, да/нет, 1/0, true/false)"),
    ]
    good = inspection.validation.good
    assert list(good["external_id"]) == ["u-1", "u-2", "u-3"]
    assert [json.loads(text) if text else None for text in good["custom_fields"]] == [
        {"loyalty_level": "gold", "first_order": "2025-03-01", "orders": 12, "average_check": "1500.50", "vip": True},
        {"loyalty_level": "silver", "first_order": "2025-03-02", "orders": 7, "average_check": "99", "vip": False},
        None,
    ]


def _declare(monkeypatch, **fields: CustomField) -> None:
    """The demo tenant with exactly ``fields`` as its custom fields, for the import's next read."""
    tenants = load_tenants()
    demo = tenants.tenants["demo"].model_copy(update={"custom_fields": fields})
    monkeypatch.setattr(inspection_module, "load_tenants", lambda: tenants.model_copy(update={"tenants": {"demo": demo}}))


def test_a_required_custom_field_must_be_in_every_row_and_in_the_file(algor_home, tmp_path, monkeypatch):
    _declare(monkeypatch, orders=CustomField(type="int", required=True))
    with_column = inspect_file(_write(tmp_path, f"{HEADER},orders\nu-1,,,a@example.ru,,,,,,,,,,3\nu-2,,,b@example.ru,,,,,,,,,,\n"), "demo")
    assert list(with_column.problems[["row", "column", "reason"]].itertuples(index=False, name=None)) == [(3, "orders", "required")]
    without = inspect_file(_write(tmp_path, f"{HEADER}\nu-1,,,a@example.ru,,,,,,,,,\n"), "demo")
    assert list(without.problems[["row", "column", "reason"]].itertuples(index=False, name=None)) == [(1, "orders", "missing column")]
    assert without.validation.good.empty


def test_a_custom_field_named_like_a_built_in_column_stops_imports_until_renamed(algor_home, tmp_path, monkeypatch):
    _declare(monkeypatch, city=CustomField(type="string"))
    inspection = inspect_file(_write(tmp_path, f"{HEADER}\nu-1,,,a@example.ru,,,,,,,,,\n"), "demo")
    assert inspection.read == Refusal(
        "tenant configuration", "custom field(s) city in tenants.yaml have the name of a built-in column: rename them"
    )


def test_a_tenant_without_custom_fields_ignores_those_columns(algor_home, tmp_path):
    path = _write(tmp_path, f"{HEADER},loyalty_level\nu-1,,,a@example.ru,,,,,,,,,,gold\n")
    inspection = inspect_file(path, "acme")
    assert inspection.read.ignored_columns == ("loyalty_level",)
    assert inspection.problems.empty and inspection.validation.good.at[0, "custom_fields"] is None


@pytest.mark.parametrize(
    ("declared", "message"),
    [
        ({"type": "enum"}, "values are required for an enum field and allowed for no other type"),
        ({"type": "int", "values": ["1"]}, "values are required for an enum field and allowed for no other type"),
        ({"type": "enum", "values": ["Gold", "gold"]}, "an enum value is listed more than once"),
        ({"type": "money"}, "Input should be 'string', 'int', 'decimal', 'bool', 'date' or 'enum'"),
    ],
)
def test_custom_field_declarations_are_checked(declared, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        CustomField.model_validate(declared)


def test_the_code_page_is_told_by_the_rows_that_need_one_however_far_down(tmp_path):
    ascii_rows = "".join(f"u-{n},,,u{n}@example.com,,,,,,,,,\n" for n in range(3000))  # ~100 KiB of plain ASCII first
    path = tmp_path / "late_umlauts.csv"
    path.write_bytes(f"{HEADER}\n{ascii_rows}a-1,Jürgen,Müller,j@example.de,,,München,,,,,,\n".encode("cp1252"))
    read = read_contacts_file(path)
    assert read.encoding == "cp1252"
    assert read.frame.iloc[-1]["last_name"] == "Müller"


def test_every_column_of_ours_is_recognised_under_its_own_name(tmp_path):
    read = read_contacts_file(_write(tmp_path, ",".join(OUR_COLUMNS) + "\n" + "u-1,,,a@example.ru" + "," * (len(OUR_COLUMNS) - 4) + "\n"))
    assert list(read.frame.columns) == list(OUR_COLUMNS) and read.ignored_columns == ()
