"""The live count job: how many contacts a draft rule (or a segment) selects now, saving nothing.

Run config, for example::

    ops:
      count_segment_rule:
        config:
          tenant: demo
          rule: |
            all:
              - {field: city, op: in, value: [Москва, Санкт-Петербург]}
              - not: {behaviour: {event: complained}}
"""

import dagster as dg
from pydantic import Field

from orchestrator_assets.segment_behaviour import warehouse_client
from orchestrator_assets.segment_count import draft_rule, live_count
from orchestrator_assets.segment_sample import sample_table
from policies.loader import PolicyError
from resources.opstore import OperationalStore
from resources.warehouse import WAREHOUSE_POOL, Warehouse


class LiveCountConfig(dg.Config):
    tenant: str = Field(description="The tenant whose contacts to count")
    rule: str | None = Field(default=None, description="A segment rule as YAML or JSON text (docs/segments.md)")
    segment: str | None = Field(default=None, description="Or: the name of a segment in segments.yaml")


@dg.op(pool=WAREHOUSE_POOL, description="Count the contacts the rule selects now and show a masked sample; writes nothing.")
def count_segment_rule(context: dg.OpExecutionContext, config: LiveCountConfig, opstore: OperationalStore, warehouse: Warehouse) -> int:
    try:
        rule = draft_rule(config.tenant, config.rule, config.segment)
    except (PolicyError, ValueError) as exc:
        raise dg.Failure(description=str(exc)) from None
    with warehouse_client(warehouse, rule) as client:
        result = live_count(opstore.engine(), client, config.tenant, rule)
    context.add_output_metadata(
        {
            "tenant": config.tenant,
            "count": result.count,
            "seconds": round(result.seconds, 3),
            "sample": dg.MetadataValue.md(sample_table(result.sample)),
        }
    )
    return result.count


@dg.job(description="Live count: the contacts a draft segment rule (or a defined segment) selects now, with a masked sample. Saves nothing.")
def segment_live_count_job():
    count_segment_rule()
