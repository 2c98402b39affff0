"""Reading a contacts file as people export it, or saying precisely why it cannot be read.

Everything is detected, nothing configured:

* **Encoding.** A byte-order mark says UTF-8 or UTF-16 (Excel's "Unicode text"). Otherwise
  strict UTF-8 is tried first: text in a legacy code page practically never decodes as UTF-8,
  so a success is proof. What is left is a single-byte code page, and there guessing is
  unavoidable; ``charset-normalizer`` picks between the only two our tenants' Excel writes,
  Windows-1251 (Russian) and Windows-1252 (German, English). Blindly decoding as cp1251 would
  turn every ``ü`` of a German file into ``ь`` without a word; a free guess over all code pages
  calls short German files cp1250.
* **Delimiter.** Excel's ``sep=;`` first line, when present, decides. Otherwise each of ``,``
  ``;`` tab ``|`` splits the header line, and the one that yields the most known column names
  wins (fields counted as a tie-break): counting delimiters alone is fooled by a header such as
  ``Моб. телефон; Город, область``.
* **Records.** Python's csv module in strict mode, so a broken quote is an error with a line
  number, not a silent merge. A quote that opens a cell and closes many lines later parses
  without error yet swallows whole records ("six data lines read as three"); a multi-line cell
  whose later lines look like records of their own (about half the header's delimiters) is
  therefore reported on its row and kept out of the import.

The outcome is a ``ReadResult`` (text cells, our column names, the spreadsheet row of every
record) or a ``Refusal`` for a file that is not a usable CSV at all. No exception of the parser
reaches the caller.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from charset_normalizer import from_bytes

from orchestrator_assets.imports.headers import alias_index, header_key
from orchestrator_assets.imports.validation import CSV_COLUMNS

MAX_CELL_CHARS = 64 * 1024
MAX_COLUMNS = 200
_DETECTION_SAMPLE = 64 * 1024  # bytes given to charset-normalizer
DELIMITERS = {",": "comma", ";": "semicolon", "\t": "tab", "|": "pipe"}
LEGACY_CODE_PAGES = ("cp1251", "cp1252")
_EXCEL_SEP_LINE = re.compile(r"\Asep=(.)\r?\n", re.IGNORECASE)
_NON_ASCII = re.compile(rb"[\x80-\xff]")

# First bytes of the files that get renamed to .csv most often, in words an operator knows.
_MAGIC = (
    (b"\x89PNG", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF8", "a GIF image"),
    (b"%PDF", "a PDF document"),
    (b"PK\x03\x04", "a ZIP archive (an .xlsx workbook is one: save it as CSV)"),
    (b"\xd0\xcf\x11\xe0", "an old Excel/Word file (.xls/.doc: save it as CSV)"),
    (b"\x1f\x8b", "a gzip archive"),
)


@dataclass(frozen=True)
class Refusal:
    """Why a file is not imported at all: ``reason`` groups refusals, ``detail`` says where/what."""

    reason: str
    detail: str
    row: int | None = None  # the spreadsheet row at fault, when there is one


@dataclass(frozen=True)
class ReadResult:
    """The readable records of a file as text, under our column names.

    ``rows`` holds the spreadsheet row of each record of ``frame`` (header = row 1; blank lines and
    refused records keep their numbers, so an operator finds the row where Excel shows it).
    ``problems`` are the records that could not be read as one row (``row, column, value, reason``).
    """

    frame: pd.DataFrame
    rows: list[int]
    problems: list[dict] = field(default_factory=list)
    encoding: str = "utf-8"
    delimiter: str = ","
    ignored_columns: tuple[str, ...] = ()
    renamed: dict[str, str] = field(default_factory=dict)  # header as written → our column

    @property
    def records(self) -> int:
        """Data records seen (read or refused), blank lines not counted."""
        return len(self.rows) + len(self.problems)


def read_contacts_file(path: str | Path, custom_fields: Mapping[str, Iterable[str]] | None = None) -> ReadResult | Refusal:
    """Read ``path``; ``custom_fields`` (a tenant's declared fields: name → header aliases) are
    columns too, every other unknown column is left out and named in ``ignored_columns``."""
    data = Path(path).read_bytes()
    decoded = _decode(data)
    if isinstance(decoded, Refusal):
        return decoded
    text, encoding = decoded
    if not text or text.isspace():  # no copy of a large text, unlike strip()
        return Refusal("empty file", f"the file has {len(data)} bytes and no text" if data else "the file has 0 bytes")
    index = alias_index(custom_fields)
    delimiter, text, skipped_lines = _delimiter(text, index)
    parsed = _parse(text, delimiter, first_line=1 + skipped_lines, longest_line=_longest_line(data))
    if isinstance(parsed, Refusal):
        return parsed
    header, body, starts = parsed
    if len(header) > MAX_COLUMNS:
        return Refusal("too many columns", f"the header has {len(header)} columns; at most {MAX_COLUMNS} are read", row=1)
    columns = _columns(header, index, delimiter)
    if isinstance(columns, Refusal):
        return columns
    names, renamed, ignored = columns
    frame, rows, problems = _records(body, starts, names, delimiter)
    if not rows and not problems:
        return Refusal("no data rows", f"the file has a header ({len(header)} columns) and no rows under it")
    return ReadResult(frame, rows, problems, encoding, delimiter, ignored, renamed)


def _decode(data: bytes) -> tuple[str, str] | Refusal:
    for magic, what in _MAGIC:
        if data.startswith(magic):
            return Refusal("not a CSV file", f"the file is {what}")
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        return _strict(data, "utf-16")
    if b"\x00" in data[:_DETECTION_SAMPLE]:
        return Refusal("not a CSV file", "the file holds binary data (NUL bytes), not text")
    if data.startswith(b"\xef\xbb\xbf"):
        return _strict(data, "utf-8-sig")
    try:
        return data.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        pass
    # The sample starts where the letters that tell code pages apart do: a file may open with
    # thousands of ASCII-only rows.
    first = _NON_ASCII.search(data)
    start = max(0, first.start() - 1024) if first else 0
    best = from_bytes(data[start : start + _DETECTION_SAMPLE], cp_isolation=list(LEGACY_CODE_PAGES)).best()
    return _strict(data, best.encoding if best else LEGACY_CODE_PAGES[0])


def _longest_line(data: bytes) -> int:
    """Bytes in the longest line: at least as many as its characters in any encoding we read."""
    newlines = np.flatnonzero(np.frombuffer(data, dtype=np.uint8) == ord("\n"))
    return int(np.diff(newlines, prepend=-1, append=len(data)).max())


def _strict(data: bytes, encoding: str) -> tuple[str, str] | Refusal:
    try:
        return data.decode(encoding), encoding
    except UnicodeDecodeError as exc:
        return Refusal(
            "unknown text encoding",
            f"not UTF-8, UTF-16, Windows-1251 or Windows-1252 (byte {exc.start} does not decode as {encoding}); save the file as CSV UTF-8",
        )


def _delimiter(text: str, index: dict[str, str]) -> tuple[str, str, int]:
    """The delimiter, the text without Excel's ``sep=`` line (Excel does not show it as a row)
    and how many lines that took off the top."""
    declared = _EXCEL_SEP_LINE.match(text)
    if declared:
        return declared.group(1), text[declared.end():], 1
    end = text.find("\n")
    first_line = text[: end if end >= 0 else len(text)]

    def score(delimiter: str) -> tuple[int, int]:
        cells = next(csv.reader([first_line], delimiter=delimiter), [])
        return sum(header_key(cell) in index for cell in cells), len(cells)

    return max(DELIMITERS, key=score), text, 0


def _parse(text: str, delimiter: str, first_line: int, longest_line: int) -> tuple[list[str], pd.DataFrame, list[int] | None] | Refusal:
    """The header, the data records as a frame of text (``None`` where a record is short) and, when
    some record spans several lines, the file line each record starts on (``None`` when every
    record is one line: record ``i`` is on line ``first_line + i``). Refusals for what breaks the
    parser or the limits; ``longest_line`` (an upper bound of any line's length) spares looking
    for an overlong cell in a file that cannot have one.

    A file without a single quote can have no quoting problem and no multi-line cell, so pandas'
    C parser reads it (as fast as a plain ``read_csv``); a record with more cells than the header
    stops it, and then the strict reader below says which. Files with quotes go to the strict
    reader straight away: pandas accepts a broken quote without a word.
    """
    if '"' not in text:
        try:
            table = pd.read_csv(io.StringIO(text), sep=delimiter, header=None, dtype=object, na_filter=False,
                                skip_blank_lines=False, quoting=csv.QUOTE_NONE, engine="c")
        except pd.errors.ParserError:
            pass
        else:
            too_large = _too_large_cell(longest_line, table.itertuples(index=False, name=None), None, first_line)
            return too_large or (table.iloc[0].tolist(), table.iloc[1:].reset_index(drop=True), None)
    return _parse_strictly(text, delimiter, first_line, longest_line)


def _parse_strictly(text: str, delimiter: str, first_line: int, longest_line: int) -> tuple[list[str], pd.DataFrame, list[int] | None] | Refusal:
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    records: list[list[str]] = []
    try:
        records.extend(reader)  # keeps the records read before an error
    except csv.Error as exc:
        message, row = str(exc), len(records) + 1  # the record being read: header = row 1
        start = _start_lines(records + [[]], first_line)[-1]
        if "field larger than field limit" in message:
            return _too_large(start, row)
        if "unexpected end of data" in message:
            return Refusal("unterminated quote", f"a quote opened in the record starting on line {start} is never closed", row)
        return Refusal(
            "malformed quote",
            f"line {reader.line_num + first_line - 1}: {message} (a quote inside a quoted cell must be doubled: \"\")",
            row,
        )
    lines = text.count("\n") + (not text.endswith("\n"))
    starts = _start_lines(records, first_line) if lines != len(records) else None
    body = pd.DataFrame(records[1:], dtype=object).fillna("")  # short records: "" like pandas' padding
    return _too_large_cell(longest_line, records, starts, first_line) or (records[0], body, starts)


def _too_large_cell(longest_line: int, records: Iterable[Sequence[str]], starts: list[int] | None, first_line: int) -> Refusal | None:
    """The refusal of the first cell over ``MAX_CELL_CHARS``; only a file with a line that long
    (or with multi-line cells) is searched cell by cell."""
    if starts is None and longest_line <= MAX_CELL_CHARS:
        return None
    for position, cells in enumerate(records):
        if any(len(cell) > MAX_CELL_CHARS for cell in cells):
            return _too_large(starts[position] if starts else first_line + position, position + 1)
    return None


def _start_lines(records: list[list[str]], first_line: int) -> list[int]:
    """The file line each record starts on: a record takes one line plus one per newline in its cells."""
    starts, line = [], first_line
    for cells in records:
        starts.append(line)
        line += 1 + sum(cell.count("\n") for cell in cells)
    return starts


def _too_large(line: int, row: int) -> Refusal:
    return Refusal(
        "cell too large",
        f"a cell in the record starting on line {line} is longer than {MAX_CELL_CHARS} characters"
        " (a quote that is never closed makes one too)",
        row,
    )


def _columns(header: list[str], index: dict[str, str], delimiter: str) -> tuple[list[str | None], dict[str, str], tuple[str, ...]] | Refusal:
    """Our name for each header cell (``None``: not ours), the renames, the ignored headers."""
    names: list[str | None] = []
    seen: dict[str, str] = {}
    for cell in header:
        name = index.get(header_key(cell))
        if name in seen:
            return Refusal("column given twice", f"{seen[name]!r} and {cell!r} both mean {name}", row=1)
        if name:
            seen[name] = cell
        names.append(name)
    as_read = f"read with the {DELIMITERS.get(delimiter, repr(delimiter))} as delimiter, the header is {_shown(delimiter.join(header))}"
    if not seen:
        return Refusal("no known column", f"{as_read}; expected columns such as external_id, phone, email (or Телефон, E-mail, Имя)", row=1)
    missing = [column for column in CSV_COLUMNS if column not in seen]
    if missing:
        return Refusal("missing columns", f"{', '.join(missing)} not found; {as_read}", row=1)
    renamed = {cell: name for name, cell in seen.items() if cell != name}
    ignored = tuple(cell or f"(column {position + 1}, no name)" for position, (cell, name) in enumerate(zip(header, names)) if not name)
    return names, renamed, ignored


def _shown(text: str, limit: int = 200) -> str:
    text = text if len(text) <= limit else text[:limit] + f"… ({len(text)} characters)"
    return repr(text)


def _records(body: pd.DataFrame, starts: list[int] | None, names: list[str | None], delimiter: str) -> tuple[pd.DataFrame, list[int], list[dict]]:
    """Our columns of every readable record and its spreadsheet row (data record ``i`` is row
    ``i + 2``); blank lines are skipped, keeping their row numbers; records that cannot be one row
    are problems."""
    width = len(names)
    if body.empty:
        return pd.DataFrame(columns=[name for name in names if name], dtype=object), [], []
    body = body.reindex(columns=range(max(width, body.shape[1])), fill_value="")  # a header wider than every record
    maybe_blank = body[0].eq("")  # one column first: blank lines are rare, comparing every cell is not free
    blank = maybe_blank.copy()
    blank[maybe_blank] = body[maybe_blank].eq("").all(axis=1)
    problems: dict[int, str] = {}
    if body.shape[1] > width:
        for position in body.index[body.iloc[:, width:].ne("").any(axis=1)]:
            cells = body.iloc[position].tolist()
            problems[int(position)] = f"{max(i for i, cell in enumerate(cells) if cell) + 1} cells, the header has {width}"
    problems |= _swallowed(body, starts, width, delimiter)
    good = ~blank & ~body.index.isin(list(problems))
    keep = [position for position, name in enumerate(names) if name]
    frame = body.loc[good, keep].fillna("").set_axis([names[position] for position in keep], axis=1).reset_index(drop=True)
    rows = [int(position) + 2 for position in body.index[good]]
    return frame, rows, [{"row": position + 2, "column": "", "value": "", "reason": reason} for position, reason in sorted(problems.items())]


def _swallowed(body: pd.DataFrame, starts: list[int] | None, width: int, delimiter: str) -> dict[int, str]:
    """Multi-line records whose later lines look like records of their own (about half the header's
    delimiters): a stray quote swallowed them. Keyed by position among the data records."""
    if starts is None:
        return {}
    found = {}
    at_least = max(2, (width - 1) // 2)
    for position, (first, following) in enumerate(zip(starts[1:], [*starts[2:], None])):
        cells = body.iloc[position].tolist()
        last = following - 1 if following is not None else first + sum(cell.count("\n") for cell in cells)
        if last > first and any(line.count(delimiter) >= at_least for cell in cells for line in cell.split("\n")[1:]):
            found[position] = (
                f"lines {first}–{last} were read as one record: a quote opened in this row is closed"
                f" only on line {last} (a stray \" in a cell?)"
            )
    return found
