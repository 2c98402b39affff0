"""Templates in real Dagster runs on a real store: the campaign renders by language with its 38-FZ
marking and records the versions it pins; an unmarked advertising campaign fails to start; the
preview job shows every channel and writes nothing."""

from __future__ import annotations

import datetime as dt
import shutil

import dagster as dg
import pytest
import sqlalchemy as sa
import yaml

import sealed
from conftest import DEPLOYMENT_VARS
from consents import record
from definitions import defs
from orchestrator_assets.campaigns import campaign_messages
from orchestrator_assets.message_templates import message_templates
from policies import loader
from resources.opstore import OperationalStore
from resources.opstore_schema import metadata as store_metadata
from resources.opstore_schema import segment_members, template_versions

NOW = dt.datetime.now(dt.UTC)
CONTACTS = {"ru": ("Иван", "ivan@example.ru"), "en": ("Keith", "keith@example.org"), None: ("Олег", "oleg@example.ru")}


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    """(store, home): the demo tenant with a Russian, an English and a language-less contact, all in
    the e-mail segment with consent; shared by the module (each test compares before and after)."""
    with pytest.MonkeyPatch.context() as patch:
        for name in DEPLOYMENT_VARS:
            patch.delenv(name, raising=False)
        home = tmp_path_factory.mktemp("templates") / "algor"
        patch.setenv("ALGOR_HOME", str(home))
        opstore = OperationalStore()
        opstore.migrate()
        with opstore.engine().begin() as conn:
            for language, (name, email) in CONTACTS.items():
                contact = sealed.add_contact(conn, "demo", f"c-{language}", NOW, first_name=name, email=email, language=language)
                conn.execute(sa.insert(segment_members).values(tenant="demo", segment="everyone_with_email", contact_id=contact, materialized_at=NOW))
                record(conn, "demo", contact, "email", "grant", NOW - dt.timedelta(days=1))
        yield opstore, home


@pytest.fixture
def store(deployment):
    return deployment[0]


def _counts(opstore: OperationalStore) -> dict[str, int]:
    with opstore.engine().connect() as conn:
        return {table.name: conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one() for table in store_metadata.sorted_tables}


def _materialize(instance, opstore, *assets) -> dg.ExecuteInProcessResult:
    return dg.materialize(list(assets), partition_key="demo", instance=instance, resources={"opstore": opstore}, raise_on_error=False)


def _demo_config(tmp_path, monkeypatch, edit) -> None:
    """Load the policy files from a copy of the demo's, its campaigns.yaml changed by ``edit``."""
    config = shutil.copytree(loader.DEFAULT_CONFIG_DIR, tmp_path / "config")
    campaigns = yaml.safe_load((config / "campaigns.yaml").read_text(encoding="utf-8"))
    edit(campaigns["campaigns"][0])
    (config / "campaigns.yaml").write_text(yaml.safe_dump(campaigns, allow_unicode=True, sort_keys=False), encoding="utf-8")
    monkeypatch.setattr(loader, "DEFAULT_CONFIG_DIR", config)


def test_the_campaign_renders_each_contact_in_their_language_marked_and_pins_the_version(store, instance, tmp_path, monkeypatch):
    # Without the demo's A/B test, which would hold some of these three contacts back for its rollout.
    _demo_config(tmp_path, monkeypatch, lambda campaign: campaign.pop("experiment"))
    result = _materialize(instance, store, campaign_messages, message_templates)
    assert result.success
    messages = result.output_for_node("campaigns__campaign_messages")
    by_address = {row.address: row for row in messages.itertuples()}
    assert by_address["keith@example.org"].subject == "Keith, Black Friday: up to 50% off"
    assert by_address["ivan@example.ru"].subject == "Иван, Чёрная пятница: скидки до 50%"
    assert by_address["oleg@example.ru"].subject.startswith("Олег, Чёрная пятница")  # no language: the fallback
    for row in messages.itertuples():
        assert "Реклама. Рекламодатель: ООО «Ромашка», ИНН 7701234567. erid: 2VtzqvYkmGf" in row.text and "erid: 2VtzqvYkmGf" in row.html

    [materialized] = [e.materialization for e in result.get_asset_materialization_events() if e.asset_key.path[-1] == "campaign_messages"]
    by_language = materialized.metadata["messages_by_language"].value
    assert "| black_friday_2026 | email | en | 1 |" in by_language and "| black_friday_2026 | email | ru | 2 |" in by_language

    with store.engine().connect() as conn:
        seen = {(row.tenant, row.template, row.version): row.first_campaign for row in conn.execute(sa.select(template_versions))}
    assert seen[("demo", "black_friday", 1)] == "black_friday_2026"  # the campaign's start recorded the version it pins
    library = [e.materialization for e in result.get_asset_materialization_events() if e.asset_key.path[-1] == "message_templates"][0]
    assert "| black_friday | 1 | telegram: en, ru; email: en, ru | ru | discount: int = 50 |" in library.metadata["library"].value


def test_an_advertising_campaign_without_marking_fails_to_start_and_renders_nothing(store, instance, tmp_path, monkeypatch):
    _demo_config(tmp_path, monkeypatch, lambda campaign: campaign.pop("advertising"))
    before = _counts(store)

    result = _materialize(instance, store, campaign_messages)

    assert not result.success
    [failure] = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    message = failure.step_failure_data.error.message
    assert "campaign 'black_friday_2026' is advertising" in message and "erid" in message and "Nothing was sent" in message
    assert not result.get_asset_materialization_events()
    assert _counts(store) == before


def test_the_preview_shows_every_channel_by_language_masked_and_writes_nothing(deployment, instance):
    store, algor_home = deployment
    before = _counts(store)
    result = defs.resolve_job_def("template_preview_job").execute_in_process(
        run_config={"ops": {"template_preview": {"config": {"template": "black_friday", "version": 1, "sample_contacts": 3}}}},
        instance=instance,
        partition_key="demo",
    )
    assert result.success
    [output] = [e for e in result.all_node_events if e.event_type_value == "STEP_OUTPUT"]
    shown = output.event_specific_data.metadata
    table = shown["previews"].value
    assert table.count("| email |") == 3 and table.count("| telegram |") == 3
    texts = " ".join(value.value for key, value in shown.items() if key.startswith(("email_", "telegram_")) and not key.endswith("_html"))
    assert "K***, it's Black Friday at Romashka!" in texts and "И***, в «Ромашке» Чёрная пятница!" in texts  # masked names
    assert "Keith" not in texts and "Иван" not in texts
    html_files = [value.value for key, value in shown.items() if key.endswith("_html")]
    assert len(html_files) == 3 and all(path.startswith(str(algor_home / "previews")) for path in html_files)
    english = next(path for path in html_files if path.endswith("-en.html"))
    html = open(english, encoding="utf-8").read()
    assert "Up to <b>50%</b> off" in html and 'style="font-family: Arial, sans-serif;font-size: 12px;color: #666;"' in html  # CSS inlined
    assert _counts(store) == before
    assert not (algor_home / "warehouse").exists()
