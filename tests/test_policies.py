"""Policy files: the shipped config, error reporting, segment SQL and template rendering."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import yaml
from pydantic import TypeAdapter

from orchestrator_assets.contact_pii import contact_columns
from orchestrator_assets.segment_behaviour import id_table
from orchestrator_assets.segment_sql import BehaviourSet, RuleScope, segment_where
from policies.campaigns import Campaign
from policies.channels import Channel, Provider
from policies.consent_purposes import CampaignPurpose
from policies.loader import (
    DEFAULT_CONFIG_DIR,
    PolicyError,
    load_bundle,
    load_campaigns,
    load_policy,
    load_segments,
    load_tenants,
)
from policies.rendering import TemplateRenderError, render_message
from policies.segments import Rule, behaviours
from policies.template_rendering import CampaignRenderer
from resources.opstore import register_sqlite_unicode_lower
from resources.opstore_schema import contacts, metadata
from resources.pii import TenantCipher

RULE = TypeAdapter(Rule)


# --- the shipped config ----------------------------------------------------------------------


def test_shipped_config_loads_and_cross_references_hold():
    bundle = load_bundle()

    assert set(bundle.tenants) == {"demo", "acme"}
    assert set(bundle.segments["demo"]) == {"moscow_spb_ru", "everyone_with_email"}
    for tenant, campaigns in bundle.campaigns.items():
        for campaign in campaigns.values():
            assert campaign.tenant == tenant
            assert campaign.segment in bundle.segments[tenant] or (campaign.segment is None and campaign.trigger is not None)
            assert campaign.purpose in (CampaignPurpose.ADVERTISING, CampaignPurpose.TRANSACTIONAL)
            for content in campaign.channels:
                assert bundle.tenants[tenant].accounts.for_channel(content.channel) is not None

    black_friday = bundle.campaigns["demo"]["black_friday_2026"]
    assert [c.channel for c in black_friday.channels] == [Channel.TELEGRAM, Channel.EMAIL]
    assert black_friday.step == "main"
    # The demo must be able to send as soon as it starts.
    assert black_friday.schedule.start_at <= datetime.now(UTC)
    assert bundle.campaigns["acme"]["spring_sale_2026"].channels[0].channel is Channel.EMAIL
    assert bundle.policy.requires_consent(Channel.TELEGRAM) and bundle.policy.requires_consent(Channel.EMAIL)


def test_single_file_loaders_default_to_the_package_config():
    assert DEFAULT_CONFIG_DIR == Path(__file__).resolve().parents[1] / "policies" / "config"
    assert load_tenants().tenants["demo"].accounts.mailgun.domain == "mg.demo.example.ru"
    assert load_segments().segments["acme"][0].name == "english_speakers_eu"
    assert {c.name for c in load_campaigns().campaigns} == {"black_friday_2026", "spring_sale_2026", "telegram_welcome"}
    assert load_policy().suppression.complaint_suppresses_all_channels is True


def test_accounts_hold_env_var_names_and_channels_map_to_providers():
    demo = load_tenants().tenants["demo"]
    assert demo.accounts.telegram.bot_token_env == "ALGOR_DEMO_TELEGRAM_BOT_TOKEN"
    assert all(name.startswith("ALGOR_DEMO_") for name in demo.accounts.env_names)
    assert demo.accounts.provider_for(Channel.TELEGRAM) is Provider.TELEGRAM
    assert demo.accounts.provider_for(Channel("email")) is Provider.MAILGUN
    assert demo.accounts.for_channel(Channel.EMAIL) is demo.accounts.mailgun


def test_a_tenant_chooses_which_provider_carries_a_channel():
    from policies.accounts import ChannelAccounts

    accounts = {
        "mailgun": {"domain": "mg.x.example.com", "api_key_env": "X_MG_KEY", "signing_key_env": "X_MG_SIGN", "sender": "x@mg.x.example.com"},
        "sendgrid": {"api_key_env": "X_SG_KEY", "webhook_public_key_env": "X_SG_PUB", "sender": "x@x.example.com"},
        "twilio": {"account_sid": "AC" + "0" * 32, "auth_token_env": "X_TW_TOKEN", "whatsapp_sender": "+14155238886"},
    }
    default = ChannelAccounts.model_validate(accounts)
    assert default.provider_for(Channel.EMAIL) is Provider.MAILGUN  # first in the channel's preference order
    assert default.provider_for(Channel.WHATSAPP) is Provider.TWILIO
    assert default.provider_for(Channel.SMS) is None  # twilio has no sms_sender
    chosen = ChannelAccounts.model_validate({**accounts, "channel_providers": {"email": "sendgrid"}})
    assert chosen.for_channel(Channel.EMAIL) is chosen.sendgrid
    with pytest.raises(ValueError, match="cannot carry email"):
        ChannelAccounts.model_validate({**accounts, "channel_providers": {"email": "twilio"}})
    with pytest.raises(ValueError, match="no vk account"):
        ChannelAccounts.model_validate({**accounts, "channel_providers": {"vk": "vk"}})


# --- bad files: file + key path + reason -----------------------------------------------------


@pytest.fixture
def config_dir(tmp_path: Path) -> Path:
    """A writable copy of the shipped config to break one file at a time."""
    target = tmp_path / "config"
    shutil.copytree(DEFAULT_CONFIG_DIR, target)
    return target


def _rewrite(path: Path, mutate) -> None:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    mutate(data)
    path.write_text(yaml.safe_dump(data, allow_unicode=True, sort_keys=False), encoding="utf-8")


def _email(data: dict[str, Any]) -> dict[str, Any]:
    """The inline e-mail of spring_sale_2026 (black_friday_2026 renders from the template library)."""
    return data["campaigns"][1]["channels"][0]


def _telegram(data: dict[str, Any]) -> dict[str, Any]:
    """The inline Telegram message of telegram_welcome."""
    return data["campaigns"][2]["channels"][0]


def _drop_acme_mailgun(data: dict[str, Any]) -> None:
    del data["tenants"]["acme"]["accounts"]["mailgun"]


BAD_EDITS = [
    pytest.param(
        "campaigns.yaml",
        lambda d: _email(d).update(subjcet="x"),
        "campaigns[1].channels[0].subjcet",
        "Extra inputs are not permitted",
        id="unknown key",
    ),
    pytest.param(
        "campaigns.yaml",
        lambda d: _email(d).pop("subject"),
        "campaigns[1].channels[0].subject",
        "email needs a subject",
        id="email without subject",
    ),
    pytest.param(
        "campaigns.yaml",
        lambda d: _telegram(d).update(subject="x"),
        "campaigns[2].channels[0].subject",
        "telegram messages have no subject",
        id="telegram with subject",
    ),
    pytest.param(
        "campaigns.yaml",
        lambda d: _email(d).update(text="Привет"),
        "campaigns[1].channels[0].text",
        "{{ unsubscribe_url }}",
        id="email without unsubscribe link",
    ),
    pytest.param(
        "campaigns.yaml",
        lambda d: _email(d).update(html="{% if %}{{ unsubscribe_url }}"),
        "campaigns[1].channels[0].html",
        "invalid Jinja2 template",
        id="bad jinja",
    ),
    pytest.param(
        "campaigns.yaml",
        lambda d: _telegram(d).update(text="я" * 4097),
        "campaigns[2].channels[0].text",
        "limit is 4096",
        id="telegram static text too long",
    ),
    pytest.param(
        "campaigns.yaml",
        lambda d: d["campaigns"][0]["channels"][0]["buttons"][0].update(callback_data="я" * 33),
        "campaigns[0].channels[0].buttons[0].callback_data",
        "66 bytes",
        id="callback_data over 64 bytes",
    ),
    pytest.param(
        "campaigns.yaml",
        lambda d: d["campaigns"][0]["channels"].append(_email(d)),
        "campaigns[0].channels",
        "['email'] listed more than once",
        id="duplicate channel",
    ),
    pytest.param(
        "campaigns.yaml",
        lambda d: d["campaigns"][0]["schedule"].update(start_at=datetime(2026, 11, 20, 9, 0)),
        "campaigns[0].schedule.start_at",
        "timezone info",
        id="naive start_at",
    ),
    pytest.param(
        "campaigns.yaml",
        lambda d: d["campaigns"][0].update(segment="nobody"),
        "campaigns[0].segment",
        "segment 'nobody' is not defined for tenant 'demo'",
        id="missing segment",
    ),
    pytest.param(
        "campaigns.yaml",
        lambda d: d["campaigns"][0].update(segment="english_speakers_eu"),
        "campaigns[0].segment",
        "not defined for tenant 'demo'",
        id="acme segment for demo",
    ),
    pytest.param(
        "campaigns.yaml",
        lambda d: d["campaigns"][0].update(tenant="globex"),
        "campaigns[0].tenant",
        "tenant 'globex' is not defined",
        id="unknown tenant",
    ),
    pytest.param(
        "campaigns.yaml",
        lambda d: d["campaigns"][1].update(purpose="processing"),
        "campaigns[1].purpose",
        "Input should be 'advertising' or 'transactional'",
        id="processing is no campaign purpose",
    ),
    pytest.param(
        "tenants.yaml",
        _drop_acme_mailgun,
        "campaigns[1].channels[0].channel",
        "tenant 'acme' has no account for channel email",
        id="channel without account",
    ),
    pytest.param(
        "segments.yaml",
        lambda d: d["segments"]["demo"][0]["rule"]["all"][0].update(op="like"),
        "segments.demo[0].rule.all[0].op",
        "Input should be 'eq'",
        id="bad rule op",
    ),
    pytest.param(
        "segments.yaml",
        lambda d: d["segments"]["demo"][0]["rule"]["all"][1]["any"][0].update(field="lang"),
        "segments.demo[0].rule.all[1].any[0].field",
        "(got 'lang')",
        id="bad rule field",
    ),
    pytest.param(
        "segments.yaml",
        lambda d: d["segments"]["demo"][1]["rule"].update(value="x"),
        "segments.demo[1].rule.value",
        "op is_set takes no value",
        id="is_set with value",
    ),
    pytest.param(
        "segments.yaml",
        lambda d: d["segments"]["acme"][0]["rule"]["all"][0].pop("value"),
        "segments.acme[0].rule.all[0].value",
        "op eq needs a value",
        id="eq without value",
    ),
    pytest.param(
        "segments.yaml",
        lambda d: d["segments"]["acme"][0]["rule"]["all"][0].update(value=False),
        "segments.acme[0].rule.all[0].value",
        "quote it in YAML",
        id="yaml boolean as language",
    ),
    pytest.param(
        "segments.yaml",
        lambda d: d["segments"]["demo"][0]["rule"]["all"][0].update(value="Москва"),
        "segments.demo[0].rule.all[0].value",
        "needs a non-empty list",
        id="in without list",
    ),
    pytest.param(
        "segments.yaml",
        lambda d: d["segments"]["demo"][1].update(rule="email is set"),
        "segments.demo[1].rule",
        "a rule is a mapping",
        id="rule is not a mapping",
    ),
    pytest.param(
        "segments.yaml",
        lambda d: d["segments"].update(globex=[]),
        "segments.globex",
        "tenant 'globex' is not defined",
        id="segments for unknown tenant",
    ),
    pytest.param(
        "tenants.yaml",
        lambda d: d["tenants"].update(Demo=d["tenants"].pop("acme")),
        "tenants.Demo (key)",
        "should match pattern",
        id="bad tenant id",
    ),
    pytest.param(
        "tenants.yaml",
        lambda d: d["tenants"]["demo"]["accounts"]["telegram"].update(bot_token_env="123456:AAE-secret"),
        "tenants.demo.accounts.telegram.bot_token_env",
        "NAME of an environment variable",
        id="secret value instead of env name",
    ),
    pytest.param(
        "tenants.yaml",
        lambda d: d["tenants"]["acme"]["accounts"]["mailgun"].update(api_key_env="ALGOR_DEMO_MAILGUN_API_KEY"),
        "tenants",
        "used by tenants 'demo' and 'acme'",
        id="shared secret between tenants",
    ),
    pytest.param(
        "tenants.yaml",
        lambda d: d["tenants"]["demo"].update(timezone="Moscow"),
        "tenants.demo.timezone",
        "unknown IANA timezone",
        id="unknown timezone",
    ),
    pytest.param(
        "campaigns.yaml",
        lambda d: d["campaigns"][0].update(trigger={"event": "telegram_start"}),
        "campaigns[0]",
        "exactly one of `schedule` (a start time) or `trigger` (an event), got both",
        id="schedule and trigger",
    ),
    pytest.param(
        "campaigns.yaml",
        lambda d: d["campaigns"][0].pop("schedule"),
        "campaigns[0]",
        "got neither",
        id="neither schedule nor trigger",
    ),
    pytest.param(
        "campaigns.yaml",
        lambda d: d["campaigns"][0].pop("segment"),
        "campaigns[0]",
        "a scheduled campaign needs a `segment`",
        id="scheduled campaign without segment",
    ),
    pytest.param(
        "campaigns.yaml",
        lambda d: d["campaigns"][2].update(trigger={"event": "telegram_join"}),
        "campaigns[2].trigger.event",
        "'telegram_start', 'vk_message_allow', 'import_finished', 'custom' or 'segment_entered'",
        id="unknown trigger event",
    ),
    pytest.param(
        "campaigns.yaml",
        lambda d: d["campaigns"][2].update(trigger={"event": "vk_message_allow"}),
        "campaigns[2].trigger.event",
        "vk_message_allow comes from vk, and tenant 'demo' has no vk account",
        id="trigger from a provider the tenant lacks",
    ),
    pytest.param(
        "policy.yaml",
        lambda d: d["suppression"].update(complaint_suppresses_all_channel=True),
        "suppression.complaint_suppresses_all_channel",
        "Extra inputs",
        id="policy typo",
    ),
]


@pytest.mark.parametrize(("file_name", "mutate", "key_path", "reason"), BAD_EDITS)
def test_bad_file_names_file_key_path_and_reason(config_dir: Path, file_name, mutate, key_path, reason):
    _rewrite(config_dir / file_name, mutate)

    with pytest.raises(PolicyError) as caught:
        load_bundle(config_dir)

    message = str(caught.value)
    expected_file = "campaigns.yaml" if key_path.startswith("campaigns") else file_name
    line = next((ln for ln in message.splitlines() if f": {key_path}: " in ln), None)
    assert line is not None, message
    assert line.startswith(f"{config_dir / expected_file}: "), message
    assert reason in line, message
    assert caught.value.file == config_dir / expected_file
    assert "AAE-secret" not in message  # a pasted secret is never echoed


def test_duplicate_yaml_key_is_reported_with_path_and_line(config_dir: Path):
    path = config_dir / "tenants.yaml"
    text = path.read_text(encoding="utf-8")
    doubled = "    timezone: Europe/Berlin\n    timezone: Asia/Tokyo\n"
    path.write_text(text.replace("    timezone: Europe/Berlin\n", doubled), encoding="utf-8")
    dup_line = path.read_text(encoding="utf-8").splitlines().index("    timezone: Asia/Tokyo") + 1

    with pytest.raises(PolicyError) as caught:
        load_bundle(config_dir)

    assert str(caught.value) == (
        f"{path}: tenants.acme.timezone (line {dup_line}, column 5): "
        f"duplicate key 'timezone' (first defined at line {dup_line - 1}); YAML would keep only the last"
    )


def test_merge_key_override_is_not_a_duplicate(tmp_path: Path):
    path = tmp_path / "policy.yaml"
    path.write_text(
        "consent:\n"
        "  <<: {require_processing: true, channels_requiring_consent: [email]}\n"
        "  require_processing: false\n"
        "suppression: {complaint_suppresses_all_channels: false}\n",
        encoding="utf-8",
    )
    assert load_policy(path).consent.require_processing is False


def test_yaml_syntax_error_reports_line_and_column(config_dir: Path):
    path = config_dir / "campaigns.yaml"
    path.write_text("campaigns:\n  - name: x\n    tenant: demo: oops\n", encoding="utf-8")

    with pytest.raises(PolicyError) as caught:
        load_campaigns(path)

    assert str(caught.value) == f"{path}: line 3, column 17: YAML syntax error: mapping values are not allowed here"


def test_missing_file_is_a_policy_error(tmp_path: Path):
    with pytest.raises(PolicyError, match=r"segments\.yaml: \(file\): cannot read"):
        load_segments(tmp_path / "segments.yaml")


def test_every_problem_in_a_file_is_reported_at_once(config_dir: Path):
    def mutate(data):
        _email(data).pop("subject")
        data["campaigns"][1]["schedule"]["start_at"] = "2026-03-02T10:00:00"

    _rewrite(config_dir / "campaigns.yaml", mutate)
    with pytest.raises(PolicyError) as caught:
        load_bundle(config_dir)
    assert [where for where, _ in caught.value.problems] == [
        "campaigns[1].channels[0].subject",
        "campaigns[1].schedule.start_at",
    ]


# --- segment rules on SQLite -----------------------------------------------------------------

# (tenant, external_id, first_name, email, telegram_chat_id, city, language)
ROWS = [
    ("demo", "d1", "Иван", "Ivan@Example.ru", None, "Москва", "ru"),
    ("demo", "d2", "Ольга", None, 1001, "Санкт-Петербург", "en"),
    ("demo", "d3", "Пётр", "petr@example.ru", None, "Санкт-Петербург", "en"),
    ("demo", "d4", None, "", None, "Казань", "ru"),
    ("demo", "d5", "Anna_B", "anna@exa_mple.com", 1002, None, None),
    ("demo", "d6", "100% Mary", "mary@100%.example.com", None, "москва", "ru"),
    ("acme", "a1", "Hans", "hans@example.de", None, "Москва", "ru"),
    ("acme", "a2", "Greta", "greta@example.de", 2001, "Berlin", "en"),
]
DEMO = {row[1] for row in ROWS if row[0] == "demo"}
# Each tenant's keys, made up here: segment rules on sealed fields compare blind indexes.
CIPHERS = {tenant: TenantCipher(tenant, {1: bytes([n]) * 32}, bytes([n + 10]) * 32) for n, tenant in enumerate(("demo", "acme"))}


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    engine = sa.create_engine(f"sqlite:///{tmp_path_factory.mktemp('opstore') / 'ops.sqlite3'}")
    sa.event.listen(engine, "connect", lambda dbapi_conn, _record: register_sqlite_unicode_lower(dbapi_conn))
    metadata.create_all(engine)
    now = datetime(2026, 11, 1, tzinfo=UTC)
    rows = []
    for tenant, external_id, first_name, email, chat, city, language in ROWS:
        cipher = CIPHERS[tenant]
        key = cipher.new_contact_key()
        sealed = contact_columns(cipher, key, {"first_name": first_name, "email": email, "telegram_chat_id": chat})
        rows.append({"tenant": tenant, "external_id": external_id, "data_key": key, **sealed, "city": city, "language": language, "created_at": now, "updated_at": now})
    with engine.begin() as conn:
        conn.execute(contacts.insert(), rows)
    yield engine
    engine.dispose()


def members(engine: sa.Engine, tenant: str, rule: Any) -> set[str]:
    rule = RULE.validate_python(rule) if isinstance(rule, dict) else rule
    query = sa.select(contacts.c.external_id).where(contacts.c.tenant == tenant, segment_where(rule, contacts, CIPHERS[tenant]))
    with engine.connect() as conn:
        return set(conn.scalars(query))


def test_shipped_segments_select_the_right_contacts(engine):
    segments = load_bundle().segments
    moscow = segments["demo"]["moscow_spb_ru"].rule
    with engine.connect() as conn:  # its behaviour clause (no complaint) as the warehouse answers it with no events
        nobody = {clause: BehaviourSet(id_table(conn, "no_events", []), complement=False) for clause in behaviours(moscow)}
        where = segment_where(moscow, contacts, CIPHERS["demo"], RuleScope(behaviour_sets=nobody))
        assert set(conn.scalars(sa.select(contacts.c.external_id).where(contacts.c.tenant == "demo", where))) == {"d1", "d2"}
    assert members(engine, "demo", segments["demo"]["everyone_with_email"].rule) == {"d1", "d3", "d5", "d6"}
    assert members(engine, "acme", segments["acme"]["english_speakers_eu"].rule) == {"a2"}


def test_tenant_filter_is_the_callers_job(engine):
    rule = RULE.validate_python({"field": "city", "op": "eq", "value": "Москва"})
    clause = segment_where(rule, contacts, CIPHERS["demo"])
    assert "tenant" not in str(clause.compile())
    with engine.connect() as conn:
        unfiltered = set(conn.scalars(sa.select(contacts.c.external_id).where(clause)))
    assert unfiltered == {"d1", "a1"}  # both tenants: never query without the tenant filter
    assert members(engine, "demo", rule) == {"d1"}
    assert members(engine, "acme", rule) == {"a1"}


@pytest.mark.parametrize(
    ("rule", "expected"),
    [
        ({"field": "city", "op": "eq", "value": "Москва"}, {"d1"}),
        ({"field": "city", "op": "ne", "value": "Москва"}, {"d2", "d3", "d4", "d5", "d6"}),  # NULL city is "ne"
        ({"field": "city", "op": "in", "value": ["Казань", "Москва"]}, {"d1", "d4"}),
        ({"field": "city", "op": "not_in", "value": ["Казань", "Москва"]}, {"d2", "d3", "d5", "d6"}),
        ({"field": "city", "op": "contains", "value": "МОСК"}, {"d1", "d6"}),  # Unicode case folding
        ({"field": "city", "op": "starts_with", "value": "санкт"}, {"d2", "d3"}),
        ({"field": "email_domain", "op": "contains", "value": "_"}, {"d5"}),  # LIKE wildcards are escaped
        ({"field": "email_domain", "op": "starts_with", "value": "100%"}, {"d6"}),
        ({"field": "email_domain", "op": "eq", "value": "example.ru"}, {"d1", "d3"}),  # derived, lowercased
        ({"field": "email", "op": "is_set"}, {"d1", "d3", "d5", "d6"}),  # '' counts as not set
        ({"field": "email", "op": "is_not_set"}, {"d2", "d4"}),
        ({"field": "email", "op": "eq", "value": "ivan@example.ru"}, {"d1"}),  # blind index of the canonical spelling
        ({"field": "email", "op": "ne", "value": "ivan@example.ru"}, {"d2", "d3", "d4", "d5", "d6"}),
        ({"field": "email", "op": "in", "value": ["petr@example.ru", "hans@example.de"]}, {"d3"}),  # acme's Hans: another index
        ({"field": "telegram_chat_id", "op": "is_set"}, {"d2", "d5"}),
        ({"field": "telegram_chat_id", "op": "eq", "value": 1002}, {"d5"}),
        ({"field": "telegram_chat_id", "op": "not_in", "value": [1001, 2001]}, {"d1", "d3", "d4", "d5", "d6"}),
        ({"not": {"field": "language", "op": "eq", "value": "ru"}}, {"d2", "d3", "d5"}),  # NULL language included
        ({"any": [{"field": "city", "op": "is_not_set"}, {"field": "email_domain", "op": "is_not_set"}]}, {"d2", "d4", "d5"}),
        (
            {"all": [{"field": "language", "op": "eq", "value": "en"}, {"not": {"field": "telegram_chat_id", "op": "is_set"}}]},
            {"d3"},
        ),
    ],
)
def test_condition_semantics(engine, rule, expected):
    assert members(engine, "demo", rule) == expected


@pytest.mark.parametrize(
    "rule",
    [
        {"field": "city", "op": "eq", "value": "Москва"},
        {"field": "language", "op": "in", "value": ["ru", "en"]},
        {"field": "email_domain", "op": "contains", "value": "example"},
        {"field": "email", "op": "eq", "value": "petr@example.ru"},
        {"all": [{"field": "city", "op": "ne", "value": "Казань"}, {"field": "email", "op": "is_set"}]},
    ],
)
def test_not_is_an_exact_complement_despite_nulls(engine, rule):
    assert members(engine, "demo", {"not": rule}) == DEMO - members(engine, "demo", rule)


def test_values_are_bind_parameters():
    rule = RULE.validate_python({"field": "city", "op": "in", "value": ["Москва'; DROP TABLE contacts; --"]})
    sql = str(segment_where(rule, contacts, CIPHERS["demo"]).compile())
    assert "DROP" not in sql and "Москва" not in sql


@pytest.mark.parametrize(
    ("rule", "pointer"),
    [
        ({"field": "first_name", "op": "eq", "value": "Иван"}, "segment on city, language, email_domain or phone_country"),
        ({"field": "last_name", "op": "is_set"}, "segment on city, language, email_domain or phone_country"),
        ({"field": "email", "op": "contains", "value": "@mail.ru"}, "use email_domain instead"),
        ({"field": "phone", "op": "starts_with", "value": "+7"}, "use phone_country instead"),
    ],
)
def test_rules_sealed_fields_cannot_answer_are_refused_at_load(rule, pointer):
    with pytest.raises(ValueError, match="encrypted at rest") as caught:
        RULE.validate_python(rule)
    assert pointer in str(caught.value)


# --- template rendering ----------------------------------------------------------------------


def _campaign(**content: Any) -> Campaign:
    return Campaign.model_validate(
        {
            "name": "probe",
            "tenant": "demo",
            "segment": "everyone_with_email",
            "schedule": {"start_at": "2026-11-20T09:00:00+03:00"},
            "channels": [content],
        }
    )


@pytest.fixture(scope="module")
def black_friday():
    """Renders the shipped campaign's channels (library template, marked as advertising) for a contact."""
    bundle = load_bundle()
    renderer = CampaignRenderer(bundle.campaigns["demo"]["black_friday_2026"], bundle.templates["demo"])
    return lambda channel, contact, extra: renderer.render(renderer.campaign.content_for(channel), contact, extra).message


def test_render_shipped_email_and_telegram(black_friday):
    contact = {"first_name": "Иван", "city": None}
    email = black_friday(Channel.EMAIL, contact, {"unsubscribe_url": "https://u.example/x?a=1&b=2"})
    assert email.subject == "Иван, Чёрная пятница: скидки до 50%"
    assert email.text.startswith("Иван, в «Ромашке»") and "https://u.example/x?a=1&b=2" in email.text
    assert 'href="https://u.example/x?a=1&amp;b=2"' in email.html
    assert email.buttons == ()

    telegram = black_friday(Channel.TELEGRAM, {"first_name": None}, {})
    assert telegram.text.startswith("Здравствуйте, Чёрная пятница")  # NULL name -> template default, never "None"
    assert telegram.subject is None and telegram.html is None
    assert [(b.label, b.callback_data) for b in telegram.buttons] == [("Хочу скидку", "bf2026:want")]


def test_html_is_autoescaped_but_text_is_not(black_friday):
    contact = {"first_name": "<script>alert(1)</script>"}
    email = black_friday(Channel.EMAIL, contact, {"unsubscribe_url": "https://u.example/x"})
    assert "<script>" not in email.html and "&lt;script&gt;" in email.html
    assert email.text.startswith("<script>alert(1)</script>,")


def test_missing_contact_field_names_campaign_channel_and_variable():
    content = _campaign(channel="telegram", text="Здравствуйте, {{ contact.last_name }}!").channels[0]
    with pytest.raises(TemplateRenderError) as caught:
        render_message(content, {"first_name": "Иван", "last_name": ""}, {})
    message = str(caught.value)
    assert message.startswith("campaign 'probe', channel telegram, text: contact.last_name is not set")


def test_missing_extra_variable_names_it(black_friday):
    expected = r"campaign 'black_friday_2026', channel email, text: 'unsubscribe_url' is undefined"
    with pytest.raises(TemplateRenderError, match=expected):
        black_friday(Channel.EMAIL, {"first_name": "Иван"}, {})


def test_rendered_telegram_text_over_limit_is_an_error():
    content = _campaign(channel="telegram", text="{{ contact.first_name }}" + "я" * 4000).channels[0]
    assert render_message(content, {"first_name": "Иван"}, {}).text.endswith("я")
    with pytest.raises(TemplateRenderError, match=r"channel telegram, text: rendered 4200 characters; the limit is 4096"):
        render_message(content, {"first_name": "ж" * 200}, {})


def test_subject_is_one_line():
    content = _campaign(channel="email", subject="{{ contact.first_name }},\n скидки", text="{{ unsubscribe_url }}").channels[0]
    rendered = render_message(content, {"first_name": "Иван\r\nBcc: x@example.com"}, {"unsubscribe_url": "u"})
    assert rendered.subject == "Иван Bcc: x@example.com, скидки"


def test_sandbox_blocks_unsafe_attributes():
    content = _campaign(channel="telegram", text="{{ contact.__class__.__mro__ }}").channels[0]
    with pytest.raises(TemplateRenderError, match="unsafe"):
        render_message(content, {"first_name": "Иван"}, {})


def test_extra_cannot_shadow_the_contact(black_friday):
    with pytest.raises(ValueError, match="must not contain 'contact'"):
        black_friday(Channel.TELEGRAM, {}, {"contact": {"first_name": "x"}})


# --- attachments, provider templates, SMS length (checked before anything is sent) -----------


def _content(**fields):
    from policies.campaigns import ChannelContent

    return ChannelContent.model_validate(fields)


def test_attachments_are_checked_against_what_the_channel_can_carry():
    assert _content(channel="telegram", text="hi", attachments=[{"kind": "photo", "url": "https://x.example/a.jpg"}]).attachments
    with pytest.raises(ValueError, match="sms cannot carry a photo attachment"):
        _content(channel="sms", text="hi", attachments=[{"kind": "photo", "url": "https://x.example/a.jpg"}])
    with pytest.raises(ValueError, match="telegram cannot carry a video attachment"):
        _content(channel="telegram", text="hi", attachments=[{"kind": "video", "url": "https://x.example/a.mp4"}])


def test_provider_templates_only_where_the_channel_has_them_and_variables_render():
    content = _content(channel="whatsapp", text="fallback", template={"id": "order_confirm", "variables": ["{{ contact.first_name }}"]})
    assert render_message(content, {"first_name": "Иван"}, {}).template_variables == ("Иван",)
    with pytest.raises(ValueError, match="telegram has no provider templates"):
        _content(channel="telegram", text="hi", template={"id": "x"})


def test_sms_over_the_segment_cap_fails_at_render_time():
    content = _content(channel="sms", text="{{ contact.first_name }}")
    assert render_message(content, {"first_name": "Я" * 402}, {}).text  # 6 UCS-2 parts of 67 = 402
    with pytest.raises(TemplateRenderError, match="7 SMS segments"):
        render_message(content, {"first_name": "Я" * 403}, {})
