"""The template library: load-time checks, language choice, channel rules, 38-FZ marking, and
immutable versions; pure functions here, the Dagster runs in test_template_runs.py."""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path

import css_inline
import pytest
import yaml
from pydantic import ValidationError

from orchestrator_assets.template_history import TemplateVersionChanged, record_versions
from policies.ad_marking import marking_refusal, with_erid
from policies.campaigns import Campaign
from policies.channels import Channel
from policies.consent_purposes import CampaignPurpose
from policies.loader import DEFAULT_CONFIG_DIR, PolicyError, load_bundle, load_templates
from policies.rendering import TemplateRenderError
from policies.template_library import LibraryTemplate, Version
from policies.template_rendering import CampaignRenderer

NOW = dt.datetime(2026, 11, 20, 9, 0, tzinfo=dt.UTC)
EXTRA = {"unsubscribe_url": "https://g.example/unsubscribe/demo/t", "deep_link_token": "t"}


def _version(channels: dict, variables: dict | None = None, number: int = 1, fallback: str = "ru") -> Version:
    return Version.model_validate({"version": number, "fallback_language": fallback, "variables": variables or {}, "channels": channels})


def _campaign(channels: list[dict], **fields) -> Campaign:
    return Campaign.model_validate(
        {"name": "probe", "tenant": "demo", "segment": "everyone_with_email", "schedule": {"start_at": "2026-11-20T09:00:00+03:00"}, "channels": channels, **fields}
    )


@pytest.fixture(scope="module")
def bundle():
    return load_bundle()


# --- load: declared variables, channel rules ---------------------------------------------------


def test_an_undeclared_variable_is_rejected_with_its_part_and_template_line():
    text = "Здравствуйте!\n{% for item in items %}{{ item }}{% endfor %}\nСкидка {{ discont }}%"
    with pytest.raises(ValidationError) as caught:
        _version({"telegram": {"ru": {"text": text}}}, {"discount": {"type": "int"}, "items": {"type": "string", "default": "ab"}})
    message = str(caught.value)
    assert "channels.telegram.ru.text: template line 3: variable 'discont' is not declared" in message
    assert "item" not in message.split("not declared")[1].split("(")[0]  # a loop variable is the template's own


def test_builtins_need_no_declaration_and_cannot_be_redeclared():
    email = {"subject": "{{ contact.first_name }}", "text": "{{ erid }} {{ deep_link_token }} {{ unsubscribe_url }}"}
    assert _version({"email": {"ru": email}}).channels[Channel.EMAIL]["ru"].subject
    with pytest.raises(ValidationError, match=r"variables \['contact'\] are built in"):
        _version({"telegram": {"ru": {"text": "x"}}}, {"contact": {"type": "string", "default": "x"}})


@pytest.mark.parametrize(
    "channels, reason",
    [
        ({"telegram": {"en": {"text": "hi"}}}, "no content in the fallback language 'ru'"),
        ({"email": {"ru": {"subject": "s", "text": "без ссылки"}}}, "{{ unsubscribe_url }}"),
        ({"email": {"ru": {"text": "{{ unsubscribe_url }}"}}}, "email needs a subject"),
        ({"telegram": {"ru": {"text": "<b>Скидки</b> до 50%"}}}, "HTML markup <b> would reach the reader as literal text"),
        ({"vk": {"ru": {"text": "я" * 4097}}}, "limit is 4096"),
        ({"sms": {"ru": {"text": "x", "template": {"id": "t"}}}}, "sms has no provider templates"),
    ],
)
def test_channel_rules_are_checked_at_load(channels, reason):
    with pytest.raises(ValidationError, match=reason.replace("{", r"\{").replace("}", r"\}")):
        _version(channels)


@pytest.mark.parametrize(
    "kind, default, ok",
    [("int", 5, True), ("int", 2.5, False), ("int", "5", True), ("decimal", "49.90", True), ("bool", True, True), ("bool", "maybe", False),
     ("date", dt.date(2026, 11, 29), True), ("date", "29.11.2026", False), ("string", 5, False)],
)  # fmt: skip
def test_variable_defaults_must_have_their_type(kind, default, ok):
    variables = {"x": {"type": kind, "default": default}}
    if ok:
        _version({"telegram": {"ru": {"text": "{{ x }}"}}}, variables)
    else:
        with pytest.raises(ValidationError, match=f"is not a valid {kind}"):
            _version({"telegram": {"ru": {"text": "{{ x }}"}}}, variables)


def test_versions_are_listed_once_oldest_first():
    version = {"fallback_language": "ru", "channels": {"telegram": {"ru": {"text": "x"}}}}
    with pytest.raises(ValidationError, match=r"listed once each, oldest first \(got \[2, 1\]\)"):
        LibraryTemplate.model_validate({"name": "t", "versions": [{**version, "version": 2}, {**version, "version": 1}]})


def _broken_config(tmp_path: Path, mutate_campaigns=None, mutate_templates=None) -> Path:
    config = shutil.copytree(DEFAULT_CONFIG_DIR, tmp_path / "config")
    for name, mutate in (("campaigns.yaml", mutate_campaigns), ("templates.yaml", mutate_templates)):
        if mutate:
            data = yaml.safe_load((config / name).read_text(encoding="utf-8"))
            mutate(data)
            (config / name).write_text(yaml.safe_dump(data, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return config


@pytest.mark.parametrize(
    "ref, reason",
    [
        ({"name": "black_friday", "version": 9}, "template 'black_friday' has no version 9 (has: [1, 2])"),
        ({"name": "cyber_monday", "version": 1}, "template 'cyber_monday' is not in the library (known: black_friday)"),
        ({"name": "black_friday", "version": 1, "values": {"discount": "half"}}, "variable 'discount': 'half' is not a valid int"),
        ({"name": "black_friday", "version": 1, "values": {"percent": 5}}, "values for undeclared variables ['percent'] (declared: discount)"),
    ],
)
def test_a_campaign_pin_is_checked_against_the_library_with_file_and_path(tmp_path, ref, reason):
    config = _broken_config(tmp_path, mutate_campaigns=lambda d: d["campaigns"][0]["channels"][1].update(message_template=ref))
    with pytest.raises(PolicyError) as caught:
        load_bundle(config)
    assert str(caught.value) == f"{config / 'campaigns.yaml'}: campaigns[0].channels[1].message_template: {reason}"


def test_inline_text_and_a_library_pin_exclude_each_other():
    with pytest.raises(ValidationError, match="`text` comes from `message_template`; give one or the other"):
        _campaign([{"channel": "telegram", "text": "x", "message_template": {"name": "black_friday", "version": 1}}])
    with pytest.raises(ValidationError, match="a channel needs `text`"):
        _campaign([{"channel": "telegram"}])


def test_a_bad_library_names_templates_yaml_and_the_path(tmp_path):
    def typo(data):
        data["templates"]["demo"][0]["versions"][0]["channels"]["telegram"]["en"]["text"] = "{{ discount }} {{ shop_url }}"

    config = _broken_config(tmp_path, mutate_templates=typo)
    with pytest.raises(PolicyError) as caught:
        load_templates(config / "templates.yaml")
    (where, why), = caught.value.problems
    assert where == "templates.demo[0].versions[0]"
    assert why.startswith("channels.telegram.en.text: template line 1: variable 'shop_url' is not declared")


# --- render: language, marking, channel rules ----------------------------------------------------


def test_contacts_read_their_language_and_the_rest_the_fallback(bundle):
    campaign = bundle.campaigns["demo"]["black_friday_2026"]
    renderer = CampaignRenderer(campaign, bundle.templates["demo"])
    email = campaign.content_for(Channel.EMAIL)
    seen = {language: renderer.render(email, {"first_name": "Ann", "language": language}, EXTRA) for language in ("en", "EN", "ru", None, "fr")}
    assert {language: r.language for language, r in seen.items()} == {"en": "en", "EN": "en", "ru": "ru", None: "ru", "fr": "ru"}
    assert seen["en"].message.subject == "Ann, Black Friday: up to 50% off"
    assert seen["fr"].message.subject == "Ann, Чёрная пятница: скидки до 50%"


def test_advertising_carries_label_advertiser_and_erid_in_text_and_html(bundle):
    campaign = bundle.campaigns["demo"]["black_friday_2026"]
    renderer = CampaignRenderer(campaign, bundle.templates["demo"])
    footer = "Реклама. Рекламодатель: ООО «Ромашка», ИНН 7701234567. erid: 2VtzqvYkmGf"
    email = renderer.render(campaign.content_for(Channel.EMAIL), {"language": "en"}, EXTRA).message
    assert email.text.rstrip().endswith(footer)
    assert "ООО «Ромашка», ИНН 7701234567. erid: 2VtzqvYkmGf</p>\n</body>" in email.html
    telegram = renderer.render(campaign.content_for(Channel.TELEGRAM), {"language": "ru"}, EXTRA).message
    assert telegram.text.rstrip().endswith(footer)


def test_a_transactional_campaign_is_not_marked():
    campaign = _campaign([{"channel": "telegram", "text": "Ваш заказ собран"}], purpose="transactional")
    message = CampaignRenderer(campaign, {}).render(campaign.channels[0], {}, {}).message
    assert message.text == "Ваш заказ собран"


def test_the_marking_counts_against_the_channel_limit():
    text = "{{ contact.first_name }}" + "я" * 4050  # 4054 characters: fits without the footer
    campaign = _campaign([{"channel": "telegram", "text": text}], advertising={"advertiser": "ООО «Ромашка», ИНН 7701234567", "erid": "2VtzqvYkmGf"})
    with pytest.raises(TemplateRenderError, match="the limit is 4096"):
        CampaignRenderer(campaign, {}).render(campaign.channels[0], {"first_name": "Иван"}, {})


def test_an_advertising_campaign_without_marking_may_not_start_and_a_transactional_one_may():
    reason = marking_refusal("probe", CampaignPurpose.ADVERTISING, None)
    assert "is advertising" in reason and "erid" in reason and "advertiser" in reason and "Nothing was sent" in reason
    assert marking_refusal("probe", CampaignPurpose.TRANSACTIONAL, None) is None
    with pytest.raises(ValidationError, match="advertiser"):
        _campaign([{"channel": "telegram", "text": "x"}], advertising={"erid": "2VtzqvYkmGf"})
    with pytest.raises(ValidationError, match="erid"):
        _campaign([{"channel": "telegram", "text": "x"}], advertising={"advertiser": "ООО «Ромашка»", "erid": "not a token!"})


def test_erid_is_added_to_a_link_and_replaces_a_stale_one():
    assert with_erid("https://shop.example.ru/bf?utm_source=email&erid=old", "2VtzqvYkmGf") == "https://shop.example.ru/bf?utm_source=email&erid=2VtzqvYkmGf"
    assert with_erid("https://shop.example.ru/", "2VtzqvYkmGf") == "https://shop.example.ru/?erid=2VtzqvYkmGf"


def test_sms_segments_are_enforced_on_the_rendered_text_in_its_encoding():
    version = _version({"sms": {"ru": {"text": "{{ body }}"}, "en": {"text": "{{ body }}"}}}, {"body": {"type": "string"}})
    library = {"note": LibraryTemplate(name="note", versions=[version])}

    def render(body: str, language: str):
        campaign = _campaign([{"channel": "sms", "message_template": {"name": "note", "version": 1, "values": {"body": body}}}], purpose="transactional")
        return CampaignRenderer(campaign, library).render(campaign.channels[0], {"language": language}, {}).message

    assert render("a" * 900, "en").text == "a" * 900  # GSM-7: 6 parts of 153
    with pytest.raises(TemplateRenderError, match=r"rendered 7 SMS segments \(UCS-2, 403 units\); the cap is 6"):
        render("я" * 403, "ru")  # UCS-2: 67 per part, 6 × 67 = 402


def test_whatsapp_maps_each_language_to_its_approved_template():
    wa = {"ru": {"text": "Заказ {{ order }}", "template": {"id": "order_ready_ru", "language": "ru", "variables": ["{{ order }}"]}},
          "en": {"text": "Order {{ order }}", "template": {"id": "order_ready_en", "language": "en", "variables": ["{{ order }}"]}}}  # fmt: skip
    library = {"order": LibraryTemplate(name="order", versions=[_version({"whatsapp": wa}, {"order": {"type": "int"}})])}
    campaign = _campaign([{"channel": "whatsapp", "message_template": {"name": "order", "version": 1, "values": {"order": 42}}}], purpose="transactional")
    message = CampaignRenderer(campaign, library).render(campaign.channels[0], {"language": "en"}, {}).message
    assert (message.template.id, message.template.language, message.template_variables) == ("order_ready_en", "en", ("42",))


def test_email_css_is_inlined_as_the_connectors_send_it(bundle):
    campaign = bundle.campaigns["demo"]["black_friday_2026"]
    html = CampaignRenderer(campaign, bundle.templates["demo"]).render(campaign.content_for(Channel.EMAIL), {"language": "ru"}, EXTRA).message.html
    inlined = css_inline.inline(html)
    assert '<p class="small" style="font-family: Arial, sans-serif;font-size: 12px;color: #666;">' in inlined
    assert "<style>" not in inlined


# --- immutable versions in the store (SQLite and PostgreSQL) -------------------------------------


def test_a_recorded_version_whose_content_changed_is_refused(engine, bundle):
    template = bundle.templates["demo"]["black_friday"]
    with engine.begin() as conn:
        record_versions(conn, "demo", [("black_friday", template.versions[0])], NOW, "black_friday_2026", "run-1")
        again = record_versions(conn, "demo", [("black_friday", template.versions[0])], NOW + dt.timedelta(days=1), "other", "run-2")
    assert again["black_friday", 1].first_seen_at == NOW and again["black_friday", 1].first_campaign == "black_friday_2026"

    edited = template.versions[0].model_copy(update={"variables": {**template.versions[0].variables}})
    edited = Version.model_validate({**edited.model_dump(), "fallback_language": "en"})
    with engine.begin() as conn, pytest.raises(TemplateVersionChanged) as caught:
        record_versions(conn, "demo", [("black_friday", edited)], NOW, "black_friday_2026", "run-3")
    assert str(caught.value) == (
        "template 'black_friday' version 1 changed since it was first used on 2026-11-20 09:00 UTC by campaign 'black_friday_2026'; "
        "published versions are immutable: restore it and publish the change as version 2"
    )
    with engine.begin() as conn:  # another tenant's version 1 is another version
        assert ("black_friday", 1) in record_versions(conn, "acme", [("black_friday", edited)], NOW, "", "run-4")
