"""The compliance desk on Airflow's api-server: `/compliance/...`, behind Airflow's login.

Today it holds the staff request page (issue 18, item 3; issue 16, deliverable 2):
`/compliance/requests` shows a form for one verified request, and a POST validates it through
the inbox's own code path, writes it to the inbox and triggers the request's DAG with only a
reference in the run's conf (`compliance.requests.staff_entry`). Identities never reach
Airflow's metadata database. The dashboard (`/compliance/dashboard`, the navigation entry's
page; `plugins/compliance_dashboard.py`) and the signed client API (`/compliance/api/v1`) are
part of this same app.

Thin on purpose: validation and the inbox write are product code; this module only speaks
HTTP and Airflow. Every route depends on the api-server's own security dependencies
(`airflow.api_fastapi.core_api.security`): a plugin's routes are not protected otherwise. The
page needs the right to trigger DAG runs (a viewer gets 403), and a POST is checked again
against the one DAG it triggers. The session cookie is SameSite=Lax and a POST from another
origin is refused, so another site cannot submit the form in a signed-in user's name.
"""

from __future__ import annotations

import asyncio
import html
import json
import re
from typing import Any
from urllib.parse import quote, urlsplit

import compliance_api
import compliance_dashboard
from airflow.api.common.trigger_dag import trigger_dag
from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity
from airflow.api_fastapi.core_api.security import GetUserDep, requires_access_dag
from airflow.models.dag import DagModel
from airflow.plugins_manager import AirflowPlugin
from airflow.utils.types import DagRunTriggeredByType
from fastapi import FastAPI, HTTPException, Request, status
from fastapi.responses import HTMLResponse

from compliance import runtime
from compliance.requests import staff_entry

CAN_TRIGGER = compliance_dashboard.dag_runs("POST")  # never read from ?dag_id=
app = FastAPI(title="Compliance desk", docs_url=None, redoc_url=None, openapi_url=None)
app.mount("/api/v1", compliance_api.api)  # signed, not behind the login: clients are no users
app.include_router(compliance_dashboard.router)  # the dashboard: /compliance/dashboard


@app.get("/requests", response_class=HTMLResponse, dependencies=[CAN_TRIGGER])
def request_page() -> HTMLResponse:
    return HTMLResponse(_page({}))


@app.post("/requests", response_class=HTMLResponse, dependencies=[CAN_TRIGGER])
async def enter_request(request: Request, user: GetUserDep) -> HTMLResponse:
    _same_origin(request)
    form = {k: v for k, v in (await request.form()).items() if isinstance(v, str)}
    kind = form.get("type", "")
    if kind in staff_entry.DAG_FOR_TYPE:  # may this user trigger that DAG (teams, roles)?
        requires_access_dag("POST", DagAccessEntity.RUN, staff_entry.DAG_FOR_TYPE[kind])(
            request, user
        )
    result = await asyncio.to_thread(_enter, kind, form)
    if isinstance(result, staff_entry.Refused):
        return HTMLResponse(_page(form, refused=result.reasons), status.HTTP_400_BAD_REQUEST)
    conf: dict[str, Any] = result.conf()  # {"request_ref": "<client_id>/<request_id>"}
    if result.type == "delete" and form.get("execute") == "on":
        conf["dry_run"] = False  # a run option; left out, a manual run is a dry run
    run = await asyncio.to_thread(_trigger, result.dag_id, conf, user.get_name())
    return HTMLResponse(_page({}, entered=(result, run)))


def _enter(kind: str, form: dict[str, str]) -> staff_entry.Entered | staff_entry.Refused:
    """Connections, engines and S3 clients from Airflow's connections, as a task gets them."""
    return staff_entry.enter(runtime.context(), kind, form)


def _trigger(dag_id: str, conf: dict[str, Any], user: str) -> dict[str, Any]:
    """The core API's own way (`trigger_dag`, as the execution API's trigger route does)."""
    run = trigger_dag(
        dag_id, triggered_by=DagRunTriggeredByType.UI, triggering_user_name=user, conf=conf
    )
    model = DagModel.get_current(dag_id)
    return {
        "run_id": run.run_id if run else None,
        "paused": bool(model and model.is_paused),
        "conf": conf,
    }


def _same_origin(request: Request) -> None:
    origin = request.headers.get("origin")
    if origin and origin != "null" and urlsplit(origin).netloc != request.headers.get("host"):
        raise HTTPException(status.HTTP_403_FORBIDDEN, "cross-origin form posts are refused")


# --------------------------------------------------------------------------------------------
# The page: plain HTML, relative URLs only (the UI may sit behind a proxy path)

_TEXT = [
    ("request_id", "Request id", "The client's id for this request (letters, digits, . _ : -)."),
    ("client_id", "Client id", "As the CRM spells it, e.g. 6, acme-east or a UUID."),
    ("email", "Consumer e-mail", ""),
    ("phone", "Consumer phone", ""),
    ("contact_id", "Client-side contact id", ""),
    (
        "received_at",
        "Received by the business at",
        "ISO 8601 with a zone, e.g. "
        "2026-03-01T09:30:00+00:00. Starts the clock (R1); for access, ends the look-back (R9).",
    ),
    (
        "verification_method",
        "Verification method",
        "How the business verified the consumer, e.g. email_link (R5).",
    ),
    ("verified_at", "Verified at", "Defaults to the time of receipt."),
    ("verified_by", "Verified by", ""),
    (
        "transfer_to",
        "Transfer to (portability)",
        "Optional: another controller's https endpoint the export is sent to (G3).",
    ),
]
_CHOICES = [
    ("type", "Request", list(staff_entry.DAG_FOR_TYPE)),
    ("verification_level", "Verified to the degree of", ["specific_pieces", "categories"]),
    ("jurisdiction", "Jurisdiction", ["ccpa", "gdpr"]),
    ("look_back", "Look-back (access)", ["default", "since_2022", "all"]),
]
_STYLE = compliance_dashboard.STYLE + (  # the desk's shared style, then the form's
    "body{max-width:52rem}"
    "label{display:block;margin-top:.7rem;font-weight:600}small{color:#555;display:block}"
    "input,select{width:100%;padding:.35rem;box-sizing:border-box}"
    ".refused{background:#fde8e8;padding:.7rem}.entered{background:#e6f4ea;padding:.7rem}"
    "code{background:#eee;padding:0 .2rem}"
)


def _page(
    values: dict[str, str],
    *,
    refused: list[dict[str, Any]] | None = None,
    entered: tuple[staff_entry.Entered, dict[str, Any]] | None = None,
) -> str:
    e = html.escape
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>Enter a request</title>"
        f"<style>{_STYLE}</style></head><body><nav><a href='dashboard'>Dashboard</a></nav>"
        "<h1>Enter one verified request</h1>"
        "<p>The request is validated like a client's document, written to the inbox, and its "
        "DAG is started with only a reference (<code>client/request id</code>): identities "
        "never reach Airflow's database, its run list or its logs.</p>"
    ]
    if refused:
        items = "".join(
            f"<li><code>{e(str(r['reason']))}</code> ({e(str(r['field']))}): "
            f"{e(str(r['message']))}</li>"
            for r in refused
        )
        parts.append(f"<div class='refused' role='alert'><b>Refused</b><ul>{items}</ul></div>")
    if entered:
        result, run = entered
        link = e(f"../dags/{quote(result.dag_id)}/runs/{quote(str(run['run_id']), safe='')}")
        waits = " The DAG is paused: the run starts when it is unpaused." if run["paused"] else ""
        dry = run["conf"].get("dry_run", result.type == "delete")
        dry = " (dry run: a report, nothing erased)" if dry else ""
        again = " (already waiting: not written twice)" if result.again else ""
        parts.append(
            f"<div class='entered' role='status' data-ref='{e(result.ref)}'><b>Entered</b> "
            f"<code>{e(result.ref)}</code>{again}"
            f"; <a target='_top' href='{link}'>{e(result.dag_id)} run</a> started{dry}.{waits}"
            "</div>"
        )
    parts.append("<form method='post' action='requests'>")
    for name, label, options in _CHOICES:
        chosen = values.get(name, options[0])
        opts = "".join(
            f"<option{' selected' if o == chosen else ''}>{e(o)}</option>" for o in options
        )
        parts.append(
            f"<label for='{name}'>{label}</label><select id='{name}' name='{name}'>{opts}</select>"
        )
    for name, label, hint in _TEXT:
        kind = "email" if name == "email" else "text"
        parts.append(
            f"<label for='{name}'>{label}</label><input id='{name}' name='{name}' type='{kind}' "
            f"value='{e(values.get(name, ''))}' autocomplete='off'>"
            + (f"<small>{e(hint)}</small>" if hint else "")
        )
    parts.append(
        "<label><input type='checkbox' name='execute' style='width:auto'> Deletion: execute "
        "now (otherwise a dry run reports what would be erased; the hourly run executes it)"
        "</label><p><button type='submit'>Enter and start</button></p></form></body></html>"
    )
    return "".join(parts)


TRIGGER_PATH = re.compile(r"/api/v2/dags/(?P<dag_id>[^/]+)/dagRuns/?$")


class RefuseIdentityConf:
    """A root middleware on the api-server: a POST that would start one of our request DAGs with
    a consumer identity in its conf is refused (400, RFC 9457) before Airflow stores the conf.

    Why a middleware: Airflow writes `dag_run.conf` as it creates the run, long before a task
    could object, and keeps it for good. The staff page never sends one; this closes the other
    door (a hand-written REST call), issue 16 deliverable 2."""

    DAGS = frozenset(staff_entry.DAG_FOR_TYPE.values())

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        match = TRIGGER_PATH.search(scope.get("path", "")) if scope["type"] == "http" else None
        if not match or scope["method"] != "POST" or match["dag_id"] not in self.DAGS:
            await self.app(scope, receive, send)
            return
        chunks, more = [], True
        while more:
            message = await receive()
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        body = b"".join(chunks)
        try:
            conf = json.loads(body or b"{}").get("conf") or {}
        except (ValueError, AttributeError):
            conf = {}  # not ours to judge: Airflow answers a malformed body itself
        fields = staff_entry.identity_fields(conf) if isinstance(conf, dict) else []
        if fields:
            problem = {
                "type": "about:blank",
                "title": "A run's conf never carries consumer identities",
                "status": 400,
                "detail": f"conf.{fields[0]}: enter the request on the staff page "
                "(/compliance/requests) and trigger with its request_ref (issue 16)",
                "fields": [f"conf.{f}" for f in fields],
            }
            payload = json.dumps(problem).encode()
            headers = [(b"content-type", b"application/problem+json")]
            await send({"type": "http.response.start", "status": 400, "headers": headers})
            await send({"type": "http.response.body", "body": payload})
            return
        replayed = False

        async def replay() -> dict:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)


class ComplianceDesk(AirflowPlugin):
    name = "compliance_desk"
    fastapi_apps = [{"app": app, "url_prefix": "/compliance", "name": "Compliance desk"}]
    fastapi_root_middlewares = [
        {"middleware": RefuseIdentityConf, "name": "Refuse identities in run conf"}
    ]
    external_views = [
        {
            "name": "Compliance",
            "href": "compliance/dashboard",  # relative: the UI may sit behind a proxy path
            "url_route": "compliance",
            "destination": "nav",
            "nav_top_level": True,  # its own entry in the navigation bar, not under Plugins
        }
    ]
