"""Normalisation of imported contacts: one person is one contact however the file spells them.

The phone fast path is held to phonenumbers' own answers on thousands of generated numbers; the
e-mail fast path to email-validator's.
"""

from __future__ import annotations

import random

import dagster as dg
import pandas as pd
import phonenumbers
import pytest
from email_validator import EmailNotValidError, validate_email
from phonenumbers import timezone as phone_timezones

from orchestrator_assets.imports.assets import contact_import_rows
from orchestrator_assets.imports.normalise import (
    derive_timezones,
    in_file_duplicates,
    normalise_emails,
    normalise_names,
    normalise_phones,
    parse_phone,
)
from orchestrator_assets.imports.phones import fast_e164
from orchestrator_assets.imports.validation import CSV_COLUMNS, validate_contact_rows

REGIONS = ("RU", "GB", "DE", "FR", "US", "KZ", "UA", "IT")
TYPES = (phonenumbers.PhoneNumberType.MOBILE, phonenumbers.PhoneNumberType.FIXED_LINE, phonenumbers.PhoneNumberType.TOLL_FREE)


def _spellings(rng: random.Random, count: int) -> list[tuple[str, str]]:
    """(text, tenant region) pairs: real-looking numbers of several countries written every way
    people write them, a share of them mangled (digits dropped or added) so that some are invalid."""
    out = []
    while len(out) < count:
        home, home_of_number = rng.choice(REGIONS), rng.choice(REGIONS)
        example = phonenumbers.example_number_for_type(home_of_number, rng.choice(TYPES))
        if example is None:
            continue
        nsn = phonenumbers.national_significant_number(example)
        nsn = nsn[:-4] + "".join(rng.choice("0123456789") for _ in range(4))
        mangle = rng.random()
        if mangle < 0.1:
            nsn = nsn[:-1]
        elif mangle < 0.2:
            nsn += rng.choice("0123456789")
        cc = str(example.country_code)
        trunk = phonenumbers.PhoneMetadata.metadata_for_region(home_of_number).national_prefix or ""
        spaced = " ".join(nsn[i : i + 3] for i in range(0, len(nsn), 3))
        forms = [f"+{cc}{nsn}", f"+{cc} {spaced}", f"+{cc} ({nsn[:3]}) {nsn[3:]}", f"{cc}{nsn}", f"{trunk}{nsn}", f"{trunk} {spaced}", nsn, f"{trunk}-{nsn[:3]}-{nsn[3:]}", f"+{cc} {trunk}{nsn}"]
        if phonenumbers.PhoneMetadata.metadata_for_region(home).international_prefix == "00":
            forms.append(f"00{cc} {spaced}")
        out.append((rng.choice(forms), home))
    return out


def _reference(text: str, region: str) -> str | None:
    try:
        number = phonenumbers.parse(text, region)
    except phonenumbers.NumberParseException:
        return None
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164) if phonenumbers.is_valid_number(number) else None


def test_fast_path_gives_phonenumbers_answer_on_thousands_of_numbers_in_several_countries():
    cases = pd.DataFrame(_spellings(random.Random(10), 6000), columns=["text", "region"])
    settled = answered = 0
    for region, group in cases.groupby("region"):
        fast = fast_e164(group["text"], region)
        for text, answer in zip(group["text"], fast, strict=True):
            expected = _reference(text, region)
            if pd.notna(answer):
                assert answer == expected, (text, region)
                answered += 1
            settled += expected is not None
    # Where phonenumbers finds a valid number, the fast path must have found nearly all of them
    # itself, or it saves nothing.
    assert answered > 0.9 * settled > 2000


def test_normalise_phones_agrees_with_phonenumbers_on_every_cell_including_refusals():
    cases = _spellings(random.Random(11), 1500)
    for region in ("RU", "DE"):
        texts = pd.Series([text for text, home in cases if home == region])
        e164, _, reason = normalise_phones(texts, region)
        for text, answer, why in zip(texts, e164, reason, strict=True):
            expected = _reference(text, region)
            if text.startswith("00") and region != "DE":
                continue  # "00" is read as international everywhere: see the next test
            assert (None if pd.isna(answer) else answer) == expected, (text, region)
            assert pd.isna(why) == (expected is not None)


def test_one_phone_written_eight_ways_is_one_number_and_one_contact():
    ways = ["+7 (916) 123-45-67", "8 916 123 45 67", "89161234567", "+79161234567", "916-123-45-67", "7 916 123 4567", "8(916)123-45-67", "0079161234567"]
    e164, ext, reason = normalise_phones(pd.Series(ways), "RU")
    assert set(e164) == {"+79161234567"} and reason.isna().all() and ext.isna().all()

    rows = [{**dict.fromkeys(CSV_COLUMNS, ""), "external_id": f"c-{i}", "phone": way} for i, way in enumerate(ways)]
    result = validate_contact_rows(pd.DataFrame(rows, columns=list(CSV_COLUMNS)))
    assert list(result.good["external_id"]) == ["c-0"]
    assert set(result.errors["reason"]) == {"same phone as row 2"} and list(result.errors["row"]) == list(range(3, 10))


def test_national_numbers_are_read_in_the_tenants_country():
    e164, _, reason = normalise_phones(pd.Series(["030 27896199", "0049 30 27896199"]), "DE")
    assert list(e164) == ["+493027896199", "+493027896199"]
    e164, _, reason = normalise_phones(pd.Series(["030 27896199", "0049 30 27896199"]), "RU")
    assert pd.isna(e164[0]) and reason[0] == "not a valid phone number (numbers without +country code are read as RU)"
    assert e164[1] == "+493027896199"  # phonenumbers alone knows only RU's "810" and would refuse it


@pytest.mark.parametrize("written", ["доб. 12", "ext. 12", "x12", "#12", "Доб 12", "EXT12"])
@pytest.mark.parametrize("number", ["+7 495 123-45-67", "8 (495) 123 45 67", "84951234567"])
def test_extensions_are_kept_not_dropped(number, written):
    e164, ext, reason = normalise_phones(pd.Series([f"{number} {written}"]), "RU")
    assert (e164[0], ext[0]) == ("+74951234567", "12") and pd.isna(reason[0])


def test_an_extension_phonenumbers_has_to_read_is_kept_too():
    assert parse_phone("tel:+7-495-123-45-67;ext=77", "RU") == ("+74951234567", "77", None)
    e164, ext, _ = normalise_phones(pd.Series(["tel:+7-495-123-45-67;ext=77"]), "RU")
    assert (e164[0], ext[0]) == ("+74951234567", "77")


def test_the_extension_travels_with_the_row():
    row = {**dict.fromkeys(CSV_COLUMNS, ""), "external_id": "c-1", "phone": "+7 495 123-45-67 доб. 301"}
    good = validate_contact_rows(pd.DataFrame([row], columns=list(CSV_COLUMNS))).good
    assert (good.at[0, "phone"], good.at[0, "phone_ext"]) == ("+74951234567", "301")


def _addresses(rng: random.Random, count: int) -> list[str]:
    locals_ = ["ivan", "Ivan.Petrov", "a_b", "x+tag", "o'neil", "ivan..petrov", ".ivan", "ivan.", "a" * 65, "ИВАН", "user%x", "-x-"]
    domains = ["mail.ru", "Mail.RU", "example.org", "sub.example.co.uk", "пример.рф", "xn--e1afmkfd.xn--p1ai", "localhost", "x.test", "ex-ample.com", "-bad.com", "bad-.com", "ab--cd.com", "nodot", "a.b.c.d.museum", "1.2.3.4", "x.123"]
    return [rng.choice([f"{rng.choice(locals_)}@{rng.choice(domains)}", f"{rng.choice(locals_)}@@{rng.choice(domains)}", rng.choice(locals_)]) for _ in range(count)]


def test_email_fast_path_gives_email_validators_answer():
    texts = pd.Series(_addresses(random.Random(3), 3000))
    normalised, reason = normalise_emails(texts)
    for text, answer, why in zip(texts, normalised, reason, strict=True):
        try:
            expected = validate_email(text, check_deliverability=False).normalized.lower()
        except EmailNotValidError as exc:
            assert pd.isna(answer) and why == f"invalid e-mail: {exc}", text
        else:
            assert answer == expected and pd.isna(why), text


def test_emails_differing_only_in_case_are_one_contact():
    normalised, _ = normalise_emails(pd.Series(["Ivan@Mail.ru", " ivan@mail.ru ", "IVAN@MAIL.RU"]))
    assert set(normalised) == {"ivan@mail.ru"}
    frame = pd.DataFrame({"row": [2, 3], "external_id": ["a", "b"], "phone": [None, None], "email": ["ivan@mail.ru", "ivan@mail.ru"]})
    keep, problems = in_file_duplicates(frame)
    assert list(keep) == [True, False]
    assert problems.to_dict("records") == [{"row": 3, "column": "email", "value": "ivan@mail.ru", "reason": "same email as row 2", "notice": False}]


def test_names_are_trimmed_and_inner_whitespace_collapsed():
    assert list(normalise_names(pd.Series(["  Анна \u00a0 Мария ", "Ivan\tPetrov", "   ", "O'Neil"]))) == ["Анна Мария", "Ivan Petrov", pd.NA, "O'Neil"]


def test_time_zone_comes_from_the_phone_only_when_it_names_one():
    e164 = pd.Series(["+74951234567", "+79161234567", "+493027896199", "+447911123456", None])
    assert list(derive_timezones(e164, "Europe/Berlin")) == ["Europe/Moscow", "Europe/Berlin", "Europe/Berlin", "Europe/Berlin", "Europe/Berlin"]
    assert list(derive_timezones(pd.Series(["+73832123456", "+442079460123"]), "Europe/Moscow")) == ["Asia/Novosibirsk", "Europe/London"]


def test_time_zones_agree_with_phonenumbers_where_it_names_exactly_one():
    numbers = {_reference(text, home) for text, home in _spellings(random.Random(12), 3000)} - {None}
    e164 = pd.Series(sorted(numbers))
    derived = derive_timezones(e164, "Etc/Unknown")
    for number, zone in zip(e164, derived, strict=True):
        zones = phone_timezones.time_zones_for_number(phonenumbers.parse(number))
        assert zone == (zones[0] if len(zones) == 1 and zones[0] != "Etc/Unknown" else "Etc/Unknown"), number


def test_a_time_zone_in_the_file_wins_and_an_unknown_one_is_an_error():
    base = {**dict.fromkeys(CSV_COLUMNS, ""), "phone": "+7 495 123-45-67"}
    raw = pd.DataFrame([{**base, "external_id": "a", "timezone": "Asia/Yekaterinburg"}, {**base, "external_id": "b", "phone": "+7 495 123-45-68", "timezone": "Moscow"}])
    result = validate_contact_rows(raw, default_timezone="Europe/Moscow")
    assert list(result.good["timezone"]) == ["Asia/Yekaterinburg"]
    assert result.errors[["row", "column", "reason"]].to_dict("records") == [{"row": 3, "column": "timezone", "reason": "unknown IANA time zone 'Moscow' (e.g. Europe/Moscow)"}]


def test_an_exact_repeat_is_collapsed_with_a_notice_and_a_conflicting_one_is_an_error():
    base = {**dict.fromkeys(CSV_COLUMNS, ""), "external_id": "c-1", "first_name": "Иван", "email": "ivan@mail.ru", "phone": "+79161234567"}
    rows = [base, {**base, "external_id": "c-2", "email": "other@mail.ru"}, {**base, "external_id": "c-3", "phone": "", "email": "OTHER@mail.ru"}, {**base, "email": "Ivan@Mail.RU", "phone": "8 916 123-45-67"}, {**base, "first_name": "Пётр"}]
    result = validate_contact_rows(pd.DataFrame(rows, columns=list(CSV_COLUMNS)))
    assert list(result.good["external_id"]) == ["c-1"]
    assert result.notices[["row", "reason"]].to_dict("records") == [{"row": 5, "reason": "row 5 is the same as row 2; kept once"}]
    assert result.errors[["row", "column", "reason"]].to_dict("records") == [
        {"row": 3, "column": "phone", "reason": "same phone as row 2"},
        {"row": 4, "column": "email", "reason": "same email as row 3"},
        {"row": 6, "column": "external_id", "reason": "duplicate external_id, first seen on row 2"},
    ]


def test_the_import_reads_national_numbers_in_the_tenants_country(algor_home, instance, tmp_path):
    # acme is a German tenant (policies/config/tenants.yaml: country DE, Europe/Berlin).
    path = tmp_path / "acme.csv"
    rows = [{**dict.fromkeys(CSV_COLUMNS, ""), "external_id": "a-1", "phone": "030 27896199"}, {**dict.fromkeys(CSV_COLUMNS, ""), "external_id": "a-2", "phone": "+7 916 123-45-67"}]
    pd.DataFrame(rows, columns=list(CSV_COLUMNS)).to_csv(path, index=False)
    result = dg.materialize([contact_import_rows], instance=instance, partition_key="acme", run_config={"ops": {"imports__contact_import_rows": {"config": {"csv_path": str(path)}}}})
    good = result.output_for_node("imports__contact_import_rows")
    assert list(good["phone"]) == ["+493027896199", "+79161234567"]
    assert list(good["timezone"]) == ["Europe/Berlin", "Europe/Berlin"]  # a Russian mobile names no single zone
