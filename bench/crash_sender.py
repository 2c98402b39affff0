"""One sending process for ``bench/crash.py``: the send path for N messages, then its report.

    .venv/bin/python bench/crash_sender.py --url URL --ledger FILE --provider vk|telegram --messages N --run-id ID

Prints "ready" once the ledger and messages are set up (the crash bench starts its kill timer
then), and the report's totals as one JSON line when done.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path

from harness import TENANT, outgoing, scratch_ledger

from orchestrator_assets.sends.run import send_messages
from policies.policy import DispatchPolicy
from resources.channels.telegram import TelegramConnector
from resources.channels.vk import VkConnector

TELEGRAM_TOKEN, VK_GROUP, VK_TOKEN = "200001:crash", 200002, "vk-crash-token"
CAMPAIGN = "crash"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--ledger", required=True)
    parser.add_argument("--provider", choices=["vk", "telegram"], required=True)
    parser.add_argument("--messages", type=int, required=True)
    parser.add_argument("--run-id", required=True)
    args = parser.parse_args()
    engine = scratch_ledger(Path(args.ledger), args.messages)
    connector = VkConnector(args.url, VK_GROUP, VK_TOKEN) if args.provider == "vk" else TelegramConnector(args.url, TELEGRAM_TOKEN)
    items = outgoing(connector, CAMPAIGN, args.messages)
    print("ready", flush=True)
    report = asyncio.run(send_messages(engine, TENANT, args.run_id, items, DispatchPolicy()))
    print(json.dumps({"totals": dict(report.totals), "abandoned": report.abandoned}), flush=True)


if __name__ == "__main__":
    main()
