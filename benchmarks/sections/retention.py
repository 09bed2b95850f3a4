"""Figure 3: the retention purge of >= 1M expired rows against one bulk DELETE.

The rule is the configured `email-events` rule (25 months; expired rows are deleted and added
to monthly counts per event type and device). In the seeded world only the oldest events are
older than 25 months (under 1M at 1M contacts), so the sweep's as-of date is moved forward to
the first day on which `--retention-rows` (default 1.2 per contact: 1.2M at the large scale)
rows are past the period; the run says which day. Both sides get a fresh TEMPLATE copy of the
seeded CRM:

- baseline: `DELETE FROM email_events WHERE occurred_at < cutoff`, one statement, one
  transaction (the in-database floor; it holds its locks for the whole run), timed from BEGIN
  to COMMIT on a connected session;
- ours: the DAG's task `compliance.jobs.retention.execute` for the rule "email-events", timed in
  two parts: its set-up (policy file checked, sweep built, tables reflected, holds read) and the
  purge (`execute_step`: key-range batches, on PostgreSQL each counted into the monthly
  aggregates by one `WITH grouped AS (SELECT ... GROUP BY) INSERT ...` statement and then
  deleted, both on one REPEATABLE READ snapshot in its own short transaction, legal holds
  excluded: `retention.aggregates.delete_counted`). The throughput target compares the purge
  with the bulk DELETE (both from a ready session to the last COMMIT); the whole task's time is
  a row of its own. The purge's longest write transaction is timed by the module itself
  (`longest_transaction_s` in the task's result) and reported as
  `retention.longest_transaction_s`.

Throughput is rows deleted per second on each side (their row counts differ by the held rows).
"""

from __future__ import annotations

import time
from datetime import date, datetime, timedelta
from typing import Any

import sqlalchemy as sa

from benchmarks.sections import _common as C

IMPORTS = ["compliance.retention", "compliance.retention.plan", "compliance.jobs.retention"]
SECTION = "retention"
RULE = "email-events"


def available() -> str | None:
    try:
        from compliance.retention import execute_step, load_policy  # noqa: F401
        from compliance.retention.plan import Sweep  # noqa: F401
    except ImportError as exc:
        return f"compliance.retention is missing ({exc})"
    return None


def bulk_delete(db: str, cutoff: str) -> dict[str, Any]:
    """The floor: one DELETE, one transaction; `seconds` from BEGIN to COMMIT (connected)."""
    with C.engine(db).connect() as conn:
        conn.exec_driver_sql("SELECT 1")  # connected before the clock, as the sweep is
        conn.commit()
        started = time.perf_counter()
        with conn.begin():
            result = conn.execute(
                sa.text("DELETE FROM email_events WHERE occurred_at < :c"),
                {"c": datetime.fromisoformat(cutoff)},
            )
        seconds = time.perf_counter() - started
    return {"rows": int(result.rowcount or 0), "seconds": seconds}


def batched(crm: str, state: str, as_of: str) -> dict[str, Any]:
    """The DAG's own task (`compliance.jobs.retention.execute`) for one rule, real run, in its
    two parts: the set-up the task does before any write (policy file checked, sweep built,
    tables reflected, holds read: `_sweep` and `Sweep.rows`), then the purge
    (`execute_step`), each timed. The stage's time is the whole task."""
    from dataclasses import replace
    from pathlib import Path

    from benchmarks.sections.deletion import job_context
    from compliance.jobs import retention as job
    from compliance.retention import run as ret_run

    ctx = job_context({"ws": "unused-by-execute", "state": state, "crm": crm})
    ctx = replace(ctx, settings=replace(ctx.settings, retention_path=Path(C.env().retention_path)))
    options = {"dry_run": False, "rules": [RULE], "as_of": as_of, "now": C.now().isoformat()}
    started = time.perf_counter()
    sweep, _ = job._sweep(ctx, options)
    sweep.rows(sweep.step(RULE).system or "")  # reflection and the hold registry
    ready = time.perf_counter()
    result = ret_run.execute(sweep, options, RULE)
    done = time.perf_counter()
    return {**result, "setup_s": ready - started, "purge_s": done - ready}


def _sweep_day(bench: C.Bench, rows: int) -> tuple[date, datetime, int, int, int]:
    """(as-of, cutoff, rows before the cutoff, all events, batch_rows) for >= `rows` expired."""
    from compliance.core.datamap.validate import load_datamap
    from compliance.retention import load_policy

    loaded = load_policy(bench.env.retention_path, load_datamap(bench.env.datamap_path))
    rule = next(r for r in loaded.policy.rules if r.id == RULE)
    with bench.connect(bench.env.world_db) as conn:
        total = conn.exec_driver_sql("SELECT count(*) FROM email_events").scalar_one()
        nth = conn.execute(
            sa.text("SELECT occurred_at FROM email_events ORDER BY occurred_at OFFSET :n LIMIT 1"),
            {"n": min(rows, max(total - 1, 0))},
        ).scalar()
        day = nth.date()
        while rule.period.cutoff(day) <= nth:
            day += timedelta(days=1)
        cutoff = rule.period.cutoff(day)
        expired = conn.execute(
            sa.text("SELECT count(*) FROM email_events WHERE occurred_at < :c"), {"c": cutoff}
        ).scalar_one()
    return day, cutoff, int(expired), int(total), int(loaded.policy.batch_rows)


def run(bench: C.Bench, target_rows: int) -> list[C.Row]:
    missing = available()
    if missing:
        return [
            C.unavailable(SECTION, "retention purge throughput", missing),
            C.unavailable(SECTION, "retention.longest_transaction_s", missing),
        ]
    day, cutoff, expired, total, batch_rows = _sweep_day(bench, target_rows)
    state = bench.state_db("ret_state")
    bulk_db, bulk_clone = bench.clone_world("ret_bulk")  # one copy at a time: disk space
    try:
        bulk = bench.stage(
            "retention.bulk_delete", bulk_delete, [(bulk_db, cutoff.isoformat())], baseline=True
        )
    finally:
        bench.drop_db(bulk_db)
    ours_db, _ = bench.clone_world("ret_batched")
    try:
        ours = bench.stage("retention.execute_step", batched, [(ours_db, state, day.isoformat())])
    finally:
        bench.drop_db(ours_db)
    result = ours.results[0]
    counts = result["counts"].get("email_events", {})
    ours_rows = int(sum(v for k, v in counts.items() if k != "held"))
    bulk_rows, bulk_s = int(bulk.results[0]["rows"]), float(bulk.results[0]["seconds"])
    purge_s, setup_s = float(result["purge_s"]), float(result["setup_s"])
    longest = float(result.get("longest_transaction_s", 0.0))
    return [
        C.info(
            SECTION,
            "expired e-mail events",
            float(expired),
            "rows",
            note=f"of {total:,}; sweep as of {day} (cutoff {cutoff:%Y-%m-%d}), rule {RULE!r}; "
            f"one TEMPLATE copy of the CRM per side ({bulk_clone:.0f} s each)",
        ),
        C.info(
            SECTION,
            "bulk DELETE (one statement)",
            bulk_s,
            "s",
            peak_mb=bulk.peak_mb,
            note=f"{bulk_rows:,} rows, {bulk_rows / bulk_s:,.0f} rows/s, BEGIN to COMMIT on a "
            f"connected session (the stage with its process and connection: {bulk.seconds:.2f} s)",
        ),
        C.info(
            SECTION,
            "retention task (set-up + purge)",
            ours.seconds,
            "s",
            peak_mb=ours.peak_mb,
            note=f"compliance.jobs.retention.execute's work: set-up {setup_s:.2f} s (policy file "
            f"checked, sweep built, tables reflected, holds read), purge {purge_s:.2f} s",
        ),
        C.info(
            SECTION,
            "retention purge (execute_step, batched)",
            purge_s,
            "s",
            peak_mb=ours.peak_mb,
            note=f"{ours_rows:,} rows in {result.get('batches', 0)} batches (policy batch_rows "
            f"{batch_rows}, growing under batch_seconds), {ours_rows / purge_s:,.0f} rows/s; "
            f"counts {counts}",
        ),
        C.at_least(
            SECTION,
            "retention purge throughput",
            ours_rows / purge_s,
            bulk_rows / bulk_s,
            "rows/s",
            0.5,
            peak_mb=ours.peak_mb,
            note="baseline = one bulk DELETE of the same age cut on its own copy; both timed "
            "from a connected, ready session to the last COMMIT",
        ),
        C.at_most(
            SECTION,
            "retention.longest_transaction_s",
            longest,
            "s",
            1.0,
            peak_mb=ours.peak_mb,
            note=f"the purge's longest write transaction (its result's longest_transaction_s); "
            f"the bulk DELETE's single transaction lasted {bulk_s:.2f} s",
        ),
    ]
