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
from compliance.stats.period import MONTHLY_CRON, WEEKLY_CRON
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
        from compliance.stats import config, period

        ctx = get_current_context()
        when = ctx.get("logical_date") or ctx["dag_run"].run_after
        cfg = config.load_config()
        try:
            return period.resolve(ctx["params"], when, cfg.reports.max_period_days).to_dict()
        except period.PeriodError as exc:
            raise AirflowFailException(f"refused period: {exc}") from exc

    @task
    def event_statistics(span: dict) -> dict:
        from compliance.stats import config, publish
        from compliance.stats.period import Period

        cfg, dm, env = config.load_config(), runtime.datamap(), runtime.settings()
        events = runtime.sql_engine(dm.systems[cfg.source.system].connection)
        return publish.publish_event_statistics(
            events,
            runtime.sql_engine(cfg.state_connection),
            runtime.s3(env.workspace_connection),
            env.workspace_bucket,
            dm,
            cfg,
            Period.from_dict(span),
            today=datetime.fromisoformat(runtime.run_day()).date(),
            refresh=bool(get_current_context()["params"].get("refresh_rollups")),
        )

    @task
    def ccpa_metrics(span: dict) -> dict:
        from compliance.stats import config, publish
        from compliance.stats.period import Period

        cfg, env = config.load_config(), runtime.settings()
        ctx = get_current_context()
        return publish.publish_ccpa_metrics(
            runtime.sql_engine(cfg.state_connection),
            runtime.s3(env.workspace_connection),
            env.workspace_bucket,
            cfg,
            Period.from_dict(span),
            as_of=ctx["dag_run"].run_after,
            year=ctx["params"].get("ccpa_year"),
        )

    @task
    def report(span: dict, events: dict, ccpa: dict) -> dict:
        from compliance.stats import config, publish
        from compliance.stats.period import Period

        env = runtime.settings()
        return publish.publish_report(
            runtime.s3(env.workspace_connection),
            env.workspace_bucket,
            config.load_config(),
            Period.from_dict(span),
            events,
            ccpa,
        )

    span = resolve_period()
    report(span, event_statistics(span), ccpa_metrics(span))


statistics_reports()
