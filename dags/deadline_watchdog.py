"""
### Deadline watchdog

Daily, alerts compliance staff before a request's legal deadline passes (R2-R4, G1):

1. **check**: every open or deferred request's two clocks, *acknowledge* (R2, 10 days) and
   *respond* (R3, 45 days; 90 after the one R4 extension; G1 one month), are compared with
   the alert thresholds (default **7** and **2** days left, then **overdue**). A request is
   reported on the day it reaches a threshold (a missed run never swallows one), a request
   new since the last check at whatever level it is already at, and an overdue response on
   every run until it is closed. The list (ids and dates, no consumer data) goes to
   `deadlines/<day>/watchdog.json` in the workspace bucket.
2. **notify**: one digest to the configured alert channels (e-mail, Slack, SNS); nothing is
   sent when nothing reached a level.

**Trigger form** (all optional): *as of* (the day to check, default the run's day), *last
check* (report what reached a level after this time; default the previous successful run;
set it far back to list everything at a level), *thresholds* (days left, one per line; default
`COMPLIANCE_DEADLINE_THRESHOLDS` or 7, 2). Read-only: it changes no request.
To record an extension use the DAG `request_extension`. Logic: `compliance.deadlines`;
what each alert means: docs/operations.md.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta

from airflow.sdk import Param, dag, get_current_context, task

from compliance import alerts, deadlines, runtime
from compliance_alerts import DEFAULT_ARGS, nightly_deadline

FORM = {
    "as_of": Param(
        None,
        type=["null", "string"],
        format="date",
        title="As of",
        description="The day to check (default: the run's day).",
        section="When",
    ),
    "last_check": Param(
        None,
        type=["null", "string"],
        format="date-time",
        title="Last check",
        description=(
            "Report what reached a threshold after this time (default: the previous successful "
            "run). Set it far back to list every request at a threshold."
        ),
        section="When",
    ),
    "thresholds": Param(
        None,
        type=["null", "array"],
        items={"type": "integer", "minimum": 0, "maximum": deadlines.MAX_THRESHOLD},
        title="Thresholds (days left)",
        description="One number per line, e.g. 7 and 2 (default: COMPLIANCE_DEADLINE_THRESHOLDS).",
        section="Alerts",
    ),
}


@dag(
    schedule="0 6 * * *",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    # Deliberately unpaused: a watchdog nobody switched on misses legal deadlines silently.
    is_paused_upon_creation=False,
    default_args=DEFAULT_ARGS,
    params=FORM,
    deadline=nightly_deadline("deadline_watchdog", timedelta(hours=1)),
    tags=["compliance", "operations"],
    doc_md=__doc__,
)
def deadline_watchdog():
    @task
    def check(params: dict | None = None) -> dict:
        params = params or {}
        given = params.get("last_check")
        last = datetime.fromisoformat(given) if given else None
        if last is None:
            prev = get_current_context().get("prev_start_date_success")  # lazy; may wrap None
            last = prev if isinstance(prev, datetime) else None
        day = date.fromisoformat(params.get("as_of") or runtime.run_day())
        thresholds = deadlines.configured_thresholds(params.get("thresholds"))
        found = deadlines.watch(runtime.state_engine(), day, last, thresholds)
        cfg = runtime.settings()
        report = deadlines.Report(day, last, thresholds, tuple(found))
        return deadlines.write_report(
            runtime.s3(cfg.workspace_connection), cfg.workspace_bucket, report
        )

    @task
    def notify(summary: dict) -> dict:
        if not summary["alerts"]:
            return {"sent": []}
        cfg = runtime.settings()
        report = deadlines.read_report(
            runtime.s3(cfg.workspace_connection), cfg.workspace_bucket, summary["key"]
        )
        message = deadlines.digest(report.alerts, report.as_of, report.thresholds)
        settings = alerts.alert_settings()
        sent = alerts.dispatch(message, settings) if message else []
        if alerts.configured_channels(settings) and not sent:
            # Every configured channel failed: fail (and retry) rather than stay silent.
            raise RuntimeError("no alert channel accepted the deadline digest")
        return {"sent": sent}

    notify(check())


deadline_watchdog()
