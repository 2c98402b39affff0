"""The A/B tests' looks: per-arm results, the verdict, and what the rollout remainder gets."""

import datetime as dt

import dagster as dg
import sqlalchemy as sa
from pydantic import Field

from orchestrator_assets.experiments.counts import arm_counts, assignments
from orchestrator_assets.experiments.statistics import ArmCounts, Comparison, Verdict, evaluate
from orchestrator_assets.groups import DELIVERIES, EXPERIMENTS, SENDS
from orchestrator_assets.partitions import tenant_partitions
from orchestrator_assets.tables import markdown_table
from policies.campaigns import Campaign
from policies.experiments import HOLDOUT
from policies.loader import load_bundle
from resources.opstore import OperationalStore
from resources.opstore_schema import experiment_looks
from resources.warehouse import EXPERIMENT_RESULTS_TABLE, WAREHOUSE_POOL, Warehouse

RESULT_COLUMNS = (
    "tenant", "campaign", "look", "looks", "arm", "role", "goal", "n", "successes", "rate", "lift", "lift_low", "lift_high",
    "z", "boundary", "p_value", "significant", "decision", "winner", "evaluated_at",
)  # fmt: skip
TABLE_HEADERS = ["arm", "sent", "goal reached", "rate", "lift vs control (repeated CI)", "z", "|z| boundary", "p (nominal) / needed", "significant"]


class ExperimentSelection(dg.Config):
    campaign: str = Field(default="", description="Empty = every campaign of the tenant with an experiment")


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{value * 100:.2f}%"


def _points(value: float | None) -> str:
    """A difference of rates, in percentage points."""
    return "—" if value is None else f"{value * 100:+.2f} pp"


def result_table(comparisons: tuple[Comparison, ...], holdout: ArmCounts | None) -> str:
    rows = []
    for i, c in enumerate(comparisons):
        if i == 0:
            rows.append((f"{c.name} (control)", c.n, c.successes, _pct(c.rate), "", "", "", "", ""))
            continue
        lift = "—" if c.lift is None else f"{_points(c.lift)} [{_points(c.lift_low)}, {_points(c.lift_high)}]"
        rows.append(
            (c.name, c.n, c.successes, _pct(c.rate), lift, f"{c.z:.2f}", f"{c.boundary:.2f}", f"{c.p_value:.4f} / {c.p_threshold:.4f}", "yes" if c.significant else "no")
        )
    if holdout is not None:
        rows.append((f"{HOLDOUT} (sent nothing)", holdout.n, holdout.successes, _pct(holdout.successes / holdout.n if holdout.n else None), "", "", "", "", ""))
    return markdown_table(TABLE_HEADERS, rows)


def _rollout_variant(campaign: Campaign, verdict: Verdict) -> str | None:
    if verdict.winner is not None:
        return verdict.winner
    if verdict.final and campaign.experiment.if_no_winner == "send_control":
        return campaign.experiment.control
    return None


def _warehouse_rows(tenant: str, campaign: Campaign, verdict: Verdict, holdout: ArmCounts | None, now: dt.datetime) -> list[tuple]:
    experiment = campaign.experiment
    head = (tenant, campaign.name, verdict.look, verdict.looks)
    tail = (verdict.decision, verdict.winner or "", now)
    rows = [
        (*head, c.name, "control" if i == 0 else "variant", experiment.goal, c.n, c.successes, c.rate, c.lift, c.lift_low, c.lift_high,
         c.z, c.boundary, c.p_value, int(c.significant), *tail)
        for i, c in enumerate(verdict.comparisons)
    ]  # fmt: skip
    if holdout is not None:
        rate = holdout.successes / holdout.n if holdout.n else None
        rows.append((*head, HOLDOUT, HOLDOUT, experiment.goal, holdout.n, holdout.successes, rate, None, None, None, None, None, None, 0, *tail))
    return rows


@dg.asset(
    key=[EXPERIMENTS, "experiment_results"],
    group_name=EXPERIMENTS,
    partitions_def=tenant_partitions,
    pool=WAREHOUSE_POOL,
    deps=[dg.AssetKey([SENDS, "campaign_sends"]), dg.AssetKey([DELIVERIES, "delivery_events"])],
)
def experiment_results(context: dg.AssetExecutionContext, config: ExperimentSelection, opstore: OperationalStore, warehouse: Warehouse) -> dg.MaterializeResult:
    """One look at each running A/B test of the tenant: per-arm sent and goal counts, the test's
    verdict at this look, and, with a winner (or a final no-winner and ``send_control``), the
    variant the campaign's next run sends its rollout remainder.

    Grain: one row per (tenant, campaign, look, arm) in the warehouse's ``experiment_results``, one
    row per look in the operational store's ``experiment_looks``. Source: the campaign's
    ``experiment_assignments`` × its warehouse events. A test that has ended takes no more looks;
    one with nobody sent yet takes none either (a look spent on no data is a look lost).
    """
    tenant = context.partition_key
    campaigns = [c for c in load_bundle().campaigns[tenant].values() if c.experiment is not None and config.campaign in ("", c.name)]
    if config.campaign and not campaigns:
        raise dg.Failure(f"tenant {tenant!r} has no campaign {config.campaign!r} with an experiment")
    engine = opstore.engine()
    now = dt.datetime.now(dt.UTC)
    verdicts: list[tuple] = []
    tables: dict[str, dg.MetadataValue] = {}
    results: list[tuple] = []
    with warehouse.client() as client:
        warehouse.ensure_schema(client)
        for campaign in campaigns:
            experiment = campaign.experiment
            with engine.connect() as conn:
                placed = assignments(conn, tenant, campaign.name)
                last = conn.execute(
                    sa.select(experiment_looks).where(experiment_looks.c.tenant == tenant, experiment_looks.c.campaign == campaign.name).order_by(experiment_looks.c.look.desc()).limit(1)
                ).first()
            if last is not None and (last.final or last.look >= experiment.looks):
                verdicts.append((campaign.name, f"{last.look} of {last.looks}", f"{last.decision} (ended)", last.rollout_variant or "nothing"))
                continue
            variants, holdout = arm_counts(client, tenant, campaign.name, experiment, placed)
            if any(arm.n == 0 for arm in variants):
                verdicts.append((campaign.name, "—", "not started: a variant has nobody sent yet", "nothing"))
                continue
            verdict = evaluate(variants, (last.look + 1) if last else 1, experiment.looks, experiment.alpha)
            rollout = _rollout_variant(campaign, verdict)
            with engine.begin() as conn:
                conn.execute(
                    sa.insert(experiment_looks).values(
                        tenant=tenant, campaign=campaign.name, look=verdict.look, looks=verdict.looks, decision=verdict.decision, winner=verdict.winner,
                        final=verdict.final, rollout_variant=rollout, run_id=context.run.run_id, evaluated_at=now,
                    )
                )  # fmt: skip
            results += _warehouse_rows(tenant, campaign, verdict, holdout, now)
            verdicts.append((campaign.name, f"{verdict.look} of {verdict.looks}", verdict.decision, rollout or "nothing yet"))
            on = f" on {experiment.goal_channel}" if experiment.goal_channel else ""
            heading = f"goal: {experiment.goal}{on} within {experiment.window_hours} h of the send · α = {experiment.alpha} · look {verdict.look} of {verdict.looks}"
            tables[campaign.name] = dg.MetadataValue.md(f"{heading}\n\n{result_table(verdict.comparisons, holdout)}")
        if results:
            client.insert(EXPERIMENT_RESULTS_TABLE, results, column_names=list(RESULT_COLUMNS))
    context.log.info(f"{len(campaigns)} experiment(s): {[v[2] for v in verdicts]}")
    return dg.MaterializeResult(
        metadata={
            "verdicts": dg.MetadataValue.md(markdown_table(["campaign", "look", "decision", "rollout remainder gets"], verdicts, empty="The tenant has no A/B test.")),
            "looks_taken": len(tables),
            **tables,
        }
    )
