"""The live count: how many contacts a draft rule (or a defined segment) selects right now,
with a masked sample, saving nothing.

The same compiler as the ``segment_members`` asset, in a transaction that is always rolled back:
the temporary id tables of behaviour clauses, and even the tenant's keys when a tenant has none
yet, vanish with it, so a count can never change the store. Used by ``segment_live_count_job``
(launchpad config) and from a shell::

    python -m orchestrator_assets.segment_count --tenant demo --rule '{field: city, op: eq, value: Москва}'
    python -m orchestrator_assets.segment_count --tenant demo --rule-file draft.yaml
    python -m orchestrator_assets.segment_count --tenant demo --segment moscow_spb_ru

The CLI opens the embedded warehouse itself when the rule has a behaviour clause: chDB admits one
process at a time, so it waits for (or fails beside) a run that holds it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from orchestrator_assets.segment_behaviour import behaviour_sets, warehouse_client
from orchestrator_assets.segment_sample import masked_sample
from orchestrator_assets.segment_sql import member_ids, tenant_scope
from policies.loader import PolicyError, load_bundle, parse_rule
from policies.segments import Rule
from resources.opstore_schema import contacts
from resources.pii import tenant_cipher
from resources.warehouse import Warehouse


@dataclass(frozen=True)
class LiveCount:
    count: int
    sample: list[dict[str, Any]]
    seconds: float


def draft_rule(tenant: str, rule_text: str | None = None, segment: str | None = None) -> Rule:
    """The rule to count: ``rule_text`` (YAML or JSON) or the named segment's; exactly one."""
    if (rule_text is None) == (segment is None):
        raise ValueError("give exactly one of a rule (YAML/JSON text) or a segment name")
    bundle = load_bundle()
    if tenant not in bundle.tenants:
        raise ValueError(f"tenant {tenant!r} is not defined in tenants.yaml")
    if segment is not None:
        if segment not in bundle.segments[tenant]:
            raise ValueError(f"segment {segment!r} is not defined for tenant {tenant!r} (defined: {', '.join(sorted(bundle.segments[tenant])) or 'none'})")
        return bundle.segments[tenant][segment].rule
    return parse_rule(rule_text or "", bundle.tenants[tenant])


def live_count(engine: sa.Engine, client: Any, tenant: str, rule: Rule, now: dt.datetime | None = None) -> LiveCount:
    """Count and sample ``rule``'s contacts; ``client``: an open warehouse client (``warehouse_client``)."""
    now = now or dt.datetime.now(dt.UTC)
    started = time.perf_counter()
    with engine.connect() as conn:
        try:
            cipher = tenant_cipher(conn, tenant)
            with behaviour_sets(conn, client, tenant, rule, now) as sets:
                ids = member_ids(contacts, tenant, rule, cipher, tenant_scope(tenant, now, sets))
                count = conn.execute(sa.select(sa.func.count()).select_from(ids.subquery())).scalar_one()
                sample = masked_sample(conn, cipher, ids)
        finally:
            conn.rollback()
    return LiveCount(count, sample, time.perf_counter() - started)


def main(argv: list[str] | None = None) -> int:
    from resources.opstore import engine_for
    from resources.settings import get_settings

    parser = argparse.ArgumentParser(description="Count the contacts a segment rule selects now (saves nothing).")
    parser.add_argument("--tenant", required=True)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--rule", help="the rule as YAML or JSON text")
    source.add_argument("--rule-file", type=Path, help="a file holding the rule as YAML or JSON")
    source.add_argument("--segment", help="a segment defined in segments.yaml")
    args = parser.parse_args(argv)
    try:
        text = args.rule_file.read_text(encoding="utf-8") if args.rule_file else args.rule
        rule = draft_rule(args.tenant, text, args.segment)
    except (PolicyError, ValueError, OSError) as exc:
        print(exc, file=sys.stderr)
        return 2
    with warehouse_client(Warehouse(), rule) as client:
        result = live_count(engine_for(get_settings().database_url), client, args.tenant, rule)
    print(json.dumps({"tenant": args.tenant, "count": result.count, "sample": result.sample, "seconds": round(result.seconds, 3)}, ensure_ascii=False, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
