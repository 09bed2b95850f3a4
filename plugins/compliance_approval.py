"""Four-eyes approval of destructive runs (issue 18 item 4; docs/approvals.md).

`FourEyesApproval` is Airflow's `ApprovalOperator` with our rules in front of it: it reads the
plan task's `approval` dict (`compliance.desk.approvals`) from XCom. Not required: it returns at
once and the destructive tasks run. Required: it parks like `ApprovalOperator` (Browse ->
Required Actions), the dry-run counts as its body, `Reject` as the default a timeout takes.
Rejected or timed out: the direct downstream tasks are skipped, so the erasure does not run, and
the DAG's `alert_not_approved` task (TriggerRule.ALL_SKIPPED) tells staff.

"The trigger's own user cannot approve" is enforced twice:

- `FourEyesGuard`, a root middleware of the api-server, answers 403 (problem+json) to a PATCH of
  one of *our* approval tasks' `hitlDetails` when the caller (bearer token or the UI's `_token`
  cookie, resolved by Airflow's auth manager) is the run's `triggering_user_name` and the chosen
  option is Approve. Required Actions in the UI uses that same route. A reject is let through,
  and scheduled runs (no triggering user) may be approved by any staff member.
- on resume, the operator itself treats an Approve by the triggering user as a rejection (defense
  in depth: an answer that reached the DB another way).

An approval is written to the ledger (`compliance.jobs.approvals.approved`): the digest approved,
the dag and run ids, a keyed hash of the approver. The retention sweep reads it back to know
whether its rules changed since the last approved run.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Awaitable, Callable, MutableMapping
from datetime import timedelta
from typing import Any

from airflow.plugins_manager import AirflowPlugin
from airflow.providers.standard.operators.hitl import ApprovalOperator

log = logging.getLogger(__name__)

OPERATOR = "FourEyesApproval"  # TaskInstance.operator of our approval tasks
DEFAULT_TIMEOUT = timedelta(days=3)
SAME_USER = "four_eyes_same_user"  # the reason code of the refusal
NO_DECISION = "The plan carried no approval decision: approve only if you know what this erases."

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class FourEyesApproval(ApprovalOperator):
    """Waits for a second person when the plan says so; otherwise lets the run go on at once.

    `plan_task` is the task whose XCom holds the plan; `xcom_key` the key (the return value,
    or the key of a `multiple_outputs` plan), and the plan's `approval` entry is the decision.
    """

    def __init__(
        self,
        *,
        subject: str,
        plan_task: str = "plan",
        xcom_key: str = "return_value",
        response_timeout: timedelta | None = DEFAULT_TIMEOUT,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("defaults", ApprovalOperator.REJECT)
        super().__init__(subject=subject, response_timeout=response_timeout, **kwargs)
        self.plan_task = plan_task
        self.xcom_key = xcom_key

    def approval(self, context: Any) -> dict[str, Any]:
        planned = context["ti"].xcom_pull(task_ids=self.plan_task, key=self.xcom_key) or {}
        return dict(planned.get("approval") or {})

    def execute(self, context: Any) -> Any:
        approval = self.approval(context)
        if approval.get("required") is False:
            self.log.info("No approval needed for this run: the destructive steps go ahead")
            return None
        if "required" not in approval:  # fail closed: a plan without a decision waits
            approval = {"why": ["no_decision"], "summary_md": NO_DECISION}
        self.log.info("Four eyes: waiting for a second person (%s)", ", ".join(approval["why"]))
        self.body = approval.get("summary_md") or self.body
        if approval.get("timeout_s"):
            self.response_timeout = timedelta(seconds=int(approval["timeout_s"]))
        return super().execute(context)

    def execute_complete(self, context: Any, event: dict[str, Any]) -> Any:
        responder = event.get("responded_by_user") or {}
        trigger = context["dag_run"].triggering_user_name
        chosen = list(event.get("chosen_options") or [])
        if self.APPROVE in chosen and trigger and _is(responder, trigger):
            self.log.warning("Four eyes: the run's own trigger approved it; taken as a rejection")
            event = {**event, "chosen_options": [self.REJECT]}
        result = super().execute_complete(context=context, event=event)
        if result["chosen_options"][0] == self.APPROVE:
            from compliance import runtime
            from compliance.jobs import approvals

            ti = context["ti"]
            seq = approvals.approved(
                runtime.context(),
                ti.dag_id,
                ti.run_id,
                self.approval(context),
                str(responder.get("id") or responder.get("name") or "unknown"),
            )
            self.log.info("Approved by a second person; ledger entry %s", seq)
        return result


def _is(user: dict[str, Any], name: str) -> bool:
    return name in {str(user.get("id") or ""), str(user.get("name") or "")}


def alert_not_approved(after: Any = None, plan_task: str = "plan") -> Any:
    """The one alert task of every four-eyes DAG. ALL_SKIPPED: it runs only when its upstream
    was skipped, i.e. the approval was rejected or timed out. It pulls the plan itself: an
    XComArg would make the plan an upstream, and all_skipped could never hold.

    `after`: hang it below that task (a direct downstream of the gate that is not a leaf) and
    return `after` for chaining, so the DAG's real leaves (finalize, report) stay leaves: a
    leaf that is skipped when the plan fails would show the failed run as a success. Without
    `after` the alert task itself is returned (`... >> alert_not_approved()`)."""
    from airflow.sdk import TriggerRule, task

    @task(task_id="alert_not_approved", trigger_rule=TriggerRule.ALL_SKIPPED)
    def alert(ti: Any = None) -> dict[str, Any]:
        from compliance import runtime
        from compliance.jobs import approvals

        return approvals.not_approved(
            runtime.context(), ti.dag_id, ti.xcom_pull(task_ids=plan_task)
        )

    if after is None:
        return alert()
    after >> alert()
    return after


# --------------------------------------------------------------------------- the api-server guard

# The Core API's route that records a response (Required Actions uses it too), under any prefix.
HITL_PATH = re.compile(
    r"/dags/(?P<dag_id>[^/]+)/dagRuns/(?P<run_id>[^/]+)/taskInstances/(?P<task_id>[^/]+)"
    r"/(?P<map_index>[^/]+)/hitlDetails/?$"  # any spelling: coerced as the route does below
)


class FourEyesGuard:
    """Pure ASGI middleware: buffers a matching PATCH's body, decides, then replays it.

    Anything else passes untouched. A caller it cannot resolve is left to the route (401/403)."""

    def __init__(self, app: Callable[..., Awaitable[None]]) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        match = HITL_PATH.search(scope.get("path", "")) if scope["type"] == "http" else None
        if match is None or scope.get("method") != "PATCH":
            await self.app(scope, receive, send)
            return
        messages: list[Message] = []
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request" or not message.get("more_body"):
                break
        body = b"".join(m.get("body", b"") for m in messages if m["type"] == "http.request")
        refusal = await self.refusal(scope, match.groupdict(), body)
        if refusal is not None:
            await _problem(send, refusal)
            return

        async def replay() -> Message:
            return messages.pop(0) if messages else await receive()

        await self.app(scope, replay, send)

    async def refusal(self, scope: Scope, where: dict[str, str], body: bytes) -> str | None:
        try:
            chosen = json.loads(body or b"{}").get("chosen_options") or []
        except (ValueError, AttributeError):
            return None  # the route answers a malformed body itself
        if ApprovalOperator.APPROVE not in chosen:
            return None  # a reject by anyone is fine
        from pydantic import TypeAdapter, ValidationError
        from starlette.concurrency import run_in_threadpool

        try:  # the route's own coercion (pydantic's lax int): "-1.0", "+0", "1_0" are -1, 0, 10
            where = {**where, "map_index": TypeAdapter(int).validate_python(where["map_index"])}
        except ValidationError:
            return None  # the route answers 422 itself
        trigger = await run_in_threadpool(_triggering_user, where)
        if not trigger:
            return None  # not ours, or a scheduled run: any staff member may approve
        user = await _caller(scope)
        if user is None or trigger not in {str(user.get_id()), str(user.get_name())}:
            return None
        log.warning("Four eyes: refused an approval by the run's own trigger (%s)", SAME_USER)
        return (
            "The user who triggered this run cannot approve it (four eyes): another staff "
            "member must approve, or reject it yourself."
        )


def _triggering_user(where: dict[str, Any]) -> str | None:
    """The run's triggering user when the task is one of our four-eyes approvals, else None."""
    import sqlalchemy as sa
    from airflow.models.dagrun import DagRun
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session

    with create_session() as session:
        operator = session.scalar(
            sa.select(TaskInstance.operator).where(
                TaskInstance.dag_id == where["dag_id"],
                TaskInstance.run_id == where["run_id"],
                TaskInstance.task_id == where["task_id"],
                TaskInstance.map_index == where["map_index"],
            )
        )
        if operator != OPERATOR:
            return None
        return session.scalar(
            sa.select(DagRun.triggering_user_name).where(
                DagRun.dag_id == where["dag_id"], DagRun.run_id == where["run_id"]
            )
        )


async def _caller(scope: Scope) -> Any:
    """The user as the route will see it: the bearer token first, else the `_token` cookie."""
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.base_auth_manager import COOKIE_NAME_JWT_TOKEN
    from starlette.requests import Request

    request = Request(scope)
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        token = request.cookies.get(COOKIE_NAME_JWT_TOKEN, "")
    if not token:
        return None
    try:
        return await get_auth_manager().get_user_from_token(token)
    except Exception:  # expired or invalid: the route's own check answers 401/403
        return None


async def _problem(send: Send, detail: str) -> None:
    """RFC 9457 problem details, with the reason code."""
    body = json.dumps(
        {
            "type": "about:blank",
            "title": "Forbidden",
            "status": 403,
            "detail": detail,
            "code": SAME_USER,
        }
    ).encode()
    headers = [
        (b"content-type", b"application/problem+json"),
        (b"content-length", str(len(body)).encode()),
    ]
    await send({"type": "http.response.start", "status": 403, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class ComplianceApprovalPlugin(AirflowPlugin):
    name = "compliance_approval"
    fastapi_root_middlewares = [
        {"name": "compliance_four_eyes", "middleware": FourEyesGuard, "args": [], "kwargs": {}}
    ]
