"""Operator-facing Markdown tables for Dagster metadata."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any


def _cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[Any]], *, empty: str = "None.") -> str:
    """Render rows as a GitHub-flavoured Markdown table (pipes and newlines escaped).

    Without rows it returns ``empty`` in italics instead: a header over nothing renders as an
    empty, broken-looking table in the UI, where a sentence says plainly that there is nothing.
    """
    rows = list(rows)
    if not rows:
        return f"_{empty}_"
    lines = ["| " + " | ".join(map(_cell, headers)) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(map(_cell, row)) + " |" for row in rows]
    return "\n".join(lines)
