"""Typed cells of a contacts file, a column at a time: consent decisions, 64-bit ids, timestamps.

Validation asks each of these twice (is the cell acceptable? what is its value?), for every row of
files of a million rows, so each parser works on whole columns with Arrow kernels and keeps a
Python parser only for the rare cells the fast shape does not cover. Each returns the values and
masks of the cells it refuses; blank cells are neither values nor refusals.
"""

from __future__ import annotations

from datetime import datetime

import numpy as np
import pandas as pd

from orchestrator_assets.imports.phones import TEXT

CONSENT_TRUE = frozenset({"yes", "да", "1", "true"})
CONSENT_FALSE = frozenset({"no", "нет", "0", "false"})
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
# Up to 18 digits always fit in int64; a 19-digit id is range-checked in Python.
_SHORT_INT = r"-?[0-9]{1,18}"
_LONG_INT = r"-?[0-9]{19}"
# The ISO-8601 shapes exports use, with an offset; pandas and datetime.fromisoformat agree on them.
_PLAIN_ISO = r"[0-9]{4}-[0-9]{2}-[0-9]{2}[T ][0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]{1,6})?(?:Z|[+-][0-9]{2}:[0-9]{2})"


def _stripped(series: pd.Series) -> pd.Series:
    return series.astype(TEXT).str.strip().fillna("")


def consent_decisions(series: pd.Series) -> tuple[pd.Series, np.ndarray]:
    """``True``/``False`` per decision (yes/no, да/нет, 1/0, true/false in any case), ``None`` for
    a blank cell; and the mask of cells that are none of these."""
    token = _stripped(series).str.lower()
    granted = token.isin(CONSENT_TRUE).to_numpy(dtype=bool)
    refused = token.isin(CONSENT_FALSE).to_numpy(dtype=bool)
    blank = (token == "").to_numpy(dtype=bool)
    values = np.full(len(token), None, dtype=object)
    values[granted], values[refused] = True, False
    return pd.Series(values, index=series.index, dtype=object), ~(granted | refused | blank)


def is_int64(value: str) -> bool:
    """One cell as ``int64_cells`` judges it (custom fields of type int use it)."""
    return not int64_cells(pd.Series([value]))[1][0] and bool(value.strip())


def int64_cells(series: pd.Series) -> tuple[pd.Series, np.ndarray]:
    """Plain decimal integers within int64 (Telegram group chats are negative), ``Int64`` with NA for
    blanks; and the mask of anything else. Excel's ``1.23E+09`` or a ``@username`` are refused
    rather than converted: a guessed chat id would message a stranger."""
    text = _stripped(series)
    short = text.str.fullmatch(_SHORT_INT).to_numpy(dtype=bool)
    values = pd.Series(pd.NA, index=series.index, dtype="Int64")
    values[short] = text[short].astype("int64[pyarrow]").astype("int64")
    long_ = text.str.fullmatch(_LONG_INT).to_numpy(dtype=bool)
    for position in np.flatnonzero(long_):
        number = int(text.iat[position])
        if _INT64_MIN <= number <= _INT64_MAX:
            values.iat[position] = number
            short[position] = True
    return values, ~(short | (text == "").to_numpy(dtype=bool))


def utc_timestamps(series: pd.Series) -> tuple[pd.Series, np.ndarray, np.ndarray]:
    """UTC timestamps of ISO-8601 cells that carry an offset; the masks of cells that are not
    ISO-8601 and of those without an offset (consent evidence must say exactly when, so a local
    time is refused rather than guessed)."""
    text = _stripped(series)
    plain = text.str.fullmatch(_PLAIN_ISO).to_numpy(dtype=bool)
    moments = pd.Series(pd.NaT, index=series.index, dtype="datetime64[us, UTC]")
    moments[plain] = pd.to_datetime(text[plain], format="ISO8601", utc=True, errors="coerce").astype("datetime64[us, UTC]")
    not_iso = np.zeros(len(text), dtype=bool)
    no_offset = np.zeros(len(text), dtype=bool)
    others = ~(plain & moments.notna().to_numpy()) & (text != "").to_numpy(dtype=bool)
    for position in np.flatnonzero(others):
        try:
            moment = datetime.fromisoformat(text.iat[position])
        except ValueError:
            not_iso[position] = True
            continue
        if moment.tzinfo is None:
            no_offset[position] = True
        else:
            moments.iat[position] = pd.Timestamp(moment).tz_convert("UTC")
    return moments, not_iso, no_offset
