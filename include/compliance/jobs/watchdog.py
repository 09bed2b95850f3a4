"""The deadline watchdog's tasks (DAG `deadline_watchdog`), one function per task.

Three checks, each followed by its digest: request deadlines (R2-R4, G1), the sub-processor
notice outbox (R16.3, R16.4) and legal holds (R19). A check writes its findings to the workspace
(`deadlines/<day>/...`) and hands the notify step only a summary (counts and the key), so XCom
never carries a request list. A notify step fails when channels are configured and none
accepted the digest: a watchdog that stays silent misses legal deadlines, a failed task is
retried and alerts through Airflow.

`previous_success` is when the last successful run started (Airflow's
`prev_start_date_success`, read in the DAG file): what reached a level after it is new.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date, datetime
from typing import Any

from compliance.core import alerts
from compliance.core.alerts import Alert
from compliance.core.context import JobContext
from compliance.deletion import outbox
from compliance.requests import deadline_watch, deadlines, hold_watch


def _last_check(params: Mapping[str, Any], previous_success: datetime | None) -> datetime | None:
    """The form's *last check* when given, else the previous successful run (None: none)."""
    given = params.get("last_check")
    return datetime.fromisoformat(given) if given else previous_success


def _as_of(ctx: JobContext, params: Mapping[str, Any]) -> date:
    """The form's *as of* day, else the day the run is about."""
    given = params.get("as_of")
    return date.fromisoformat(given) if given else ctx.run_day


def _send(ctx: JobContext, message: Alert | None, what: str) -> dict[str, Any]:
    return alerts.send_digest(ctx.channels, message, f"{what} digest")


def check(
    ctx: JobContext, params: Mapping[str, Any] | None, previous_success: datetime | None
) -> dict[str, Any]:
    """Requests whose acknowledge or respond clock reached a threshold (R2-R4, G1), to
    `deadlines/<day>/watchdog.json`; the form's thresholds, else the deployment's."""
    params = params or {}
    last = _last_check(params, previous_success)
    day = _as_of(ctx, params)
    thresholds = deadlines.configured_thresholds(
        params.get("thresholds"), ctx.settings.deadline_thresholds
    )
    found = deadline_watch.watch(ctx.state, day, last, thresholds)
    report = deadline_watch.Report(day, last, thresholds, tuple(found))
    return deadline_watch.write_report(ctx.workspace.s3, ctx.workspace.bucket, report)


def notify(ctx: JobContext, summary: Mapping[str, Any]) -> dict[str, Any]:
    """One digest of `check`'s report; nothing is sent when nothing reached a level."""
    if not summary["alerts"]:
        return {"sent": []}
    report = deadline_watch.read_report(ctx.workspace.s3, ctx.workspace.bucket, summary["key"])
    message = deadline_watch.digest(report.alerts, report.as_of, report.thresholds)
    return _send(ctx, message, "deadline")


def chase_notices(ctx: JobContext, previous_success: datetime | None) -> dict[str, Any]:
    """R16.3, R16.4: send due notices, re-issue changed receipts, report what needs a person."""
    return outbox.chase(ctx, previous_success)


def notify_notices(ctx: JobContext, summary: Mapping[str, Any]) -> dict[str, Any]:
    """The notice outbox's digest (`chase_notices`' report)."""
    return outbox.send_alerts(ctx, summary)


def check_holds(
    ctx: JobContext, params: Mapping[str, Any] | None, previous_success: datetime | None
) -> dict[str, Any]:
    """R19: holds ending within 7 days, invalid exception codes and unknown scopes, to
    `deadlines/<day>/holds.json`."""
    params = params or {}
    found = hold_watch.check(
        ctx.datamap, dict(ctx.engines), ctx.now(), _last_check(params, previous_success)
    )
    day = params.get("as_of") or ctx.run_day.isoformat()
    return hold_watch.write(ctx.workspace.s3, ctx.workspace.bucket, day, found)


def notify_holds(ctx: JobContext, summary: dict[str, Any]) -> dict[str, Any]:
    """The legal-hold digest (registry keys, clients, scopes; no consumer)."""
    return _send(ctx, hold_watch.digest(summary), "legal-hold")
