"""Operators' decisions on ambiguous sends (resolve_ambiguous_sends_job), on a real Dagster
instance with the demo campaign sent to the provider sandbox through the real gateway.

Rows a run left claimed when it died are ambiguous on the next run and held; the operator marks
them sent, failed, or allowed to be sent again, by send id or for a whole campaign. Every decision
is recorded (who, run, when, why) and shown; no_ambiguous_sends goes green once none are left.
"""

from __future__ import annotations

import dagster as dg
import sqlalchemy as sa
from flow import metadata, run_pipeline, running_stack

from definitions import defs
from orchestrator_assets.sends.ledger import ABANDONED
from resources.opstore import OperationalStore
from resources.opstore_schema import deliveries, send_decisions, sends

CAMPAIGN = "black_friday_2026"
OP = "decide_ambiguous_sends"
CHECK = dg.AssetCheckKey(dg.AssetKey(["sends", "campaign_sends"]), "no_ambiguous_sends")


def decide(instance, operator: str, decisions: list[dict], raise_on_error: bool = True) -> dg.ExecuteInProcessResult:
    job = defs.resolve_job_def("resolve_ambiguous_sends_job")
    config = {"ops": {OP: {"config": {"operator": operator, "decisions": decisions}}}}
    return job.execute_in_process(instance=instance, partition_key="demo", run_config=config, raise_on_error=raise_on_error)


def ledger(engine) -> dict[str, sa.Row]:
    with engine.connect() as conn:
        return {row.send_id: row for row in conn.execute(sa.select(sends).where(sends.c.tenant == "demo"))}


def decision_rows(engine) -> list[sa.Row]:
    with engine.connect() as conn:
        return list(conn.execute(sa.select(send_decisions).order_by(send_decisions.c.id)))


def output_metadata(result: dg.ExecuteInProcessResult) -> dict:
    [event] = [e for e in result.all_events if e.event_type_value == "STEP_OUTPUT"]
    return {key: value.value for key, value in event.event_specific_data.metadata.items()}


def latest_check(instance) -> tuple[bool, dict]:
    [record] = instance.event_log_storage.get_asset_check_execution_history(CHECK, limit=1)
    evaluation = record.event.dagster_event.event_specific_data
    return evaluation.passed, {key: value.value for key, value in evaluation.metadata.items()}


def test_operator_decisions_resolve_ambiguous_sends(algor_home, instance, monkeypatch):
    with running_stack(monkeypatch) as stack:
        run_pipeline(instance, "demo")
        engine = OperationalStore().engine()
        with engine.connect() as conn:
            chosen = (
                conn.execute(
                    sa.select(sends.c.send_id).where(sends.c.tenant == "demo", sends.c.status == "sent").order_by(sends.c.channel, sends.c.send_id).limit(5)
                )
                .scalars()
                .all()
            )
            final = conn.execute(sa.select(sends.c.send_id).where(sends.c.status == "sent", sends.c.send_id.not_in(chosen)).limit(1)).scalar_one()
        a, b, c, d, e = chosen
        with engine.begin() as conn:  # a run died with these five requests out and no answers written
            conn.execute(
                sa.update(sends)
                .where(sends.c.send_id.in_(chosen))
                .values(status="claimed", run_id="a-run-that-died", provider_message_id=None, finished_at=None, warehouse_synced_at=None)
            )
        received = {p: len(stack.sandbox_messages(p)) for p in ("telegram", "mailgun")}

        again = run_pipeline(instance, "demo")
        assert metadata(again, "sends/campaign_sends")["ambiguous_held"] == 5
        passed, shown = latest_check(instance)
        assert not passed and shown["ambiguous_in_ledger"] == 5 and all(send_id in shown["ambiguous_sends"] for send_id in chosen)
        before = ledger(engine)

        # Mistakes are refused whole, each named, and change nothing.
        bad = decide(
            instance,
            " ",
            [
                {"send_id": "no-such-send", "decision": "mark_sent", "reason": "x"},
                {"send_id": final, "decision": "mark_failed", "reason": "x"},
                {"send_id": a, "decision": "resend", "provider_message_id": "SM1", "reason": "x"},
                {"send_id": b, "campaign": CAMPAIGN, "decision": "mark_failed", "reason": "x"},
                {"send_id": c, "decision": "mark_sent", "reason": "  "},
                {"campaign": "no_such_campaign", "decision": "mark_failed", "reason": "x"},
                {"send_id": d, "decision": "mark_failed", "reason": "x"},
                {"campaign": CAMPAIGN, "decision": "mark_failed", "reason": "x"},
            ],
            raise_on_error=False,
        )
        assert not bad.success
        [failure] = [event for event in bad.all_events if event.event_type_value == "STEP_FAILURE"]
        assert "8 problem(s) with the decisions for tenant 'demo'; nothing was changed" in str(failure.event_specific_data.error)
        problems = failure.event_specific_data.user_failure_data.metadata["problems"].value
        for expected in (
            "| operator | say who decides",
            "| decisions[0] | no send 'no-such-send' in tenant 'demo'",
            f"| decisions[1] | send {final} is sent, not ambiguous",
            "| decisions[2] | provider_message_id belongs to mark_sent of one send_id",
            "| decisions[3] | name exactly one of send_id",
            "| decisions[4] | reason is empty",
            "| decisions[5] | campaign 'no_such_campaign' has no ambiguous sends",
            f"| decisions[7] | send {d} already has a decision in this list",
        ):
            assert expected in problems, expected
        assert ledger(engine) == before and decision_rows(engine) == []

        # One decision of each kind, by send id.
        first = decide(
            instance,
            "anna@ops.example.ru",
            [
                {"send_id": a, "decision": "mark_sent", "provider_message_id": "confirmed-4711", "reason": "provider dashboard shows it delivered"},
                {"send_id": b, "decision": "mark_failed", "reason": "provider has no record of it"},
                {"send_id": c, "decision": "resend", "reason": "provider has no record; the customer wants it"},
            ],
        )
        rows = ledger(engine)
        assert (rows[a].status, rows[a].provider_message_id, rows[a].error) == ("sent", "confirmed-4711", None)
        assert (rows[b].status, rows[b].error_class) == ("failed", "operator")
        assert rows[b].error == "marked failed by anna@ops.example.ru: provider has no record of it"
        assert rows[c].status == "resend" and rows[c].send_id == c
        assert rows[a].warehouse_synced_at and rows[b].warehouse_synced_at and not rows[c].warehouse_synced_at  # published now
        with engine.connect() as conn:
            assert conn.execute(sa.select(deliveries.c.status).where(deliveries.c.send_id == a)).scalar_one()
        recorded = decision_rows(engine)
        assert [(r.send_id, r.decision, r.operator, r.run_id, r.previous_error) for r in recorded] == [
            (a, "mark_sent", "anna@ops.example.ru", first.run_id, ABANDONED),
            (b, "mark_failed", "anna@ops.example.ru", first.run_id, ABANDONED),
            (c, "resend", "anna@ops.example.ru", first.run_id, ABANDONED),
        ]
        assert all(r.decided_at is not None and r.reason for r in recorded)
        shown = output_metadata(first)
        assert (shown["mark_sent"], shown["mark_failed"], shown["resend"], shown["still_ambiguous"]) == (1, 1, 1, 2)
        assert all(piece in shown["decisions"] for piece in (a, "confirmed-4711", "anna@ops.example.ru", first.run_id, "provider has no record of it"))
        passed, check = latest_check(instance)
        assert not passed and check["ambiguous_in_ledger"] == 2  # d and e still wait

        # The rest of the campaign at once: the check goes green.
        decide(instance, "boris@ops.example.ru", [{"campaign": CAMPAIGN, "decision": "mark_failed", "reason": "outage window, nothing left"}])
        assert {ledger(engine)[x].status for x in (d, e)} == {"failed"}
        passed, check = latest_check(instance)
        assert passed and check["ambiguous_in_ledger"] == 0
        # and says so in words, not with a table header over no rows
        assert check["ambiguous_sends"] == "_No ambiguous sends: nothing waits for an operator's decision._"

        # The next run sends the one the operator allowed, once more under its send id, and nothing else.
        third = run_pipeline(instance, "demo")
        sent = metadata(third, "sends/campaign_sends")
        assert (sent["sent"], sent["ambiguous_held"]) == (1, 0)
        after = ledger(engine)
        assert after[c].status == "sent" and after[c].provider_message_id and after[c].run_id == third.run_id
        assert {after[x].status for x in (a, b, d, e)} == {"sent", "failed"} and after[a].provider_message_id == "confirmed-4711"
        resent = before[c].provider
        assert len(stack.sandbox_messages(resent)) == received[resent] + 1
        assert len(stack.sandbox_messages("telegram")) + len(stack.sandbox_messages("mailgun")) == sum(received.values()) + 1
        passed, _ = latest_check(instance)
        assert passed
