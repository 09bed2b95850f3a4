"""The client_offboarding DAG's approval step is Airflow's HITL `ApprovalOperator`, wired so
that nothing destructive runs without a person's approval (G4 Art. 28(3)(g); issue 18 item 4).

The e2e runs (tests/e2e/test_client_offboarding.py) answer the approval through Airflow's own
API function and its scheduler's timeout sweep; the job functions are tested on the world
(tests/reliability/test_offboarding*.py). This file proves the wiring they rely on: execute is
reachable only through the approval, the alert task runs only when the approval did not go
ahead, and execute, not the alert, is the leaf that decides a run's state.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def dag():
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(REPO / "dags" / "client_offboarding.py"))
    assert not bag.import_errors, bag.import_errors
    return bag.dags["client_offboarding"]


def test_execute_only_after_approval(dag):
    from airflow.providers.standard.operators.hitl import ApprovalOperator

    approve = dag.get_task("approve")
    assert isinstance(approve, ApprovalOperator)
    assert approve.upstream_task_ids == {"needs_approval"}
    assert approve.downstream_task_ids == {"approved"}
    approved = dag.get_task("approved")
    assert type(approved).__name__ == "EmptyOperator"
    assert approved.downstream_task_ids == {"execute", "alert_not_approved"}
    # every path from plan to execute goes through the approval
    execute = dag.get_task("execute")
    assert execute.upstream_task_ids == {"approved", "plan"}
    assert execute.downstream_task_ids == set()
    assert dag.get_task("plan").downstream_task_ids == {"needs_approval", "execute"}
    gate = dag.get_task("needs_approval")
    assert type(gate).__name__ == "_ShortCircuitDecoratedOperator"


def test_no_answer_means_no_action(dag):
    """A timeout takes the default, Reject, which skips execute (issue 18: a timeout means the
    step does not run)."""
    approve = dag.get_task("approve")
    assert approve.defaults == ["Reject"]
    assert approve.response_timeout == timedelta(days=3)
    # the approver sees the dry-run counts: the body is the plan's `approval.summary_md`,
    # read from XCom when the step runs (FourEyesApproval, docs/approvals.md)
    assert approve.plan_task == "plan" and approve.xcom_key == "return_value"
    assert type(approve).__name__ == "FourEyesApproval"


def test_manual_runs_default_to_a_dry_run(dag):
    assert dag.params["dry_run"] is True
    assert dag.params["action"] == "delete"


def test_a_rejection_or_timeout_alerts(dag):
    """Reject (a person's, or the timeout's default) skips the approval's direct relatives only
    (`ignore_downstream_trigger_rules` False): `approved`. The alert task, whose one upstream
    is `approved`, runs exactly when that was skipped, and execute with it. A dry run's
    short-circuit skips every task after it, the alert included, whatever its trigger rule."""
    from airflow.sdk import TriggerRule

    alert = dag.get_task("alert_not_approved")
    assert alert.upstream_task_ids == {"approved"}
    assert dag.get_task("execute").trigger_rule == TriggerRule.ALL_SUCCESS
    assert alert.trigger_rule == TriggerRule.ALL_SKIPPED
    assert dag.get_task("approve").ignore_downstream_trigger_rules is False
    assert dag.get_task("needs_approval").ignore_downstream_trigger_rules is True


def test_the_leaves_decide_a_failed_run(dag):
    """A DAG run's state comes from its leaf tasks: failed if one failed or was upstream_failed.
    The alert (all_skipped) is skipped when anything before it fails, so it must not be the
    only leaf: execute is one, and every task before it is on its path, so a failed plan,
    approval or execute leaves execute failed or upstream_failed, and the run failed. (The run
    itself: tests/e2e/test_client_offboarding.py::test_a_failed_plan_fails_the_run.)"""
    from airflow.sdk import TriggerRule

    assert {t.task_id for t in dag.leaves} == {"execute", "alert_not_approved"}
    before_execute = {t.task_id for t in dag.get_task("execute").get_flat_relatives(upstream=True)}
    assert before_execute == set(dag.task_ids) - {"execute", "alert_not_approved"}
    # no permissive trigger rule on the way could turn an upstream failure into a skip or a run
    for task_id in before_execute | {"execute"}:
        assert dag.get_task(task_id).trigger_rule == TriggerRule.ALL_SUCCESS, task_id
