"""Where the four-eyes approval sits in the destructive DAGs (issue 18 item 4; docs/approvals.md).

A rejection (or the timeout's default) makes `FourEyesApproval` skip its *direct* downstream
tasks; tasks further down are skipped by their trigger rules. So every erasing task must sit
below the gate, every task with a permissive trigger rule (`none_failed`: finalize, the
retention waves and report) must be a direct downstream of it, and the one alert task
(ALL_SKIPPED) must hang below those, never below the gate itself. The runs are in
tests/e2e/test_four_eyes.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bag():
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(REPO / "dags"))
    assert not bag.import_errors, bag.import_errors
    return bag


def _below(dag, task_id: str) -> set[str]:
    return {t.task_id for t in dag.get_task(task_id).get_flat_relatives(upstream=False)}


@pytest.mark.parametrize("dag_id", ["deletion_requests", "retention_sweep", "client_offboarding"])
def test_gate_and_alert(bag, dag_id):
    from airflow.sdk import TriggerRule

    dag = bag.dags[dag_id]
    gate = dag.get_task("approve")
    assert type(gate).__name__ == "FourEyesApproval"
    assert gate.defaults == ["Reject"] and gate.ignore_downstream_trigger_rules is False
    alert = dag.get_task("alert_not_approved")
    assert alert.trigger_rule == TriggerRule.ALL_SKIPPED
    assert "approve" not in alert.upstream_task_ids
    # every task that is not before the gate, nor the alert, is below the gate
    before = {t.task_id for t in gate.get_flat_relatives(upstream=True)} | {"approve"}
    assert set(dag.task_ids) - before - {"alert_not_approved"} <= _below(dag, "approve")
    # no permissive trigger rule escapes the gate's direct skip
    for task in dag.tasks:
        below = task.task_id in _below(dag, "approve") and task.task_id != "alert_not_approved"
        if below and task.trigger_rule != TriggerRule.ALL_SUCCESS:
            assert "approve" in task.upstream_task_ids, task.task_id


def test_deletion_erasing_tasks_wait_for_the_gate(bag):
    dag = bag.dags["deletion_requests"]
    below = _below(dag, "approve")
    erasing = {"erase_system", "scrub_logs", "verify_logs", "erase_recordings"}
    assert erasing | {"tombstone_backups", "notify_subprocessors", "finalize"} <= below
    assert dag.get_task("finalize").upstream_task_ids >= {"approve"}
    # below a task the gate skips, never below a leaf (a failed run must not show success)
    assert dag.get_task("alert_not_approved").upstream_task_ids == {"notify_subprocessors"}
    assert dag.get_task("finalize").downstream_task_ids == set()
    assert dag.get_task("approve").upstream_task_ids == {"plan"}


def test_retention_waves_and_report_wait_for_the_gate(bag):
    dag = bag.dags["retention_sweep"]
    for task_id in ("expire_minors", "expire_consumers", "delete_rows", "deidentify"):
        assert "approve" in dag.get_task(task_id).upstream_task_ids
    assert "approve" in dag.get_task("expire_objects").upstream_task_ids
    assert "approve" in dag.get_task("report").upstream_task_ids
    assert dag.get_task("alert_not_approved").upstream_task_ids == {"minors_rules"}
    assert dag.get_task("report").downstream_task_ids == set()
