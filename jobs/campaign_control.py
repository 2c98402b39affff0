"""Pause, resume or cancel a campaign from the launchpad (``campaign_control_job``).

Run config, for example::

    ops:
      control_campaign:
        config:
          tenant: demo
          campaign: black_friday_2026
          action: pause          # pause | resume | cancel
          operator: anna@ops.example.ru
          reason: "wrong discount in the text"

A pause takes effect at the send path's next claim batch (a few hundred messages at most, those
already handed to providers are answered and recorded); a resume lets ``campaign_resume_sensor``
re-launch the runs the pause halted. Every change is audited (``campaign.<action>``).
"""

import datetime as dt
from typing import Literal

import dagster as dg
from pydantic import Field

from orchestrator_assets.campaign_control import Action, RefusedChange, change_state
from policies.loader import load_bundle
from resources.opstore import OperationalStore


class CampaignControlConfig(dg.Config):
    tenant: str = Field(description="The campaign's tenant (tenants.yaml)")
    campaign: str = Field(description="The campaign's name (campaigns.yaml)")
    action: Literal["pause", "resume", "cancel"] = Field(description="pause (resumable), resume (a paused one), cancel (final)")
    operator: str = Field(description="Who acts (name or e-mail); recorded in the audit log")
    reason: str = Field(description="Why; recorded in the audit log and shown in the campaign's send summary")


@dg.op(description="Change one campaign's state (active / paused / cancelled), audited, in one transaction.")
def control_campaign(context: dg.OpExecutionContext, config: CampaignControlConfig, opstore: OperationalStore) -> str:
    campaigns = load_bundle().campaigns.get(config.tenant)
    if campaigns is None:
        raise dg.Failure(f"tenant {config.tenant!r} is not defined in tenants.yaml")
    if config.campaign not in campaigns:
        raise dg.Failure(f"campaign {config.campaign!r} is not defined for tenant {config.tenant!r} (known: {', '.join(sorted(campaigns))})")
    try:
        with opstore.engine().begin() as conn:
            before, after = change_state(
                conn, config.tenant, config.campaign, Action(config.action), actor=config.operator, reason=config.reason,
                now=dt.datetime.now(dt.UTC), run_id=context.run.run_id,
            )  # fmt: skip
    except RefusedChange as refused:
        raise dg.Failure(f"{refused}; nothing was changed") from None
    context.log.info(f"campaign {config.tenant}/{config.campaign}: {before} -> {after} by {config.operator}")
    context.add_output_metadata({"tenant": config.tenant, "campaign": config.campaign, "from": str(before), "to": str(after), "reason": config.reason})
    return str(after)


@dg.job(description="Pause, resume or cancel one campaign (audited); the send path stops between claim batches, resume continues with no duplicate.")
def campaign_control_job():
    control_campaign()
