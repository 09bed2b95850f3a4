"""The statistics_reports DAG's tasks: resolve_period -> event_statistics, ccpa_metrics ->
report.

The configuration (`config/statistics.yaml`, or `Settings.statistics_path`) is read by every
task: it is small, and a task retried after an edit sees one consistent file. The events are
read through the data map's engine for the configured system (`check_against_datamap` refuses
a table the map does not describe); the rollups and the request log (R23) live in the state DB.
Logic: `compliance.stats` (docs/statistics.md).
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

from compliance.core.context import JobContext
from compliance.stats import config
from compliance.stats.period import Period, resolve

if TYPE_CHECKING:
    from compliance.stats.config import StatsConfig

# `compliance.stats.publish` (pandas, matplotlib: seconds to import) is imported inside the
# tasks that publish: the DAG file imports this module, and a DAG must parse in under a second.


def resolve_period(ctx: JobContext, params: dict[str, Any], when: datetime) -> dict[str, Any]:
    """The period of the run (the form's, else the schedule's); `PeriodError` names the field.

    `when` is the run's logical date (scheduled) or trigger time (manual)."""
    return resolve(params, when, _config(ctx).reports.max_period_days).to_dict()


def event_statistics(ctx: JobContext, span: dict[str, Any], refresh: bool) -> dict[str, Any]:
    """Suppressed figures of the period and its weekly series, as CSVs and charts."""
    from compliance.stats import publish

    cfg = _config(ctx)
    return publish.publish_event_statistics(
        ctx.engine(cfg.source.system),
        ctx.state,
        ctx.workspace.s3,
        ctx.workspace.bucket,
        ctx.datamap,
        cfg,
        Period.from_dict(span),
        today=ctx.run_day,
        refresh=refresh,
    )


def ccpa_metrics(
    ctx: JobContext, span: dict[str, Any], as_of: datetime, year: int | None
) -> dict[str, Any]:
    """R23 metrics for a calendar year and the open requests with their days left."""
    from compliance.stats import publish

    ws = ctx.workspace
    return publish.publish_ccpa_metrics(
        ctx.state, ws.s3, ws.bucket, _config(ctx), Period.from_dict(span), as_of=as_of, year=year
    )


def report(
    ctx: JobContext, span: dict[str, Any], events: dict[str, Any], ccpa: dict[str, Any]
) -> dict[str, Any]:
    """The self-contained HTML report and the headline summary."""
    from compliance.stats import publish

    ws = ctx.workspace
    return publish.publish_report(
        ws.s3, ws.bucket, _config(ctx), Period.from_dict(span), events, ccpa, ctx.now()
    )


def _config(ctx: JobContext) -> StatsConfig:
    return config.load_config(ctx.settings.statistics_path)
