"""The client_offboarding DAG through Airflow (dag.test): a manual run is a dry run.

The seeded world's churned client ended its contract 180 days before the as-of date. A manual
run with the form's defaults plans (counts per table, log store, recordings), skips the approval
and the execution (a dry run never asks a person and never acts), writes its report and
summary, and changes nothing in the CRM. The approved path is tested on the job functions
(tests/reliability/test_offboarding.py); the wiring in tests/dags/test_client_offboarding.py.
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
    import threading
    import time

    from airflow.dag_processing.dagbag import DagBag
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from airflow.utils.state import TaskInstanceState

    bag = DagBag(dag_folder=str(REPO / "dags" / "client_offboarding.py"))
    assert not bag.import_errors, bag.import_errors
    dag = bag.dags["client_offboarding"]
    out: dict[str, Any] = {}

    def run() -> None:
        try:
            out["run"] = dag.test(run_conf=conf)
        except BaseException as exc:  # surfaced below
            out["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 300
    answered = False
    while thread.is_alive() and time.monotonic() < deadline:
        with create_session() as session:
            ti = session.scalars(
                sa.select(TaskInstance).where(
                    TaskInstance.dag_id == "client_offboarding",
                    TaskInstance.task_id == "approve",
                    TaskInstance.state == TaskInstanceState.AWAITING_INPUT,
                )
            ).first()
            if ti is not None and not answered:
                answer(session, ti)
                answered = True
        time.sleep(1)
    thread.join(timeout=120)
    assert "error" not in out, out.get("error")
    assert answered and not thread.is_alive(), "the approval was never reached or answered"
    return out["run"]


def _approve(session, ti) -> None:
    from airflow.api_fastapi.core_api.datamodels.hitl import UpdateHITLDetailPayload
    from airflow.api_fastapi.core_api.routes.public.hitl import update_hitl_detail

    update_hitl_detail(
        dag_id=ti.dag_id,
        dag_run_id=ti.run_id,
        task_id=ti.task_id,
        update_hitl_detail_payload=UpdateHITLDetailPayload(chosen_options=["Approve"]),
        user=_Approver(),
        session=session,
    )


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


def test_no_answer_takes_reject_and_alerts(stack, monkeypatch):
    from compliance.core import alerts

    sent: list[alerts.Alert] = []
    monkeypatch.setenv("COMPLIANCE_ALERT_SLACK_CONN", "slack_alerts")
    monkeypatch.setattr(
        alerts,
        "dispatch",
        lambda alert, settings, senders, *a, **k: sent.append(alert) or ["slack"],
    )
    before = _counts(stack.db_url)
    run = _run_and_answer(stack, _time_out, {"dry_run": False})
    assert run.state == "success"
    states = {ti.task_id: ti.state for ti in run.get_task_instances()}
    assert states["approve"] == "success" and states["execute"] == "skipped"
    assert states["alert_not_approved"] == "success"
    assert _counts(stack.db_url) == before  # nothing deleted
    (alert,) = [a for a in sent if a.kind == "offboarding"]
    assert "not approved" in alert.subject and "nobody answered" in alert.body
