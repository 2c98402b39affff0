"""Pure rendering of the campaign funnel: Markdown for Dagster metadata, CSV and HTML files.

A null in the mart means unknown (delivery on a provider without delivery receipts, a rate with
nothing accepted): Markdown and HTML show it as "—" with a note saying why, the CSV as an empty
field, so no reader mistakes it for 0 % or 100 %.
"""

from __future__ import annotations

import csv
import html
import io
from collections.abc import Mapping, Sequence
from itertools import groupby
from typing import Any

# Column order of the campaign_funnel mart (and of every rendering of it).
FUNNEL_COLUMNS: tuple[str, ...] = (
    "tenant",
    "campaign",
    "channel",
    "attempted",
    "accepted",
    "delivered",
    "opened",
    "clicked",
    "refused",
    "undelivered",
    "complained",
    "unsubscribed",
    "delivery_rate",
    "click_rate",
)
RATE_COLUMNS = ("delivery_rate", "click_rate")
UNKNOWN = "—"
UNKNOWN_STAGE = "n/a (no receipts)"
# Stages drawn as bars, each with its colour: the funnel, then the two ways a send is lost.
BAR_STAGES: tuple[tuple[str, str], ...] = (
    ("attempted", "#9ecae9"),
    ("accepted", "#4c78a8"),
    ("delivered", "#54a24b"),
    ("opened", "#72b7b2"),
    ("clicked", "#f58518"),
    ("refused", "#e45756"),
    ("undelivered", "#b279a2"),
)

FunnelRow = Mapping[str, Any]


def _percent(value: Any) -> str:
    return f"{float(value) * 100:.2f}%"


def _cell(column: str, value: Any) -> str:
    if value is None:
        return UNKNOWN
    if column in RATE_COLUMNS:
        return _percent(value)
    return str(value)


def unknown_notes(rows: Sequence[FunnelRow]) -> list[str]:
    """Why cells read "—": one sentence per cause present in ``rows`` (none when all is known)."""
    notes = []
    blind = sorted({str(row["channel"]) for row in rows if row["delivered"] is None})
    if blind:
        notes.append(
            f"{UNKNOWN} delivery unknown on {', '.join(blind)}: the provider sends no delivery receipts, "
            "so only acceptance by the provider is known."
        )
    if any(not row["accepted"] for row in rows):
        notes.append(f"{UNKNOWN} rate with nothing accepted: there is nothing to divide by.")
    return notes


def funnel_markdown(rows: Sequence[FunnelRow]) -> str:
    """A Markdown table of the funnel (rates as percentages, unknowns explained below it); a short
    note when there are no rows."""
    if not rows:
        return "_No campaign events in the warehouse yet._"
    header = "| " + " | ".join(c.replace("_", " ") for c in FUNNEL_COLUMNS) + " |"
    align = "|" + "|".join(":--" if i < 3 else "--:" for i in range(len(FUNNEL_COLUMNS))) + "|"
    lines = [header, align]
    for row in rows:
        # campaign names are user input: no raw HTML or table breaks in the rendered Markdown
        cells = (html.escape(_cell(c, row[c]), quote=False).replace("|", "\\|") for c in FUNNEL_COLUMNS)
        lines.append("| " + " | ".join(cells) + " |")
    for note in unknown_notes(rows):
        lines += ["", f"_{html.escape(note, quote=False)}_"]
    return "\n".join(lines)


def funnel_csv(rows: Sequence[FunnelRow]) -> str:
    """CSV text with a header row; rates are kept as fractions and unknowns as empty fields
    (machine readable: spreadsheets and pandas read them as missing, not as 0)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(FUNNEL_COLUMNS)
    for row in rows:
        writer.writerow([row[c] for c in FUNNEL_COLUMNS])
    return buffer.getvalue()


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem; color: #222; }
h1 { font-size: 1.4rem; } h2 { font-size: 1.15rem; margin-top: 2rem; }
table { border-collapse: collapse; margin: .5rem 0 1rem; }
th, td { border: 1px solid #ddd; padding: .3rem .6rem; }
th { background: #f4f4f4; text-align: left; } td.n { text-align: right; }
.chart { margin: .75rem 0 1.25rem; } .chart h3 { font-size: .95rem; margin: .25rem 0; }
.bar-row { display: flex; align-items: center; margin: 2px 0; font-size: .85rem; }
.bar-label { width: 7rem; } .bar-track { display: inline-block; width: 24rem; background: #f0f0f0; }
.bar { display: block; height: 1rem; } .bar-value { margin-left: .5rem; }
.note { font-size: .85rem; color: #555; }
""".strip()


def _table(rows: Sequence[FunnelRow]) -> str:
    head = "".join(f"<th>{html.escape(c.replace('_', ' '))}</th>" for c in FUNNEL_COLUMNS[1:])
    body = []
    for row in rows:
        cells = []
        for c in FUNNEL_COLUMNS[1:]:
            numeric = c not in ("campaign", "channel")
            css = ' class="n"' if numeric else ""
            cells.append(f"<td{css}>{html.escape(_cell(c, row[c]))}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _chart(row: FunnelRow) -> str:
    """Bars scaled to the largest stage; an unknown stage gets no bar, and says so."""
    scale = max([int(row[stage]) for stage, _ in BAR_STAGES if row[stage] is not None] + [1])
    title = html.escape(f"{row['campaign']} · {row['channel']}")
    bars = []
    for stage, colour in BAR_STAGES:
        count = row[stage]
        width = 0.0 if count is None else round(100 * int(count) / scale, 1)
        value = UNKNOWN_STAGE if count is None else str(int(count))
        bars.append(
            '<div class="bar-row">'
            f'<span class="bar-label">{stage}</span>'
            f'<span class="bar-track"><span class="bar" style="width:{width}%;background:{colour}"></span></span>'
            f'<span class="bar-value">{value}</span>'
            "</div>"
        )
    return f'<div class="chart"><h3>{title}</h3>{"".join(bars)}</div>'


def funnel_html(rows: Sequence[FunnelRow], *, generated_at: str = "") -> str:
    """A self-contained HTML page: per tenant, a table and a CSS bar chart per campaign × channel.

    No JavaScript, no external assets; every value is HTML-escaped.
    """
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        "<title>Campaign funnel</title>",
        f"<style>{_STYLE}</style></head><body>",
        "<h1>Campaign funnel</h1>",
    ]
    if generated_at:
        parts.append(f"<p>Generated {html.escape(generated_at)}. Counts are distinct sends per stage; rates are relative to accepted.</p>")
    if not rows:
        parts.append("<p>No campaign events in the warehouse yet.</p>")
    ordered = sorted(rows, key=lambda r: (str(r["tenant"]), str(r["campaign"]), str(r["channel"])))
    for tenant, tenant_rows in groupby(ordered, key=lambda r: str(r["tenant"])):
        tenant_rows = list(tenant_rows)
        parts.append(f"<section><h2>Tenant {html.escape(tenant)}</h2>")
        parts.append(_table(tenant_rows))
        parts.extend(f'<p class="note">{html.escape(note)}</p>' for note in unknown_notes(tenant_rows))
        parts.extend(_chart(row) for row in tenant_rows)
        parts.append("</section>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
