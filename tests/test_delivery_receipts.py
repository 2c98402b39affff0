"""Which providers report delivery is declared once, on each connector, and read from there."""

from __future__ import annotations

import pytest

from policies.schema import Channel, Provider
from resources.connectors import CONNECTOR_CLASSES, ChannelConnectors, has_delivery_receipts
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
