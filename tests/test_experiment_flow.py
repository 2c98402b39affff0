"""An A/B test end to end on real Dagster, the operational store, chDB and the provider sandbox:
the test's variants are sent, the results counted from the warehouse, the winner found and sent
to the rollout remainder once."""

from __future__ import annotations

import datetime as dt
import shutil

import dagster as dg
import sqlalchemy as sa
import yaml

from definitions import defs
from flow import metadata, run_pipeline, running_stack
from policies import loader
from policies.experiments import CONVERSION_EVENT, HOLDOUT, ROLLOUT
from resources import warehouse as wh
from resources.opstore import OperationalStore
from resources.opstore_schema import experiment_assignments, experiment_looks, sends
from sensors.experiments import experiment_rollout_sensor

CAMPAIGN = "black_friday_2026"
DEADLINES = ("только до воскресенья", "only until Sunday")  # in the challenger's subjects only (black_friday v2, RU and EN)


def _deadline(subject: str) -> bool:
    return any(words in subject for words in DEADLINES)


def _config_with_a_conversion_goal(tmp_path) -> str:
    config = tmp_path / "config"
    shutil.copytree(loader.DEFAULT_CONFIG_DIR, config)
    path = config / "campaigns.yaml"
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    data["campaigns"][0]["experiment"].update({"goal": "conversion:purchase", "goal_channel": None, "holdout": 0.1, "test_fraction": 0.5, "looks": 2})
    path.write_text(yaml.safe_dump(data, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return config


def _evaluate(instance: dg.DagsterInstance) -> dict:
    result = defs.resolve_job_def("experiment_evaluation_job").execute_in_process(instance=instance, partition_key="demo")
    assert result.success
    return metadata(result, "experiments/experiment_results")


def _sent_by_arm(conn: sa.Connection, channels: tuple[str, ...] = ("email",)) -> dict[str, set[int]]:
    """Contacts sent the campaign (on any of ``channels``), by arm."""
    query = (
        sa.select(experiment_assignments.c.arm, sends.c.contact_id)
        .join(sends, sa.and_(sends.c.contact_id == experiment_assignments.c.contact_id, sends.c.campaign == experiment_assignments.c.campaign))
        .where(sends.c.tenant == "demo", sends.c.campaign == CAMPAIGN, sends.c.channel.in_(channels), sends.c.status == "sent")
    )
    result: dict[str, set[int]] = {}
    for arm, contact_id in conn.execute(query):
        result.setdefault(arm, set()).add(contact_id)
    return result


def test_variants_sent_counted_and_the_winner_rolled_out_once(algor_home, instance, monkeypatch, tmp_path):
    monkeypatch.setattr(loader, "DEFAULT_CONFIG_DIR", _config_with_a_conversion_goal(tmp_path))
    with running_stack(monkeypatch) as stack:
        first = run_pipeline(instance, "demo")
        engine = OperationalStore().engine()
        with engine.connect() as conn:
            arms = {row.contact_id: row.arm for row in conn.execute(sa.select(experiment_assignments))}
            sent = _sent_by_arm(conn)
            exposed = _sent_by_arm(conn, ("email", "telegram"))  # the unit: a contact sent the campaign on any channel
        # Only the test was sent, each variant its own subject; holdout and rollout got nothing.
        assert set(sent) == {"control", "deadline"} and all(len(ids) > 20 for ids in sent.values())
        assert {HOLDOUT, ROLLOUT} <= set(arms.values())
        subjects = [m["subject"] for m in stack.sandbox_messages("mailgun")]
        assert sum(_deadline(s) for s in subjects) == len(sent["deadline"]) and len(subjects) == len(sent["control"]) + len(sent["deadline"])
        assert "| black_friday_2026 | rollout |" in metadata(first, "campaigns/campaign_messages")["experiments"]

        # Conversions as the gateway records them: every e-mail recipient of the challenger buys, one in ten of the control's.
        now = dt.datetime.now(dt.UTC)
        control_buyers = sorted(sent["control"])[::10]
        buyers = sorted(sent["deadline"]) + control_buyers
        wh.Warehouse().append_events(
            [("demo", f"purchase-{c}", CONVERSION_EVENT, "", "", "", "", c, "", "purchase", now) for c in buyers]
            # One after the window does not count; nor does one for another goal.
            + [("demo", "late", CONVERSION_EVENT, "", "", "", "", sorted(sent["control"])[1], "", "purchase", now + dt.timedelta(days=4)),
               ("demo", "other", CONVERSION_EVENT, "", "", "", "", sorted(sent["control"])[2], "", "signup", now)]
        )  # fmt: skip

        look = _evaluate(instance)
        assert "| black_friday_2026 | 1 of 2 | winner deadline | deadline |" in look["verdicts"]
        table = look[CAMPAIGN]
        assert f"| control (control) | {len(exposed['control'])} | {len(control_buyers)} |" in table
        assert f"| deadline | {len(exposed['deadline'])} | {len(sent['deadline'])} |" in table
        with wh.Warehouse().client() as client:
            rows = client.query(f"SELECT arm, n, successes, decision FROM {wh.EXPERIMENT_RESULTS_TABLE} ORDER BY arm").result_rows
        assert [(arm, decision) for arm, _, _, decision in rows] == [("control", "winner deadline"), ("deadline", "winner deadline"), ("holdout", "winner deadline")]

        # The rollout sensor asks for one run of the campaign; it sends the remainder the winner.
        context = dg.build_sensor_context(instance=instance, resources={"opstore": OperationalStore()})
        tick = experiment_rollout_sensor(context)
        (request,) = tick.run_requests
        job = defs.resolve_job_def("campaign_pipeline_job")
        rollout_run = job.execute_in_process(instance=instance, partition_key="demo", run_config=request.run_config, tags=request.tags, asset_selection=request.asset_selection)
        assert rollout_run.success
        with engine.connect() as conn:
            after = _sent_by_arm(conn)
        assert after["control"] == sent["control"] and after["deadline"] == sent["deadline"]  # the test is not sent again
        rolled_out = len(after[ROLLOUT])
        assert rolled_out > 20 and HOLDOUT not in after
        subjects = [m["subject"] for m in stack.sandbox_messages("mailgun")]
        assert sum(_deadline(s) for s in subjects) == len(sent["deadline"]) + rolled_out

        # Once: the sensor's next tick asks for nothing (a re-run would find every ledger row final), the test takes no more looks.
        assert metadata(rollout_run, "sends/campaign_sends")["skipped_already_sent"] > 0
        assert experiment_rollout_sensor(dg.build_sensor_context(instance=instance, cursor=tick.cursor, resources={"opstore": OperationalStore()})).run_requests == []
        assert "winner deadline (ended)" in _evaluate(instance)["verdicts"]
        with engine.connect() as conn:
            assert conn.execute(sa.select(sa.func.count()).select_from(experiment_looks)).scalar_one() == 1


def test_counts_take_the_providers_clock_for_clicks_and_the_window_for_everything(algor_home):
    """On chDB: a click stamped by the provider just before our `sent` counts, one past the window
    does not; a conversion before the send does not; only `goal_channel`'s sends and events count."""
    import pandas as pd

    from orchestrator_assets.experiments.counts import arm_counts
    from policies.experiments import Experiment

    sent_at = dt.datetime(2026, 11, 20, 9, 0, tzinfo=dt.UTC)
    later = sent_at + dt.timedelta(hours=1)

    def event(event_id, event_type, contact, at, channel="email", reason=""):
        return ("demo", event_id, event_type, event_id, CAMPAIGN if event_type != CONVERSION_EVENT else "", channel, "p", contact, "", reason, at)

    warehouse = wh.Warehouse()
    warehouse.append_events(
        [event(f"s{c}", "sent", c, sent_at) for c in (1, 2, 3, 4)]
        + [event("s5", "sent", 5, sent_at, channel="telegram")]
        + [event("c1", "clicked", 1, sent_at - dt.timedelta(milliseconds=400)),  # provider's clock: counts
           event("c2", "clicked", 2, sent_at + dt.timedelta(hours=73)),  # past the 72 h window
           event("c5", "clicked", 5, later, channel="telegram"),  # not the goal channel
           event("v3", CONVERSION_EVENT, 3, sent_at - dt.timedelta(minutes=5), reason="purchase"),  # before the send
           event("v4", CONVERSION_EVENT, 4, later, reason="purchase")]
    )  # fmt: skip
    placed = pd.DataFrame({"contact_id": [1, 2, 3, 4, 5, 6], "arm": ["a", "a", "b", "b", "b", HOLDOUT], "assigned_at": pd.Timestamp(sent_at)})
    experiment = {"variants": [{"name": "a"}, {"name": "b"}], "holdout": 0.1, "test_fraction": 0.9, "goal_channel": "email"}
    with warehouse.client() as client:
        clicks = arm_counts(client, "demo", CAMPAIGN, Experiment.model_validate(experiment | {"goal": "clicked"}), placed)
        purchases = arm_counts(client, "demo", CAMPAIGN, Experiment.model_validate(experiment | {"goal": "conversion:purchase"}), placed)
    assert [(a.name, a.n, a.successes) for a in clicks[0]] == [("a", 2, 1), ("b", 2, 0)]
    assert [(a.name, a.n, a.successes) for a in purchases[0]] == [("a", 2, 0), ("b", 2, 1)]
    assert (purchases[1].n, purchases[1].successes) == (1, 0)
