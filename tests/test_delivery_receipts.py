"""Which providers report delivery is declared once, on each connector, and read from there:
by the fallback rule (through the provider's name) and by the reports (the dbt seed, a copy
kept equal here)."""

from __future__ import annotations

import csv

import pytest

from policies.channels import Channel, Provider
from resources.connectors import CONNECTOR_CLASSES, ChannelConnectors, has_delivery_receipts
from resources.dbt import DBT_PROJECT_DIR
from test_gateway_providers import TENANT


def test_the_declarations_read_by_name_are_those_of_the_connectors_the_send_path_builds(algor_home):
    connectors = ChannelConnectors()
    for provider in Provider:
        channel = next(c for c in Channel if provider in c.traits.providers)
        built = connectors.for_provider(TENANT, provider, channel, "every")
        assert type(built) is CONNECTOR_CLASSES[provider]
        assert has_delivery_receipts(provider.value) is built.delivery_receipts


def test_only_telegram_and_vk_lack_delivery_receipts():
    assert {p.value for p in Provider if not has_delivery_receipts(p.value)} == {"telegram", "vk"}


def test_an_unknown_provider_is_named_in_the_error():
    with pytest.raises(ValueError, match="unknown provider 'pigeon'"):
        has_delivery_receipts("pigeon")


def test_the_reports_seed_says_what_the_connectors_declare():
    with open(DBT_PROJECT_DIR / "seeds" / "provider_capabilities.csv", newline="", encoding="utf-8") as seed:
        rows = list(csv.DictReader(seed))
    assert {row["provider"]: row["delivery_receipts"] for row in rows} == {
        p.value: str(has_delivery_receipts(p.value)).lower() for p in Provider
    }
    assert len(rows) == len(Provider)  # one row each
