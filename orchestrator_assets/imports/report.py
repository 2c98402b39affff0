"""The error report of an import: a CSV an operator opens in Excel, and its summary in run metadata.

The report is rewritten for every run, refusals and clean files included: a report left over
from an earlier run of a file with the same name would describe a file that no longer exists.
The file is built in full next to its final path and then moved over it, so a reader never sees
half of one.

What the CSV must not do to the person opening it:

* run a formula: a cell starting with ``=``, ``+``, ``-``, ``@``, tab or CR is prefixed with
  ``'`` (OWASP's advice against CSV injection), whatever column it is in;
* hang their spreadsheet: a value or a column name is cut to ``CELL_CHARS`` characters, saying how
  long it was (reasons are our own sentences, which quote at most a cut header);
* show personal data: values are masked by the name of their column (``policies.masking``).
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from orchestrator_assets.imports.reading import Refusal
from orchestrator_assets.imports.validation import ERROR_COLUMNS
from orchestrator_assets.tables import markdown_table
from policies.masking import mask_value

CELL_CHARS = 200
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def problems_frame(*groups: list[dict] | pd.DataFrame) -> pd.DataFrame:
    """Problems from the reader and the validator as one table, in file order (row, then as found).

    ``row`` is empty for a refusal that no single row is to blame for.
    """
    frames = [group if isinstance(group, pd.DataFrame) else pd.DataFrame(group, columns=list(ERROR_COLUMNS)) for group in groups]
    frames = [frame.loc[:, list(ERROR_COLUMNS)] for frame in frames if len(frame)]
    if not frames:
        return pd.DataFrame({column: pd.Series(dtype="Int64" if column == "row" else "str") for column in ERROR_COLUMNS})
    problems = pd.concat(frames, ignore_index=True).astype({"row": "Int64", "column": "str", "value": "str", "reason": "str"})
    return problems.sort_values("row", kind="stable", na_position="first").reset_index(drop=True)


def refusal_problems(refusal: Refusal) -> pd.DataFrame:
    """The one-row report of a refused file."""
    return problems_frame([{"row": refusal.row, "column": "", "value": "", "reason": f"{refusal.reason}: {refusal.detail}"}])


def shown(column: str, value: object) -> str:
    """A cell as a person may see it: masked if personal, cut if long."""
    text = str(mask_value(column, value))
    return text if len(text) <= CELL_CHARS else f"{text[:CELL_CHARS]}… ({len(text)} characters)"


def _inert(text: str) -> str:
    return f"'{text}" if text.startswith(_FORMULA_STARTS) else text


def write_report(problems: pd.DataFrame, path: str | Path) -> Path:
    """Write (or replace) the report CSV at ``path``: UTF-8 with a BOM, which Excel needs to show
    Cyrillic, columns ``row,column,value,reason``; nothing but the header when there is no problem."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    safe = pd.DataFrame(
        {
            "row": problems["row"].astype("Int64"),
            "column": [_inert(shown("", column)) for column in problems["column"]],
            "value": [_inert(shown(column, value)) for column, value in zip(problems["column"], problems["value"])],
            "reason": [_inert(reason) for reason in problems["reason"]],  # ours, and bounded: never cut
        }
    )
    partial = path.with_name(f".{path.name}.partial")
    safe.to_csv(partial, index=False, encoding="utf-8-sig")
    os.replace(partial, path)
    return path


def grouped_markdown(problems: pd.DataFrame, example_rows: int = 5) -> str:
    """Problems grouped by reason, most frequent first: count and the first rows to look at."""
    groups = []
    for reason, group in problems.groupby("reason", sort=False):
        rows = [str(row) for row in group["row"].dropna().unique()[:example_rows]]
        more = " …" if group["row"].nunique() > example_rows else ""
        groups.append((reason, len(group), ", ".join(rows) + more))
    groups.sort(key=lambda group: -group[1])
    return markdown_table(["reason", "count", "rows"], [(shown("", r), n, rows) for r, n, rows in groups], empty="No problems.")


def first_problems_markdown(problems: pd.DataFrame, limit: int = 20) -> str:
    """The first ``limit`` problems as rows, values masked and cut."""
    rows = [
        ("" if pd.isna(p.row) else p.row, p.column, shown(p.column, p.value), shown("", p.reason))
        for p in problems.head(limit).itertuples(index=False)
    ]
    table = markdown_table(["row", "column", "value", "reason"], rows, empty="No problems.")
    return table + (f"\n\n… and {len(problems) - limit} more in the report CSV" if len(problems) > limit else "")
