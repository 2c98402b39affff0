"""Operator-facing Markdown tables: readable with rows, and a sentence instead of an empty table."""

from __future__ import annotations

from orchestrator_assets.sends.decisions import ambiguous_check_metadata
from orchestrator_assets.tables import markdown_table


def test_rows_render_as_a_table_with_pipes_and_newlines_escaped():
    table = markdown_table(["campaign", "why"], [("spring|sale", "line one\nline two")])
    assert table.splitlines() == ["| campaign | why |", "|---|---|", "| spring\\|sale | line one line two |"]


def test_no_rows_render_as_words_not_as_a_header_over_nothing():
    assert markdown_table(["send id", "why"], [], empty="No ambiguous sends.") == "_No ambiguous sends._"
    assert markdown_table(["send id", "why"], iter(())) == "_None._"  # any iterable, consumed once


def test_the_ambiguous_sends_check_says_in_words_when_nothing_waits():
    shown = ambiguous_check_metadata([])
    assert shown["ambiguous_in_ledger"] == 0
    assert "|" not in shown["ambiguous_sends"] and "No ambiguous sends" in shown["ambiguous_sends"]
