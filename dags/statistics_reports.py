"""
### Statistics reports

Privacy-safe trends from the CRM's e-mail events, and the CCPA request metrics our clients owe
(R23), weekly (Monday 05:00 UTC, the week before) and monthly (the 1st, 06:00 UTC, the month
before), or for any period from the trigger form:

* sends, opens, clicks and their rates by industry, client, campaign, device type and OS;
  distinct consumers exposed and clicked; a weekly series and weekly open rates by industry;
* **nothing identifies a person**: a cell built from fewer than *k* distinct consumers
  (`config/statistics.yaml`, default 10) is suppressed, with complementary suppression so it
  cannot be worked out from totals;
* CCPA metrics per client and request type for a calendar year (received, complied, denied by
  reason, median and mean days to respond) and the open requests with their days left;
* CSVs, PNG charts and one self-contained HTML report under `stats/<period>/` in the
  workspace bucket; `summaries/statistics_reports.json` holds the headline figures.

Form: `period` is `week:2026-W47`, `month:2026-10`, `year:2025`, `last-week`, `last-month` or
`last-year`; or leave it empty and give `from` and `to` (inclusive dates). Periods that are not
over yet, inverted or malformed are refused with a message naming the field.
Logic: `compliance.stats` (docs/statistics.md).
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import Param, dag, get_current_context, task
from airflow.sdk.exceptions import AirflowFailException
from airflow.timetables.trigger import MultipleCronTriggerTimetable

from compliance import runtime
from compliance.jobs import statistics as jobs_statistics
from compliance.stats.period import MONTHLY_CRON, WEEKLY_CRON, PeriodError
from compliance_alerts import DEFAULT_ARGS, nightly_deadline


@dag(
    schedule=MultipleCronTriggerTimetable(WEEKLY_CRON, MONTHLY_CRON, timezone="UTC"),
    start_date=datetime(2026, 1, 1),
    catchup=False,
    deadline=nightly_deadline("statistics_reports", timedelta(hours=3)),
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    tags=["compliance", "statistics"],
    doc_md=__doc__,
    params={
        "period": Param(
            None,
            type=["null", "string"],
            title="Period",
            description="week:2026-W47, month:2026-10, year:2025, last-week, last-month or "
            "last-year. Empty: from/to below, or else last week.",
        ),
        "from": Param(None, type=["null", "string"], format="date", title="From (inclusive)"),
        "to": Param(None, type=["null", "string"], format="date", title="To (inclusive)"),
        "ccpa_year": Param(
            None,
            type=["null", "integer"],
            minimum=2020,
            maximum=2100,
            title="CCPA metrics year",
            description="Empty: the calendar year in which the period ends.",
        ),
        "refresh_rollups": Param(
            False,
            type="boolean",
            title="Recompute weekly rollups",
            description="Recompute the stored weeks of the series from the events.",
        ),
    },
)
def statistics_reports():
    @task
    def resolve_period() -> dict:
        """Validate the period first, so a bad one fails at once (no retries) with its reason."""
        return _refuse_bad_period(runtime.context(), *_when(get_current_context()))

    @task
    def event_statistics(span: dict) -> dict:
        return jobs_statistics.event_statistics(runtime.context(), span, _refresh())

    @task
    def ccpa_metrics(span: dict) -> dict:
        return jobs_statistics.ccpa_metrics(runtime.context(), span, *_as_of_year())

    @task
    def report(span: dict, events: dict, ccpa: dict) -> dict:
        return jobs_statistics.report(runtime.context(), span, events, ccpa)

    span = resolve_period()
    report(span, event_statistics(span), ccpa_metrics(span))


def _when(context: dict) -> tuple[dict, datetime]:
    """The form's values and the run's logical date (scheduled) or trigger time (manual)."""
    return context["params"], context.get("logical_date") or context["dag_run"].run_after


def _refuse_bad_period(ctx, params: dict, when: datetime) -> dict:
    try:
        return jobs_statistics.resolve_period(ctx, params, when)
    except PeriodError as exc:
        raise AirflowFailException(f"refused period: {exc}") from exc


def _refresh() -> bool:
    return bool(get_current_context()["params"].get("refresh_rollups"))


def _as_of_year() -> tuple[datetime, int | None]:
    context = get_current_context()
    return context["dag_run"].run_after, context["params"].get("ccpa_year")


statistics_reports()
