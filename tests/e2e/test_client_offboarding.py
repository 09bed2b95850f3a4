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
import logging
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]


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
# On Airflow 3.3 the ApprovalOperator parks its task in AWAITING_INPUT, and `dag.test()` keeps the
# run alive until a response is recorded from outside (airflow/sdk/definitions/dag.py). So the run
# goes in a thread, and this thread answers the way Airflow does: the Core API's own endpoint
# function (`update_hitl_detail`, what Required Actions calls) for a person's answer, and the
# scheduler's own timeout sweep (`check_awaiting_input_timeouts`) for nobody answering.


class _Approver:
    """The user the Core API hands `update_hitl_detail` (its `GetUserDep`)."""

    def get_id(self) -> str:
        return "approver-1"

    def get_name(self) -> str:
        return "approver"


def _run_and_answer(stack, answer, conf: dict) -> Any:
    """`dag.test()` in this (main) thread, as the task runner's signals need; a second thread
    waits for the approval to park in AWAITING_INPUT and answers it through Airflow."""
    import threading
    import time

    from airflow.dag_processing.dagbag import DagBag
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from airflow.utils.state import TaskInstanceState

    bag = DagBag(dag_folder=str(REPO / "dags" / "client_offboarding.py"))
    assert not bag.import_errors, bag.import_errors
    dag = bag.dags["client_offboarding"]
    answered: list[str] = []
    errors: list[BaseException] = []
    stop = threading.Event()
    with create_session() as session:  # this test's run is the one not there yet
        earlier = set(
            session.scalars(
                sa.select(TaskInstance.run_id).where(TaskInstance.dag_id == "client_offboarding")
            )
        )

    def parked(session) -> Any:
        return session.scalars(
            sa.select(TaskInstance).where(
                TaskInstance.dag_id == "client_offboarding",
                TaskInstance.task_id == "approve",
                TaskInstance.state == TaskInstanceState.AWAITING_INPUT,
                TaskInstance.run_id.not_in(earlier or {""}),
            )
        ).first()

    def answer_when_parked() -> None:
        deadline = time.monotonic() + 240
        try:
            while not stop.is_set() and time.monotonic() < deadline:
                with create_session() as session:
                    ti = parked(session)
                    if ti is not None:
                        answer(session, ti)
                        answered.append(ti.run_id)
                        return
                time.sleep(0.5)
        except BaseException as exc:
            errors.append(exc)
        # never answered: fail the parked step, or dag.test() would wait for it forever
        with create_session() as session:
            ti = parked(session)
            if ti is not None:
                ti.state = TaskInstanceState.FAILED

    thread = threading.Thread(target=answer_when_parked, daemon=True)
    thread.start()
    try:
        run = dag.test(run_conf=conf)
    finally:
        stop.set()
        thread.join(timeout=30)
    assert not errors, errors
    assert answered == [run.run_id], "the approval was never reached or answered"
    return run


def _answer(option: str):
    def answer(session, ti) -> None:
        from airflow.api_fastapi.core_api.datamodels.hitl import UpdateHITLDetailPayload
        from airflow.api_fastapi.core_api.routes.public.hitl import update_hitl_detail

        update_hitl_detail(
            dag_id=ti.dag_id,
            dag_run_id=ti.run_id,
            task_id=ti.task_id,
            update_hitl_detail_payload=UpdateHITLDetailPayload(chosen_options=[option]),
            user=_Approver(),
            session=session,
        )

    return answer


_approve = _answer("Approve")


def _time_out(session, ti) -> None:
    """The 3-day response timeout, passed: the scheduler's sweep takes the default (Reject)."""
    from datetime import UTC, datetime, timedelta
    from types import SimpleNamespace

    from airflow.jobs.scheduler_job_runner import SchedulerJobRunner

    ti.trigger_timeout = datetime.now(UTC) - timedelta(seconds=1)
    session.flush()
    SchedulerJobRunner.check_awaiting_input_timeouts(
        SimpleNamespace(log=logging.getLogger("scheduler")), session=session
    )


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
    run = _run_and_answer(stack, _approve, {"dry_run": False})
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
    run = _run_and_answer(stack, answer, {"dry_run": False})
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
