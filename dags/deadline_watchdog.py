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
3. **chase_notices** (R16.3, R16.4): sends every due deletion notice of the outbox (retries with
   backoff, give-up), re-issues receipts whose notice status changed, and lists notices still
   unacknowledged after `COMPLIANCE_NOTICE_ALERT_DAYS` (3), give-ups since the last run, and
   sub-processors or recipients whose channel is not configured here, to
   `deadlines/<day>/notices.json`; **notify_notices** sends that list as a second digest.
4. **check_holds** (R19): legal holds ending within 7 days (the next deletion run then erases
   what they keep), and holds with an exception code that is not R19's or a scope the data map
   does not know (honoured conservatively until fixed), to `deadlines/<day>/holds.json`;
   **notify_holds** sends them as a third digest (registry keys, clients, scopes; no consumer).

**Trigger form** (all optional): *as of* (the day to check, default the run's day), *last
check* (report what reached a level after this time; default the previous successful run;
set it far back to list everything at a level), *thresholds* (days left, one per line; default
`COMPLIANCE_DEADLINE_THRESHOLDS` or 7, 2). It changes no request; only the notice outbox moves.
To record an extension use the DAG `request_extension`. Tasks: `compliance.jobs.watchdog`;
rules: `compliance.requests.deadlines`;
what each alert means: docs/operations.md.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import Param, dag, get_current_context, task

from compliance import runtime
from compliance.jobs import watchdog
from compliance.requests import deadlines
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


def _previous_success() -> datetime | None:
    """When the last successful run started (give-ups after it are new); lazy, may wrap None."""
    prev = get_current_context().get("prev_start_date_success")
    return prev if isinstance(prev, datetime) else None


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
        return watchdog.check(runtime.context(), params, _previous_success())

    @task
    def notify(summary: dict) -> dict:
        return watchdog.notify(runtime.context(), summary)

    @task
    def chase_notices() -> dict:
        return watchdog.chase_notices(runtime.context(), _previous_success())

    @task
    def notify_notices(summary: dict) -> dict:
        return watchdog.notify_notices(runtime.context(), summary)

    @task
    def check_holds(params: dict | None = None) -> dict:
        return watchdog.check_holds(runtime.context(), params, _previous_success())

    @task
    def notify_holds(summary: dict) -> dict:
        return watchdog.notify_holds(runtime.context(), summary)

    notify(check())
    notify_holds(check_holds())
    notify_notices(chase_notices())


deadline_watchdog()
