"""The client_offboarding DAG through Airflow (dag.test), the approval answered for real.

The seeded world's churned client ended its contract 180 days before the as-of date. A manual
run with the form's defaults plans (counts per table, log store, recordings), skips the approval
and the execution (a dry run never asks a person and never acts), writes its report and
summary, and changes nothing in the CRM. A non-dry run parks at the approval: approved through
the Core API's endpoint function, it deletes the client and tells its sub-processors; left
unanswered past its timeout (the scheduler's own sweep), it takes Reject and alerts staff.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
import sqlalchemy as sa

from tests.e2e import hitl
from tests.e2e.hitl import Key

pytestmark = pytest.mark.slow


def _counts(url: str) -> dict[str, int]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return {
                t: conn.execute(sa.text(f"select count(*) from {t}")).scalar()
                for t in ("contacts", "messages", "email_events", "call_recordings")
            }
    finally:
        engine.dispose()


def test_manual_run_is_a_dry_run(stack):
    before = _counts(stack.db_url)
    run = stack.run_dag("client_offboarding", {})
    assert run.state == "success"
    states = {ti.task_id: ti.state for ti in run.get_task_instances()}
    assert states["plan"] == "success"
    assert states["approve"] == "skipped" and states["execute"] == "skipped"
    summary = json.loads(
        stack.s3.get_object(Bucket=stack.bucket, Key="summaries/client_offboarding.json")[
            "Body"
        ].read()
    )
    assert summary["dry_run"] is True and len(summary["clients"]) == 1
    assert summary["totals"]["rows"] > 0
    report = json.loads(
        stack.s3.get_object(Bucket=stack.bucket, Key=summary["report_key"])["Body"].read()
    )
    assert report["report"][0]["tables"]["crm.contacts"] > 0
    assert _counts(stack.db_url) == before


# -- the approval answered for real -------------------------------------------------------------
#
# The run goes through tests/e2e/hitl.py: `dag.test()` in this thread, a second thread answers the
# parked approval the way Airflow does: the Core API's own endpoint function (`update_hitl_detail`,
# what Required Actions calls) for a person's answer, and the scheduler's own timeout sweep
# (`check_awaiting_input_timeouts`) for nobody answering (the 3-day response timeout, passed).


class _Approver:
    """The user the Core API hands `update_hitl_detail` (its `GetUserDep`)."""

    def get_id(self) -> str:
        return "approver-1"

    def get_name(self) -> str:
        return "approver"


def _run_and_answer(answer: Callable[[Key], Any], conf: dict) -> Any:
    """The run, its approval answered with `answer`; fails unless that run's step parked."""
    run, parked = hitl.run_answering("client_offboarding", conf, answer)
    assert [key[1] for key in parked] == [run.run_id], "the approval was never reached"
    return run


def _answer(option: str) -> Callable[[Key], None]:
    def answer(key: Key) -> None:
        from airflow.api_fastapi.core_api.datamodels.hitl import UpdateHITLDetailPayload
        from airflow.api_fastapi.core_api.routes.public.hitl import update_hitl_detail
        from airflow.utils.session import create_session

        with create_session() as session:
            update_hitl_detail(
                dag_id=key[0],
                dag_run_id=key[1],
                task_id=key[2],
                update_hitl_detail_payload=UpdateHITLDetailPayload(chosen_options=[option]),
                user=_Approver(),
                session=session,
            )

    return answer


_approve = _answer("Approve")
_time_out = hitl.time_out


def _client_rows(url: str, client: str) -> int:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return conn.execute(
                sa.text("select count(*) from contacts where cast(client_id as text) = :c"),
                {"c": client},
            ).scalar()
    finally:
        engine.dispose()


def test_an_approved_run_deletes_the_client(stack, esp_webhook):
    before = _counts(stack.db_url)
    run = _run_and_answer(_approve, {"dry_run": False})
    assert run.state == "success"
    states = {ti.task_id: ti.state for ti in run.get_task_instances()}
    assert states["approve"] == "success" and states["execute"] == "success"
    assert states["alert_not_approved"] == "skipped"  # approved: nothing to alert
    summary = json.loads(
        stack.s3.get_object(Bucket=stack.bucket, Key="summaries/client_offboarding.json")[
            "Body"
        ].read()
    )
    assert summary["done"] == 1 and summary["dry_run"] is False
    receipts = stack.s3.list_objects_v2(Bucket=stack.bucket, Prefix="receipts/offboarding/")
    (key,) = [o["Key"] for o in receipts["Contents"]]
    client = key.split("/")[2]
    assert _client_rows(stack.db_url, client) == 0
    assert 0 < _counts(stack.db_url)["contacts"] < before["contacts"]
    notices = [b for b in esp_webhook if b.get("type") == "contract_end"]
    assert [n["client_id"] for n in notices] == [client]


@pytest.mark.parametrize("answer", [_time_out, _answer("Reject")], ids=["timeout", "rejected"])
def test_no_approval_skips_execute_and_alerts(stack, monkeypatch, answer):
    from compliance.core import alerts
    from compliance.offboarding import notify

    sent: list[alerts.Alert] = []
    monkeypatch.setenv("COMPLIANCE_ALERT_SLACK_CONN", "slack_alerts")
    monkeypatch.setattr(
        alerts,
        "dispatch",
        lambda alert, settings, senders, *a, **k: sent.append(alert) or ["slack"],
    )
    before = _counts(stack.db_url)
    run = _run_and_answer(answer, {"dry_run": False})
    assert run.state == "success"
    states = {ti.task_id: ti.state for ti in run.get_task_instances()}
    assert states["approve"] == "success" and states["execute"] == "skipped"
    assert states["alert_not_approved"] == "success"
    assert _counts(stack.db_url) == before  # nothing deleted
    (alert,) = [a for a in sent if a.kind == "offboarding"]
    assert "not approved" in alert.subject and notify.WHY in alert.body
    summary = json.loads(
        stack.s3.get_object(Bucket=stack.bucket, Key="summaries/client_offboarding.json")[
            "Body"
        ].read()
    )
    assert f"Clients: {', '.join(summary['clients'])}." in alert.body


def test_a_failed_plan_fails_the_run(airflow_db, monkeypatch):
    """The run's state comes from its leaves (tests/dags/test_client_offboarding.py): a plan
    that fails must show a failed run, not a green one whose only leaf was the all_skipped
    alert. No world is needed: the plan fails before it reads anything."""
    from airflow.dag_processing.dagbag import DagBag

    from compliance import runtime
    from compliance.jobs import offboarding

    def broken(*_args, **_kwargs):
        raise RuntimeError("the plan failed")

    monkeypatch.setattr(runtime, "context", lambda *_a, **_k: None)
    monkeypatch.setattr(offboarding, "plan", broken)
    bag = DagBag(dag_folder=str(hitl.REPO / "dags" / "client_offboarding.py"))
    assert not bag.import_errors, bag.import_errors
    dag = bag.dags["client_offboarding"]
    for task in dag.tasks:  # fail now, not after two backed-off retries
        task.retries = 0
    run = dag.test(run_conf={"dry_run": False})
    states = {ti.task_id: ti.state for ti in run.get_task_instances()}
    assert states["plan"] == "failed"
    assert states["execute"] == "upstream_failed"
    assert states["alert_not_approved"] == "skipped"
    assert run.state == "failed"
