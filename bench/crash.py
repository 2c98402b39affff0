"""Crash safety of the send path: SIGKILL a sending process mid-campaign, resume, compare both sides.

    .venv/bin/python bench/crash.py [--trials 20] [--messages 1500] [--providers vk,telegram] [--seed 1]

Per provider and trial: reset the sandbox (a separate ``python -m sandbox`` process), start
``bench/crash_sender.py`` on a fresh ledger, SIGKILL it once the sandbox has taken a uniformly
random number of its calls (5 %–95 % of them), then start new sender processes (new run ids) until
the ledger has nothing left to send. Then compare what the sandbox
recorded with the ledger, row by row (every message goes to its own recipient):

- ``duplicates``: deliveries beyond the first for one ledger row (target 0);
- ``lost``: ledger rows neither final (sent, failed finally) nor held ambiguous, plus messages
  with no row at all (target 0); ``sent_not_received``: rows marked sent the sandbox never saw;
- ``ambiguous``: rows held at the end, split into those the sandbox did receive and those it did
  not (the kill fell between claim and answer: nobody can tell which without a status check).

VK deduplicates (``random_id`` from the send id), so its abandoned rows are resent and none stay
held; Telegram has no idempotency key, so its abandoned rows stay held. Progress goes to stderr;
the last stdout line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx
import sqlalchemy as sa
from crash_sender import TELEGRAM_TOKEN, VK_GROUP, VK_TOKEN
from harness import FIRST_CHAT_ID, sandbox_process, sandbox_reset, sandbox_stats

from orchestrator_assets.sends.ledger import (
    AMBIGUOUS,
    CLAIMED,
    FAILED,
    RETRYABLE_CLASSES,
    SENT,
)
from resources.opstore import engine_for
from resources.opstore_schema import sends
from sandbox.outcomes import BLOCKED

SENDER = Path(__file__).resolve().parent / "crash_sender.py"
MAX_RESUMES = 5


def log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def start_sender(url: str, ledger: Path, provider: str, messages: int, run_id: str) -> subprocess.Popen:
    command = [sys.executable, str(SENDER), "--url", url, "--ledger", str(ledger), "--provider", provider, "--messages", str(messages), "--run-id", run_id]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    if process.stdout is None or process.stdout.readline().strip() != "ready":
        raise RuntimeError(f"sender {run_id} did not start")
    return process


def finish(process: subprocess.Popen) -> dict:
    out, _ = process.communicate(timeout=300)
    if process.returncode != 0:
        raise RuntimeError(f"sender exited with {process.returncode}")
    return json.loads(out.strip().splitlines()[-1])


def unfinished(ledger: Path, provider: str) -> int:
    """Rows a further run would still act on: claimed, retryable, or (deduplicating) ambiguous."""
    with engine_for(f"sqlite:///{ledger}").connect() as conn:
        rows = conn.execute(sa.select(sends.c.status, sends.c.error_class)).all()
    resendable = {CLAIMED} | ({AMBIGUOUS} if provider == "vk" else set())
    return sum(1 for row in rows if row.status in resendable or (row.status == FAILED and row.error_class in RETRYABLE_CLASSES))


def compare(url: str, ledger: Path, provider: str, messages: int) -> Counter[str]:
    records = httpx.get(f"{url}/_sandbox/messages", params={"provider": provider}, timeout=60).json()["messages"]
    received = Counter(record["recipient"] for record in records)
    # A "blocked" recipient is refused by the provider every time, so a resend of it delivers
    # nothing twice; duplicates are deliveries.
    delivered = Counter(record["recipient"] for record in records if record["outcome"] != BLOCKED)
    with engine_for(f"sqlite:///{ledger}").connect() as conn:
        rows = conn.execute(sa.select(sends.c.address, sends.c.status, sends.c.error_class)).all()
    result: Counter[str] = Counter()
    result["duplicates"] = sum(count - 1 for count in delivered.values() if count > 1)
    result["lost"] = messages - len(rows)  # never claimed, so never sent
    for row in rows:
        final = row.status == SENT or (row.status == FAILED and row.error_class not in RETRYABLE_CLASSES)
        if row.status == AMBIGUOUS:
            result["ambiguous"] += 1
            result["ambiguous_received" if received[row.address] else "ambiguous_not_received"] += 1
        elif not final:
            result["lost"] += 1
        if row.status == SENT and not received[row.address]:
            result["sent_not_received"] += 1
    result["unexpected_recipients"] = sum(1 for address in received if not FIRST_CHAT_ID < int(address) <= FIRST_CHAT_ID + messages)
    return result


def kill_when_received(url: str, provider: str, process: subprocess.Popen, target: int) -> None:
    """SIGKILL ``process`` (no cleanup, no final flush) once the sandbox has taken ``target`` calls."""
    while process.poll() is None and sum(sandbox_stats(url, provider)["outcomes"].values()) < target:
        time.sleep(0.005)
    process.kill()
    process.wait()


def trial(url: str, workdir: Path, provider: str, messages: int, number: int, kill_at: int) -> Counter[str]:
    sandbox_reset(url)
    ledger = workdir / f"{provider}-{number}.sqlite"
    victim = start_sender(url, ledger, provider, messages, f"{provider}-{number}-run0")
    kill_when_received(url, provider, victim, kill_at)
    result: Counter[str] = Counter(killed_mid_run=int(victim.returncode != 0))
    for resume in range(1, MAX_RESUMES + 1):
        report = finish(start_sender(url, ledger, provider, messages, f"{provider}-{number}-run{resume}"))
        result["abandoned_found"] += report["abandoned"]
        result["runs"] += 1
        if not unfinished(ledger, provider):
            break
    result.update(compare(url, ledger, provider, messages))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20, help="trials per provider")
    parser.add_argument("--messages", type=int, default=1500)
    parser.add_argument("--providers", default="vk,telegram")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    config = {"telegram": [{"token": TELEGRAM_TOKEN}], "vk": [{"group_id": VK_GROUP, "access_token": VK_TOKEN}]}
    by_provider: dict[str, Counter[str]] = {}
    with tempfile.TemporaryDirectory() as tmp, sandbox_process(config, Path(tmp)) as url:
        for provider in args.providers.split(","):
            totals: Counter[str] = Counter()
            for number in range(1, args.trials + 1):
                kill_at = rng.randint(args.messages // 20, args.messages * 19 // 20)
                result = trial(url, Path(tmp), provider, args.messages, number, kill_at)
                log(f"{provider} trial {number}: {dict(result)}")
                totals.update(result)
            by_provider[provider] = totals
    total = sum(by_provider.values(), Counter())
    held = {name: counts["ambiguous"] for name, counts in by_provider.items()}
    explanation = (
        "Ambiguous rows are the messages claimed by a killed process whose answer was not yet written: "
        "the request may or may not have reached the provider. VK drops a repeated random_id (the send's "
        "ledger-allocated dedup_id, kept on its row), so the resuming run resends them safely and none stay held "
        f"(held at the end: {held}). Telegram has no idempotency key, so they stay held for a status check or "
        f"an operator: {total['ambiguous_received']} of them had in fact reached the sandbox, "
        f"{total['ambiguous_not_received']} had not (claimed but not yet sent when the process died)."
    )
    summary = {
        "trials": args.trials * len(by_provider),
        "messages_per_trial": args.messages,
        "duplicates": total["duplicates"],
        "lost": total["lost"],
        "ambiguous": total["ambiguous"],
        "sent_not_received": total["sent_not_received"],
        "explanation": explanation,
        "by_provider": {name: dict(counts) for name, counts in by_provider.items()},
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
