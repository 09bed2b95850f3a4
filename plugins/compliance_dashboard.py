"""The compliance dashboard inside Airflow's UI (issue 18, item 2): `/compliance/dashboard`, the
page the "Compliance" navigation entry opens; included in the desk's app by
`plugins/compliance_desk.py`.

Thin on purpose: the numbers come from `compliance.desk.dashboard` (plain Python on a
`JobContext`), one request's page from `compliance.desk.request_view`, the file whitelist from
`compliance.desk.reports_list`; this module speaks HTTP, Airflow's auth and its metadata DB (the
last run of every DAG tagged `compliance`).

Roles (Airflow's own permissions, through the api-server's security dependencies; docs/desk.md):
- read DAG runs (a viewer): the counts, the last runs, and receipts and reports (opened here,
  behind the login, never through an S3 link);
- trigger DAG runs (staff: simple auth manager `user` and up): the lists of requests, one
  request's page, ledger verification on demand;
- read connections (simple auth manager `op` and `admin`; in FAB "can read on Connections", which
  a custom role can be granted): a request's identities and access bundles, each view ledgered.
  Why this permission: whoever may read connections may read the CRM's credentials, so it adds
  no reach to personal data that role did not already have; it is also the one permission both
  installed auth managers offer that a viewer and a plain `user` lack.
Anonymous calls get 401 from the security dependencies before any handler runs.
"""

from __future__ import annotations

import html
from datetime import date, datetime
from typing import Any
from urllib.parse import quote, urlsplit

from airflow.api_fastapi.app import get_auth_manager
from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity
from airflow.api_fastapi.common.db.common import SessionDep
from airflow.api_fastapi.core_api.security import (
    GetUserDep,
    requires_access_connection,
)
from airflow.models.dag import DagModel, DagTag
from airflow.models.dagrun import DagRun
from fastapi import APIRouter, Depends, HTTPException, Request, status
from fastapi.responses import HTMLResponse, StreamingResponse
from sqlalchemy import func, select

from compliance import runtime
from compliance.desk import dashboard, reports_list, request_view


def dag_runs(method: str) -> Any:
    """May the user read (GET) or trigger (POST) DAG runs at all. Not Airflow's
    `requires_access_dag` without a dag id: that one reads `?dag_id=` from the query string, so
    any desk URL plus `?dag_id=<a DAG the user may use>` would be checked against that DAG."""

    def check(user: GetUserDep) -> None:
        manager = get_auth_manager()
        if not manager.is_authorized_dag(
            method=method, access_entity=DagAccessEntity.RUN, user=user
        ):
            raise HTTPException(status.HTTP_403_FORBIDDEN, "Forbidden")

    return Depends(check)


CAN_READ = dag_runs("GET")
CAN_ACT = dag_runs("POST")
CAN_SEE_IDENTITIES = Depends(requires_access_connection("GET"))
TAG = "compliance"
NO_STORE = {"Cache-Control": "no-store"}

router = APIRouter()

STYLE = (
    "body{font-family:system-ui,sans-serif;margin:1.5rem;max-width:64rem}"
    "table{border-collapse:collapse;margin:.4rem 0 1rem}td,th{border:1px solid #ccc;"
    "padding:.2rem .5rem;text-align:left;font-size:.92rem}th{background:#f3f3f3}"
    ".ok{background:#e6f4ea;padding:.6rem}.bad{background:#fde8e8;padding:.6rem}"
    ".n{font-size:1.5rem;font-weight:700}.tiles{display:flex;gap:.8rem;flex-wrap:wrap}"
    ".tile{border:1px solid #ccc;padding:.5rem .8rem;min-width:9rem}"
    "code{background:#eee;padding:0 .2rem}nav a{margin-right:1rem}"
)


def may(user: Any, what: str) -> bool:
    """The same checks as the dependencies, asked without failing (what to show on a page)."""
    manager = get_auth_manager()
    if what == "act":
        return bool(
            manager.is_authorized_dag(method="POST", access_entity=DagAccessEntity.RUN, user=user)
        )
    return bool(manager.is_authorized_connection(method="GET", user=user))


def same_origin(request: Request) -> None:
    """A POST from another site is refused (the session cookie is SameSite=Lax)."""
    origin = request.headers.get("origin")
    if origin and origin != "null" and urlsplit(origin).netloc != request.headers.get("host"):
        raise HTTPException(status.HTTP_403_FORBIDDEN, "cross-origin form posts are refused")


# --------------------------------------------------------------------------------------------
# routes


@router.get("/", response_class=HTMLResponse, dependencies=[CAN_READ])
@router.get("/dashboard", response_class=HTMLResponse, dependencies=[CAN_READ])
def dashboard_page(user: GetUserDep, session: SessionDep) -> HTMLResponse:
    view = dashboard.overview(runtime.context())
    runs = last_runs(session, user)
    return HTMLResponse(_dashboard(view, runs, staff=may(user, "act")), headers=NO_STORE)


@router.post("/ledger/verify", response_class=HTMLResponse, dependencies=[CAN_ACT])
async def verify_ledger(request: Request) -> HTMLResponse:
    same_origin(request)
    form = await request.form()
    checkpoint = str(form.get("checkpoint") or "").strip() or None
    try:
        result = dashboard.verify_ledger(runtime.context(), checkpoint)
    except ValueError as exc:  # a malformed checkpoint (`ledger.Head.parse`)
        return HTMLResponse(_frame("Ledger", f"<p class='bad'>{_e(exc)}</p>", ".."), 400)
    return HTMLResponse(_frame("Ledger verification", _ledger(result), ".."), headers=NO_STORE)


@router.get("/files", dependencies=[CAN_READ])
def open_file(key: str, user: GetUserDep) -> StreamingResponse:
    identities = may(user, "identities")
    try:
        area = reports_list.area_for(key, identities=identities)
    except reports_list.Refused as exc:
        raise HTTPException(status.HTTP_403_FORBIDDEN, str(exc)) from None
    ctx = runtime.context()
    found = reports_list.open_object(ctx, key)
    if found is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such object")
    if area in reports_list.IDENTITY_AREAS:
        request_view.bundle_viewed(ctx, key, user.get_name())
    body, length = found
    name = key.rsplit("/", 1)[-1]
    headers = {
        **NO_STORE,
        "Content-Length": str(length),
        "X-Content-Type-Options": "nosniff",
        "Content-Security-Policy": "sandbox",  # a report's HTML cannot script the UI's origin
        "Content-Disposition": f"inline; filename*=UTF-8''{quote(name)}",
    }
    return StreamingResponse(
        body.iter_chunks(), media_type=reports_list.media_type(key), headers=headers
    )


@router.get(
    "/requests/{client_id}/{request_id}", response_class=HTMLResponse, dependencies=[CAN_ACT]
)
def request_page(client_id: str, request_id: str, user: GetUserDep) -> HTMLResponse:
    found = request_view.page(runtime.context(), client_id, request_id)
    if found is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such request on record")
    body = _request(found, may(user, "identities"), None)
    return HTMLResponse(_frame(f"Request {found.request_id}", body, "../.."), headers=NO_STORE)


@router.post(
    "/requests/{client_id}/{request_id}/identities",
    response_class=HTMLResponse,
    dependencies=[CAN_ACT, CAN_SEE_IDENTITIES],
)
async def show_identities(
    client_id: str, request_id: str, request: Request, user: GetUserDep
) -> HTMLResponse:
    same_origin(request)
    type_ = str((await request.form()).get("type") or "")
    ctx = runtime.context()
    try:
        shown = request_view.show_identities(ctx, client_id, request_id, type_, user.get_name())
    except LookupError:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such request on record") from None
    found = request_view.page(ctx, client_id, request_id)
    assert found is not None
    body = _request(found, True, (type_, shown))
    return HTMLResponse(_frame(f"Request {request_id}", body, "../../.."), headers=NO_STORE)


def last_runs(session: Any, user: Any) -> list[dict[str, Any]]:
    """The last run (the newest created) of every DAG tagged `compliance` this user may read,
    from Airflow's metadata DB; DAGs never run are listed too."""
    tagged = set(session.scalars(select(DagTag.dag_id).where(DagTag.name == TAG)).all())
    readable = get_auth_manager().get_authorized_dag_ids(user=user, method="GET", session=session)
    ids = sorted(tagged & set(readable))
    if not ids:
        return []
    newest = (
        select(DagRun.dag_id, func.max(DagRun.id).label("id"))
        .where(DagRun.dag_id.in_(ids))
        .group_by(DagRun.dag_id)
        .subquery()
    )
    q = select(DagRun.dag_id, DagRun.run_id, DagRun.state, DagRun.end_date, DagRun.run_after)
    runs = {r.dag_id: r for r in session.execute(q.join(newest, DagRun.id == newest.c.id))}
    q_paused = select(DagModel.dag_id, DagModel.is_paused).where(DagModel.dag_id.in_(ids))
    paused = {dag_id: is_paused for dag_id, is_paused in session.execute(q_paused)}
    out = []
    for dag_id in ids:
        run = runs.get(dag_id)
        out.append(
            {
                "dag_id": dag_id,
                "paused": bool(paused.get(dag_id)),
                "run_id": run.run_id if run else None,
                "state": str(run.state) if run and run.state else ("never run" if not run else ""),
                "end_date": run.end_date if run else None,
                "run_after": run.run_after if run else None,
            }
        )
    return out


# --------------------------------------------------------------------------------------------
# pages: plain HTML, relative URLs only (the UI may sit behind a proxy path)


def _e(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime):
        return html.escape(value.isoformat(timespec="minutes"))
    if isinstance(value, date):
        return html.escape(value.isoformat())
    return html.escape(str(value))


def _frame(title: str, body: str, up: str) -> str:
    """`up`: the relative way back to /compliance/ from this page."""
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{_e(title)}</title>"
        f"<style>{STYLE}</style></head><body><nav><a href='{up}/dashboard'>Dashboard</a>"
        f"<a href='{up}/requests'>Enter a request</a></nav><h1>{_e(title)}</h1>{body}</body></html>"
    )


def _table(heads: list[str], rows: list[list[Any]], section: str = "") -> str:
    if not rows:
        return "<p><i>None.</i></p>"
    head = "".join(f"<th>{_e(h)}</th>" for h in heads)
    body = "".join(
        "<tr>" + "".join(c if isinstance(c, _Raw) else f"<td>{_e(c)}</td>" for c in r) + "</tr>"
        for r in rows
    )
    return f"<table data-section='{section}'><tr>{head}</tr>{body}</table>"


class _Raw(str):
    """A cell already rendered (a link)."""


def _req_link(client_id: str, request_id: str, up: str = ".") -> _Raw:
    href = f"{up}/requests/{quote(client_id, safe='')}/{quote(request_id, safe='')}"
    return _Raw(f"<td><a href='{_e(href)}'>{_e(client_id)}/{_e(request_id)}</a></td>")


def _dag_link(dag_id: str) -> _Raw:
    href = f"../dags/{quote(dag_id, safe='')}"  # the UI's own page, outside the iframe
    return _Raw(f"<td><a target='_top' href='{_e(href)}'>{_e(dag_id)}</a></td>")


def _file_link(key: str, up: str = ".") -> _Raw:
    return _Raw(f"<td><a href='{up}/files?key={_e(quote(key, safe='/'))}'>{_e(key)}</a></td>")


def _tile(section: str, name: str, label: str, count: int) -> str:
    return (
        f"<div class='tile' data-section='{section}' data-count-{name}='{count}'>"
        f"<div class='n'>{count}</div>{_e(label)}</div>"
    )


def _dashboard(view: dashboard.Overview, runs: list[dict[str, Any]], staff: bool) -> str:
    d = view.deadlines
    parts = [
        f"<p>As of {_e(d.today)} (UTC). Deadlines in force: extended, else the response "
        "deadline (R3, R4, G1).</p><h2>Open requests by deadline</h2><div class='tiles'>"
    ]
    parts += [_tile("deadlines", b, dashboard.LABELS[b], d.counts[b]) for b in dashboard.BUCKETS]
    parts.append("</div>")
    if d.undated:
        parts.append(f"<p class='bad'>{d.undated} open request(s) have no deadline on record.</p>")
    if staff:
        for bucket in ("overdue", "due_2", "due_7", "extended"):
            rows = [
                [
                    _req_link(r.client_id, r.request_id),
                    r.type,
                    r.status,
                    r.due,
                    r.days_left,
                    "yes" if r.extended else "",
                ]
                for r in d.rows[bucket]
            ]
            parts.append(f"<h3>{_e(dashboard.LABELS[bucket])}</h3>")
            parts.append(
                _table(
                    ["Request", "Type", "Status", "Due", "Days left", "Extended"],
                    rows,
                    f"due-{bucket}",
                )
            )
    w = view.waiting
    parts.append(
        f"<h2>Deferred and partial requests</h2><div class='tiles'>"
        f"{_tile('waiting', 'total', 'deferred or partial', w.total)}</div>"
    )
    parts.append(
        _table(
            ["Status", "Reason code", "Requests"],
            [[s, r, n] for (s, r), n in w.counts.items()],
            "waiting-codes",
        )
    )
    if staff:
        parts.append(
            _table(
                ["Request", "Type", "Status", "Reason code", "Received", "Due"],
                [
                    [
                        _req_link(r["client_id"], r["request_id"]),
                        r["type"],
                        r["status"],
                        r["reason_code"],
                        r["received_at"],
                        r["due"],
                    ]
                    for r in w.rows
                ],
                "waiting",
            )
        )
    parts.append(
        f"<h2>Active legal holds (R19)</h2><div class='tiles'>"
        f"{_tile('holds', 'total', 'holds in force', len(view.holds))}</div>"
    )
    parts.append(
        _table(
            ["System", "Hold", "Client", "Extent", "Scope", "Code", "Expires"],
            [
                [
                    h.system,
                    h.hold,
                    h.client_id,
                    h.extent,
                    h.scope,
                    h.code,
                    _expiry(h),
                ]
                for h in view.holds
            ],
            "holds",
        )
    )
    n = view.notices
    oldest = f"oldest {n.oldest_days} day(s)" if n.oldest_days is not None else "no age known"
    parts.append(
        f"<h2>Notices not yet acknowledged (R16.3)</h2><div class='tiles'>"
        f"{_tile('notices', 'total', 'unacknowledged', n.count)}</div>"
        f"<p>{_e(oldest)}; by status: "
        f"{_e(', '.join(f'{k} {v}' for k, v in sorted(n.by_status.items())) or 'none')}</p>"
    )
    if staff:
        parts.append(
            _table(
                ["Request", "Sub-processor", "Kind", "Channel", "Status", "Attempts", "Age (days)"],
                [
                    [
                        _req_link(r["client_id"], r["request_id"]),
                        r["subprocessor"],
                        r["kind"],
                        r["channel"],
                        r["status"],
                        r["attempts"],
                        r["age_days"],
                    ]
                    for r in n.rows
                ],
                "notices",
            )
        )
    for label in ("receipts", "reports"):
        parts.append(f"<h2>Recent {label}</h2>")
        parts.append(
            _table(
                ["Object", "Written", "Bytes"],
                [[_file_link(o.key), o.modified, o.size] for o in view.files[label]],
                label,
            )
        )
    parts.append("<h2>Last run of every job</h2>")
    parts.append(
        _table(
            ["DAG", "State", "Ended", "Run after", "Paused"],
            [
                [
                    _dag_link(r["dag_id"]),
                    r["state"],
                    r["end_date"],
                    r["run_after"],
                    "paused" if r["paused"] else "",
                ]
                for r in runs
            ],
            "runs",
        )
    )
    parts.append("<h2>Ledger</h2>")
    if staff:
        parts.append(
            "<form method='post' action='ledger/verify'><label>Checkpoint (optional, SEQ:MAC "
            "from an earlier check: also finds a cut-off tail) <input name='checkpoint' "
            "autocomplete='off' size='70'></label> <button type='submit'>Verify the ledger now"
            "</button></form>"
        )
    else:
        parts.append("<p>Staff can verify the ledger's chain on demand.</p>")
    return _frame("Compliance desk", "".join(parts), ".")


def _expiry(h: dashboard.HeldRow) -> str:
    if h.expires_at is None:
        return "no expiry"
    lapse = " (R19 90-day lapse)" if h.lapses else ""
    return h.expires_at.isoformat(timespec="minutes") + lapse


def _ledger(r: dashboard.LedgerCheck) -> str:
    if r.ok:
        return (
            f"<p class='ok' data-ledger='ok' data-entries='{r.entries}'><b>Verified</b>: "
            f"{r.entries} entries, the chain is intact. Checkpoint to keep: "
            f"<code>{_e(r.head)}</code></p>"
        )
    return (
        f"<p class='bad' data-ledger='broken' data-entries='{r.entries}' "
        f"data-first-bad='{r.first_bad_seq}'><b>Broken</b> at entry {r.first_bad_seq}: "
        f"{_e(r.problem)} ({r.entries} entries checked before it).</p>"
    )


def _request(
    found: request_view.RequestPage,
    identities_allowed: bool,
    shown: tuple[str, request_view.Identities] | None,
) -> str:
    up = "../.." if shown is None else "../../.."
    here = f"{quote(found.request_id, safe='')}" if shown is None else "."
    parts = [
        f"<p>Client <code>{_e(found.client_id)}</code>, request id "
        f"<code>{_e(found.request_id)}</code>.</p>"
    ]
    for rec in found.records:
        row = rec.row
        parts.append(
            f"<h2 data-type='{_e(row.type)}'>{_e(row.type)} ({_e(row.jurisdiction)}): "
            f"{_e(row.status)}{' ' + _e(row.reason_code) if row.reason_code else ''}</h2>"
        )
        parts.append(_table(["Date", "Value"], [[k, v] for k, v in rec.dates.items()], "dates"))
        parts.append(_table(["Event", "Detail"], [[e, d] for e, d in rec.events], "events"))
        parts.append(_table(["Ledger seq", "At", "Kind"], [list(x) for x in rec.ledger], "ledger"))
        if rec.notices:
            parts.append(
                _table(
                    ["Sub-processor", "Status", "Attempts", "Acknowledged"],
                    [[x.subprocessor, x.status, x.attempts, x.acked_at] for x in rec.notices],
                    "notices",
                )
            )
        if shown is not None and shown[0] == row.type:
            ids = shown[1]
            items = "".join(
                f"<li>{_e(k)}: {_e(', '.join(v))}</li>" for k, v in sorted(ids.values.items())
            )
            parts.append(
                f"<div class='bad' data-identities='{'held' if ids.held else 'gone'}'>"
                f"<b>Identities</b> (this view is ledger entry {ids.seq}). {_e(ids.note)}"
                f"<ul>{items}</ul></div>"
            )
        elif identities_allowed:
            parts.append(
                f"<form method='post' action='{here}/identities'>"
                f"<input type='hidden' name='type' value='{_e(row.type)}'>"
                "<button type='submit'>Show identities (the view is written to the ledger)"
                "</button></form>"
            )
    parts.append("<h2>Receipts</h2>")
    parts.append(_table(["Receipt"], [[_file_link(k, up)] for k in found.receipts], "receipts"))
    return "".join(parts)
