"""A tenant's own contact fields (``custom_fields`` in tenants.yaml): checked, parsed, stored as JSON.

The checks are pandera columns added to the import's schema, so a custom field's problems are
collected in the same lazy pass over the whole file as everything else. Values are parsed the way
a Russian or German spreadsheet writes them (``12,5``, ``01.03.2025``, ``да``) and stored in one
canonical spelling (``12.5``, ``2025-03-01``, ``true``), so that segments compare like with like.
A row's values become one JSON object (``contacts.custom_fields``); a blank cell is left out of it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from datetime import datetime
from decimal import Decimal, InvalidOperation

import pandas as pd
import pandera.pandas as pa

from orchestrator_assets.imports.validation import CONSENT_FALSE, CONSENT_TRUE, is_int64
from policies.tenants import CustomField, CustomFieldType

MAX_STRING = 1000
_DATE_FORMATS = ("%Y-%m-%d", "%d.%m.%Y")
_THOUSANDS = str.maketrans("", "", " \u00a0\u202f")
_REASONS = {
    CustomFieldType.STRING: f"longer than {MAX_STRING} characters",
    CustomFieldType.INT: "not an integer",
    CustomFieldType.DECIMAL: "not a decimal number (e.g. 12.5 or 12,5)",
    CustomFieldType.BOOL: "not yes/no (use yes/no, да/нет, 1/0, true/false)",
    CustomFieldType.DATE: "not a date (YYYY-MM-DD or DD.MM.YYYY)",
}


def _string(text: str) -> str:
    value = " ".join(text.split())
    if len(value) > MAX_STRING:
        raise ValueError
    return value


def _int(text: str) -> int:
    if not is_int64(text):
        raise ValueError
    return int(text)


def _decimal(text: str) -> str:
    """Canonical text of the number. A single comma is Russian Excel's decimal point, and spaces
    (plain, no-break, narrow no-break) its thousands separator: ``1 500,50`` is ``1500.50``."""
    text = text.translate(_THOUSANDS)
    try:
        value = Decimal(text.replace(",", ".") if text.count(",") == 1 and "." not in text else text)
    except InvalidOperation:
        raise ValueError from None
    if not value.is_finite():
        raise ValueError
    return str(value)


def _bool(text: str) -> bool:
    token = text.lower()
    if token not in CONSENT_TRUE | CONSENT_FALSE:
        raise ValueError
    return token in CONSENT_TRUE


def _date(text: str) -> str:
    for layout in _DATE_FORMATS:
        try:
            return datetime.strptime(text, layout).date().isoformat()
        except ValueError:
            continue
    raise ValueError


def _enum(values: list[str]) -> Callable[[str], str]:
    spelled = {value.casefold(): value for value in values}

    def parse(text: str) -> str:
        if text.casefold() not in spelled:
            raise ValueError
        return spelled[text.casefold()]

    return parse


_PARSERS: dict[CustomFieldType, Callable[[str], object]] = {
    CustomFieldType.STRING: _string,
    CustomFieldType.INT: _int,
    CustomFieldType.DECIMAL: _decimal,
    CustomFieldType.BOOL: _bool,
    CustomFieldType.DATE: _date,
}


def reason(field: CustomField) -> str:
    """What the report says about a cell of ``field`` that does not parse."""
    return f"not one of: {', '.join(field.values)}" if field.type is CustomFieldType.ENUM else _REASONS[field.type]


def parser(field: CustomField) -> Callable[[str], object]:
    """The parser of one field's cells (stripped, non-blank); raises ``ValueError``."""
    return _enum(field.values) if field.type is CustomFieldType.ENUM else _PARSERS[field.type]


def _fails(parse: Callable[[str], object], text: str) -> bool:
    try:
        parse(text)
    except ValueError:
        return True
    return False


def schema_columns(fields: Mapping[str, CustomField]) -> dict[str, pa.Column]:
    """pandera columns checking each custom field: required when declared so, else may be blank."""
    columns = {}
    for name, field in fields.items():
        parse = parser(field)
        checks = [pa.Check(lambda s, parse=parse: s.str.strip().map(lambda t: not t or not _fails(parse, t)).astype(bool), error=reason(field))]
        if field.required:
            checks.insert(0, pa.Check(lambda s: s.str.strip() != "", error="required"))
        columns[name] = pa.Column(checks=checks, required=field.required)
    return columns


def _parsed(parse: Callable[[str], object], text: str) -> object:
    try:
        return parse(text)
    except ValueError:
        return None  # the schema reports it


def with_json_values(good: pd.DataFrame, frame: pd.DataFrame, rows: list[int], fields: Mapping[str, CustomField]) -> pd.DataFrame:
    """``good`` (validated rows) with a ``custom_fields`` column: each row's custom values from
    ``frame`` (the file's text, record ``i`` on spreadsheet row ``rows[i]``) as a JSON object
    text, ``None`` when the row has none. A blank cell is left out of the object."""
    parsers = {name: parser(field) for name, field in fields.items() if name in frame.columns}

    def row_json(cells: tuple[str, ...]) -> str | None:
        values = {name: _parsed(parse, cell.strip()) for (name, parse), cell in zip(parsers.items(), cells) if cell.strip()}
        values = {name: value for name, value in values.items() if value is not None}
        return json.dumps(values, ensure_ascii=False, sort_keys=True) if values else None

    by_row = dict(zip(rows, map(row_json, frame[list(parsers)].itertuples(index=False, name=None)))) if parsers else {}
    return good.assign(custom_fields=pd.Series([by_row.get(row) for row in good["row"]], index=good.index, dtype=object))
