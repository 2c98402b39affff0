"""Reports: the chDB bridge, the dbt translator, funnel rendering, and one real dbt build on chDB."""

from __future__ import annotations

import csv
import json
import os
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import dagster as dg
import pytest

from orchestrator_assets.reports import (
    GROUP,
    ReportsTranslator,
    campaign_funnel_export,
    read_funnel,
    warehouse_reports,
)
from orchestrator_assets.reports.formatting import FUNNEL_COLUMNS, funnel_csv, funnel_html, funnel_markdown, unknown_notes
from resources import chdb_bridge
from resources.dbt import MANIFEST_PATH, DbtExecutableNotFound, dbt_executable, make_dbt_resource
from resources.settings import SettingsError
from resources.warehouse import Warehouse


@pytest.fixture
def algor_home(monkeypatch, tmp_path):
    """Embedded settings rooted in tmp_path, whatever ALGOR_* the outer environment has."""
    for key in [k for k in os.environ if k.startswith("ALGOR_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("ALGOR_HOME", str(tmp_path))
    return tmp_path


# --------------------------------------------------------------------------------------------
# Bridge: the dbt profile's env is derived from the one warehouse DSN.


def test_profile_env_for_chdb_passes_the_dsn_as_host():
    env = chdb_bridge.profile_env("chdb:///srv/algor/warehouse", "embedded")
    assert env == {"ALGOR_DBT_TARGET": "embedded", "ALGOR_DBT_CHDB_HOST": "chdb:///srv/algor/warehouse"}


def test_profile_env_for_server_dsn_splits_credentials():
    env = chdb_bridge.profile_env("https://rep%40orts:s3cr%3At@ch.example.com:8443/algor", "server")
    assert env == {
        "ALGOR_DBT_TARGET": "server",
        "ALGOR_DBT_HOST": "ch.example.com",
        "ALGOR_DBT_PORT": "8443",
        "ALGOR_DBT_USER": "rep@orts",
        "ALGOR_DBT_PASSWORD": "s3cr:t",
        "ALGOR_DBT_SECURE": "True",
    }
    plain = chdb_bridge.profile_env("http://ch:8123", "server")
    assert (plain["ALGOR_DBT_PORT"], plain["ALGOR_DBT_USER"], plain["ALGOR_DBT_SECURE"]) == ("8123", "default", "False")


def test_profile_env_rejects_unknown_scheme_without_leaking_password():
    with pytest.raises(SettingsError) as err:
        chdb_bridge.profile_env("postgres://u:hunter2@db/x", "server")
    assert "hunter2" not in str(err.value)


def test_export_profile_env_respects_variables_already_set(algor_home):
    environ = {"ALGOR_DBT_CHDB_HOST": "chdb:///explicit"}
    exported = chdb_bridge.export_profile_env(environ)
    assert environ["ALGOR_DBT_CHDB_HOST"] == "chdb:///explicit"
    assert "ALGOR_DBT_CHDB_HOST" not in exported
    assert environ["ALGOR_DBT_TARGET"] == "embedded"
    assert set(exported) == {"ALGOR_DBT_TARGET"}


def test_dbt_executable_fails_clearly_when_not_installed(monkeypatch, tmp_path):
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(DbtExecutableNotFound, match="pip install -e"):
        dbt_executable()


# --------------------------------------------------------------------------------------------
# Translator


def _manifest() -> dict:
    return json.loads(MANIFEST_PATH.read_text())


def test_translator_puts_every_model_under_reports():
    manifest = _manifest()
    translator = ReportsTranslator()
    models = {uid: n for uid, n in manifest["nodes"].items() if n["resource_type"] == "model"}
    assert {n["name"] for n in models.values()} >= {"stg_events", "campaign_funnel"}
    for uid, node in models.items():
        spec = translator.get_asset_spec(manifest, uid, None)
        assert spec.key == dg.AssetKey(["reports", node["name"]])
        assert translator.get_asset_key(node) == spec.key
        assert spec.group_name == GROUP == "reports"
        assert spec.description and spec.description.startswith("Grain:")


def test_translator_keeps_source_key_from_meta_and_wires_lineage():
    specs = warehouse_reports.specs_by_key
    stg = specs[dg.AssetKey(["reports", "stg_events"])]
    funnel = specs[dg.AssetKey(["reports", "campaign_funnel"])]
    assert {d.asset_key for d in stg.deps} == {dg.AssetKey(["sends", "campaign_sends"]), dg.AssetKey(["deliveries", "delivery_events"])}
    assert {d.asset_key for d in funnel.deps} == {dg.AssetKey(["reports", "stg_events"]), dg.AssetKey(["reports", "provider_capabilities"])}
    assert {s.group_name for s in specs.values()} == {GROUP}
    export_deps = {dep.asset_key for spec in campaign_funnel_export.specs for dep in spec.deps}
    assert export_deps == {dg.AssetKey(["reports", "campaign_funnel"])}
    assert campaign_funnel_export.key == dg.AssetKey(["reports", "campaign_funnel_export"])
    check_names = {k.name for k in warehouse_reports.check_keys}
    assert "unique_stg_events_event_uid" in check_names
    assert any(n.startswith("unique_combination_of_columns_campaign_funnel") for n in check_names)


def test_translator_takes_the_other_writers_of_a_source_from_its_meta():
    manifest = _manifest()
    (source,) = manifest["sources"].values()
    source["meta"]["algor"]["other_writers"] = [["elsewhere", "writer"], ["elsewhere", "writer"]]
    reader = next(uid for uid, node in manifest["nodes"].items() if source["unique_id"] in node["depends_on"].get("nodes", []))
    spec = ReportsTranslator().get_asset_spec(manifest, reader, None)
    assert [d.asset_key for d in spec.deps] == [dg.AssetKey(["sends", "campaign_sends"]), dg.AssetKey(["elsewhere", "writer"])]


# --------------------------------------------------------------------------------------------
# Rendering

ROWS = [
    dict(tenant="acme", campaign="spring|sale", channel="email", attempted=4, accepted=3, delivered=2, opened=1,
         clicked=1, refused=1, undelivered=1, complained=0, unsubscribed=1, delivery_rate=0.6667, click_rate=0.3333),
    # Telegram sends no delivery receipts: the mart leaves delivery null (unknown).
    dict(tenant="acme", campaign="spring|sale", channel="telegram", attempted=5, accepted=4, delivered=None, opened=0,
         clicked=2, refused=1, undelivered=None, complained=0, unsubscribed=0, delivery_rate=None, click_rate=0.5),
    dict(tenant="<globex>", campaign="spring", channel="sms", attempted=1, accepted=0, delivered=0, opened=0,
         clicked=0, refused=1, undelivered=0, complained=0, unsubscribed=0, delivery_rate=None, click_rate=None),
]


def test_funnel_markdown_is_a_table_with_percentages():
    md = funnel_markdown(ROWS).splitlines()
    assert md[0].startswith("| tenant | campaign | channel | attempted | accepted | delivered | opened | clicked | refused | undelivered |")
    assert "spring\\|sale" in md[2]  # pipes escaped
    assert "&lt;globex&gt;" in md[4]  # no raw HTML from user-provided names
    assert md[2] == "| acme | spring\\|sale | email | 4 | 3 | 2 | 1 | 1 | 1 | 1 | 0 | 1 | 66.67% | 33.33% |"
    assert funnel_markdown([]) == "_No campaign events in the warehouse yet._"


def test_funnel_markdown_shows_unknown_delivery_as_unknown_and_says_why():
    md = funnel_markdown(ROWS)
    lines = md.splitlines()
    # delivered, undelivered and the delivery rate are unknown, never 0 % or 100 %
    assert lines[3] == "| acme | spring\\|sale | telegram | 5 | 4 | — | 0 | 2 | 1 | — | 0 | 0 | — | 50.00% |"
    assert lines[4].endswith("| — | — |")  # nothing accepted: no rate to give
    notes = lines[len(ROWS) + 2:]
    assert "_— delivery unknown on telegram: the provider sends no delivery receipts, so only acceptance by the provider is known._" in notes
    assert "_— rate with nothing accepted: there is nothing to divide by._" in notes
    assert unknown_notes(ROWS[:1]) == []  # nothing unknown, nothing to explain


def test_funnel_csv_round_trips_with_unknowns_as_empty_fields():
    parsed = list(csv.DictReader(funnel_csv(ROWS).splitlines()))
    assert tuple(parsed[0]) == FUNNEL_COLUMNS
    assert parsed[0]["campaign"] == "spring|sale" and parsed[0]["delivery_rate"] == "0.6667"
    telegram = parsed[1]
    assert (telegram["accepted"], telegram["delivered"], telegram["undelivered"], telegram["delivery_rate"]) == ("4", "", "", "")
    assert telegram["click_rate"] == "0.5"


def test_funnel_html_is_self_contained_and_escaped():
    page = funnel_html(ROWS, generated_at="2025-01-01 00:00 UTC")
    assert page.startswith("<!doctype html>")
    assert "<script" not in page and "http" not in page
    assert "&lt;globex&gt;" in page and "<globex>" not in page
    assert page.count('class="chart"') == len(ROWS)
    assert "width:50.0%" in page  # delivered 2 of 4 attempted (scaled to the largest stage)
    assert "rates are relative to accepted" in page
    assert "No campaign events" in funnel_html([])


def test_funnel_html_draws_no_bar_for_unknown_delivery():
    page = funnel_html(ROWS[1:2])
    chart = page[page.index('class="chart"'):]
    delivered = chart[chart.index(">delivered<"):chart.index(">opened<")]
    assert "width:0.0%" in delivered and "n/a (no receipts)" in delivered
    table = page[page.index("<table>"):page.index("</table>")]
    assert table.count("<td class=\"n\">—</td>") == 3  # delivered, undelivered, delivery rate
    assert "delivery unknown on telegram" in page


# --------------------------------------------------------------------------------------------
# One real run: append events to chDB, dbt build through algor-dbt, export.

T0 = datetime(2025, 3, 1, 9, 0, tzinfo=timezone.utc)
PROVIDERS = {"email": "mailgun", "sms": "smsc", "telegram": "telegram"}


def _event(tenant, event_id, event_type, send_id, campaign="spring", channel="email", minutes=0):
    return [tenant, event_id, event_type, send_id, campaign, channel, PROVIDERS[channel], 1, f"pm-{send_id}", "",
            T0 + timedelta(minutes=minutes)]


def _events() -> tuple[list, list]:
    acme = [
        _event("acme", "s1", "sent", "s1"),
        _event("acme", "s2", "sent", "s2"),
        _event("acme", "s3", "sent", "s3"),
        _event("acme", "s4", "send_failed", "s4"),
        _event("acme", "d1", "delivered", "s1", minutes=1),
        _event("acme", "d2", "delivered", "s2", minutes=1),
        _event("acme", "f3", "delivery_failed", "s3", minutes=1),
        _event("acme", "o1", "opened", "s1", minutes=2),
        _event("acme", "c1", "clicked", "s1", minutes=3),
        _event("acme", "c1b", "clicked", "s1", minutes=4),  # second click on the same send
        _event("acme", "u2", "unsubscribed", "s2", minutes=5),
        _event("acme", "s5", "sent", "s5", channel="sms"),
        _event("acme", "d5", "delivered", "s5", channel="sms", minutes=1),
        # Telegram: accepted, refused, a button press, and the `delivered` that older code
        # appended on acceptance, which must not turn into a delivery now.
        _event("acme", "t1", "sent", "t1", channel="telegram"),
        _event("acme", "t2", "sent", "t2", channel="telegram"),
        _event("acme", "t3", "send_failed", "t3", channel="telegram"),
        _event("acme", "t1", "delivered", "t1", channel="telegram"),
        _event("acme", "tc2", "clicked", "t2", channel="telegram", minutes=2),
    ]
    # Same campaign name and the same event/send ids as acme: tenants must never mix.
    globex = [
        _event("globex", "s1", "sent", "s1"),
        _event("globex", "s2", "sent", "s2"),
        _event("globex", "d1", "delivered", "s1", minutes=1),
        _event("globex", "c2", "clicked", "s2", minutes=2),
        _event("globex", "x2", "complained", "s2", minutes=3),
    ]
    return acme, globex


EXPECTED = {
    ("acme", "spring", "email"): dict(attempted=4, accepted=3, delivered=2, opened=1, clicked=1, refused=1, undelivered=1,
                                      complained=0, unsubscribed=1, delivery_rate=0.6667, click_rate=0.3333),
    ("acme", "spring", "sms"): dict(attempted=1, accepted=1, delivered=1, opened=0, clicked=0, refused=0, undelivered=0,
                                    complained=0, unsubscribed=0, delivery_rate=1.0, click_rate=0.0),
    ("acme", "spring", "telegram"): dict(attempted=3, accepted=2, delivered=None, opened=0, clicked=1, refused=1, undelivered=None,
                                         complained=0, unsubscribed=0, delivery_rate=None, click_rate=0.5),
    ("globex", "spring", "email"): dict(attempted=2, accepted=2, delivered=1, opened=0, clicked=1, refused=0, undelivered=0,
                                        complained=1, unsubscribed=0, delivery_rate=0.5, click_rate=0.5),
}


def test_dbt_build_and_export_on_chdb(algor_home):
    warehouse = Warehouse()
    acme, globex = _events()
    warehouse.append_events(acme + globex)
    # Retries re-append events in later inserts: same ids, later ingested_at.
    warehouse.append_events([acme[0], acme[4], acme[8], globex[0]])
    warehouse.append_events([acme[0]])

    result = dg.materialize(
        [warehouse_reports, campaign_funnel_export],
        resources={"dbt": make_dbt_resource(), "warehouse": warehouse},
    )
    assert result.success

    materialized = {m.asset_key for m in result.get_asset_materialization_events()}
    assert materialized == {
        dg.AssetKey(["reports", "provider_capabilities"]),
        dg.AssetKey(["reports", "stg_events"]),
        dg.AssetKey(["reports", "campaign_funnel"]),
        dg.AssetKey(["reports", "campaign_funnel_export"]),
    }
    checks = result.get_asset_check_evaluations()
    assert {c.check_name for c in checks} == {k.name for k in warehouse_reports.check_keys}
    assert all(c.passed for c in checks), [c.check_name for c in checks if not c.passed]

    rows = read_funnel(warehouse)
    got = {(r["tenant"], r["campaign"], r["channel"]): {k: r[k] for k in FUNNEL_COLUMNS[3:]} for r in rows}
    assert got == EXPECTED

    with warehouse.client() as client:
        distinct = client.query("select count() from algor_reports.stg_events").result_rows[0][0]
    assert distinct == len(acme) + len(globex)

    reports = algor_home / "reports"
    csv_rows = list(csv.DictReader((reports / "campaign_funnel.csv").read_text().splitlines()))
    assert [(r["tenant"], r["channel"], r["attempted"], r["accepted"], r["delivered"]) for r in csv_rows] == [
        ("acme", "email", "4", "3", "2"), ("acme", "sms", "1", "1", "1"), ("acme", "telegram", "3", "2", ""), ("globex", "email", "2", "2", "1")
    ]
    page = (reports / "campaign_funnel.html").read_text()
    assert "Tenant acme" in page and "Tenant globex" in page
    assert "delivery unknown on telegram" in page

    export = result.asset_materializations_for_node("reports__campaign_funnel_export")[0]
    funnel = export.metadata["funnel"].value
    assert "| acme | spring | email | 4 | 3 | 2 | 1 | 1 | 1 | 1 | 0 | 1 | 66.67% | 33.33% |" in funnel
    assert "| acme | spring | telegram | 3 | 2 | — | 0 | 1 | 1 | — | 0 | 0 | — | 50.00% |" in funnel
    assert (export.metadata["attempted"].value, export.metadata["accepted"].value) == (10, 8)
    assert Path(export.metadata["csv_path"].value) == reports / "campaign_funnel.csv"
