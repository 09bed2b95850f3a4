"""Answering a parked approval (four-eyes, docs/approvals.md) from a second thread.

On Airflow 3.3 the approval step (an ApprovalOperator) parks its task in AWAITING_INPUT, and
`dag.test()` keeps the run alive until a response is recorded from outside
(airflow/sdk/definitions/dag.py). So `dag.test()` runs in the calling (main) thread, as the task
runner's signals need, and a helper thread waits for the step to park and answers it the way
staff or Airflow do: the caller's `answer(key)` (HTTP to the api-server app, the Core API's
endpoint function, or `time_out`, the scheduler's own timeout sweep).

Used by tests/e2e/test_four_eyes.py and tests/e2e/test_client_offboarding.py.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import sqlalchemy as sa

REPO = Path(__file__).resolve().parents[2]
WAIT_S = 240  # how long the helper thread waits for the step to park

Key = tuple[str, str, str, int]  # dag_id, run_id, task_id, map_index


def run_answering(
    dag_id: str, conf: dict, answer: Callable[[Key], None] | None
) -> tuple[Any, list[Key]]:
    """`dag.test(run_conf=conf)` here; a second thread answers the parked `approve` step with
    `answer(key)` (if given). Returns the run and the approvals that parked in this run.

    An approval that parks and is not answered (no `answer`, or `answer` raised) is failed,
    never left hanging: `dag.test()` would otherwise wait for it forever. An exception raised by
    `answer` fails the calling test after the run.
    """
    from airflow.dag_processing.dagbag import DagBag
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from airflow.utils.state import TaskInstanceState

    bag = DagBag(dag_folder=str(REPO / "dags" / f"{dag_id}.py"))
    assert not bag.import_errors, bag.import_errors
    dag = bag.dags[dag_id]
    with create_session() as session:  # this test's run is the one not there yet
        earlier = set(
            session.scalars(sa.select(TaskInstance.run_id).where(TaskInstance.dag_id == dag_id))
        )
    parked: list[Key] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def waiting(task_id: str | None = "approve") -> sa.Select:
        query = sa.select(TaskInstance).where(
            TaskInstance.dag_id == dag_id,
            TaskInstance.state == TaskInstanceState.AWAITING_INPUT,
            TaskInstance.run_id.not_in(earlier or {""}),
        )
        return query if task_id is None else query.where(TaskInstance.task_id == task_id)

    def find() -> Key | None:
        with create_session() as session:
            ti = session.scalars(waiting()).first()
            return None if ti is None else (ti.dag_id, ti.run_id, ti.task_id, ti.map_index)

    def watch() -> None:
        deadline = time.monotonic() + WAIT_S
        try:
            while not stop.is_set() and time.monotonic() < deadline:
                key = find()
                if key is not None:
                    parked.append(key)
                    if answer is not None:
                        answer(key)
                        return
                    break
                time.sleep(0.5)
        except BaseException as exc:
            errors.append(exc)
        # unanswered: fail the parked step, or dag.test() would wait for it forever
        with create_session() as session:
            for ti in session.scalars(waiting(None)):
                ti.state = TaskInstanceState.FAILED

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    try:
        run = dag.test(run_conf=conf)
    finally:
        stop.set()
        thread.join(timeout=30)
    assert not errors, errors
    return run, parked


def time_out(key: Key) -> timedelta:
    """The response timeout passed: the scheduler's own sweep (`check_awaiting_input_timeouts`)
    takes the step's default (Reject). Returns how long the step had left before it was moved
    past its timeout, so a caller can check the configured timeout reached the step."""
    from airflow.jobs.scheduler_job_runner import SchedulerJobRunner
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session

    with create_session() as session:
        ti = session.scalars(
            sa.select(TaskInstance).where(
                TaskInstance.dag_id == key[0],
                TaskInstance.run_id == key[1],
                TaskInstance.task_id == key[2],
                TaskInstance.map_index == key[3],
            )
        ).one()
        left = ti.trigger_timeout - datetime.now(UTC)
        ti.trigger_timeout = datetime.now(UTC) - timedelta(seconds=1)
        session.flush()
        SchedulerJobRunner.check_awaiting_input_timeouts(
            SimpleNamespace(log=logging.getLogger("scheduler")), session=session
        )
    return left
