"""
### Retention sweep

Keeps nothing longer than the retention policy says (R27, `config/retention.yaml`), children's
data shortest (R26), request records at least 24 months (R22), and never what a legal hold
protects (R19). Nightly, no catch-up.

1. **plan**: validates the policy against the data map and computes the dry-run diff: per rule,
   the rows and objects to delete, to de-identify, and those left *held*.
   **approve** (`FourEyesApproval`, docs/approvals.md): when the rules (the policy file and the
   data map) changed since the last approved run, or no run was ever approved, a second staff
   member approves the counts in Browse -> Required Actions; rejected or unanswered, nothing is
   deleted and `alert_not_approved` tells staff. Unchanged rules and dry runs go straight on.
2. **execute**, mapped per rule, in waves that never compete for a row:
   `expire_minors` (children's consumers, first) -> `expire_consumers` (inactive consumers) ->
   `delete_rows` (rows, aggregates, the request log) -> `deidentify` (columns);
   `expire_objects` (log partitions, backup snapshots, non-current versions; Object Lock and
   holds respected) runs alongside. Batches are short transactions; progress is in each log.
3. **report**: JSON and HTML under `retention/<as-of>/<run>/` in the workspace bucket, plan and
   result side by side; a ledger entry for real runs.

**Trigger form**: *dry run* (on by default for manual runs: plan and report only; scheduled runs
always execute), *rules* (a subset of rule ids, one per line; empty = all), *as of* (the date the
periods count back from; default the run's date, never in the future). Reruns are safe: every
step re-evaluates its predicate, so a crashed sweep converges when run again.
Logic: `compliance.retention` (docs/retention.md).
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import Param, chain, dag, get_current_context, task
from airflow.sdk.exceptions import AirflowFailException

from compliance import runtime
from compliance.jobs import retention as jobs_retention
from compliance.retention import PolicyInvalid, RetentionError
from compliance_alerts import DEFAULT_ARGS, nightly_deadline
from compliance_approval import FourEyesApproval, alert_not_approved

# (wave, task id), in sweep order: children's consumers first (R26), objects alongside.
WAVES = [
    ("minors", "expire_minors"),
    ("consumers", "expire_consumers"),
    ("rows", "delete_rows"),
    ("deidentify", "deidentify"),
    ("objects", "expire_objects"),
]

PARAMS = {
    "dry_run": Param(
        True,
        type="boolean",
        title="Dry run",
        description="Plan and report only; nothing is deleted. Scheduled runs always execute.",
    ),
    "rules": Param(
        None,
        type=["null", "array"],
        items={"type": "string"},
        title="Rules",
        description="Rule ids of config/retention.yaml to run, one per line (empty: all).",
    ),
    "as_of": Param(
        None,
        type=["null", "string"],
        format="date",
        title="As of",
        description="Periods count back from this date (default: the run's date; not future).",
    ),
}


@dag(
    schedule="30 2 * * *",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    deadline=nightly_deadline("retention_sweep", timedelta(hours=3)),
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    params=PARAMS,
    tags=["compliance", "retention"],
    doc_md=__doc__,
)
def retention_sweep():
    @task(multiple_outputs=True)
    def plan() -> dict:
        """Options from the form, then the dry-run diff and each wave's rule ids."""
        return _plan_or_fail(runtime.context(), get_current_context())

    @task
    def rules(planned: dict, wave: str) -> list[str]:
        """The rule ids one wave runs (none on a dry run): what the next task maps over.

        Airflow maps only over a task's return value, never over one key of a
        `multiple_outputs` task, so each wave's list gets its own small task."""
        return planned["waves"][wave]

    @task(map_index_template="{{ rule_id }}")
    def execute(options: dict, rule_id: str) -> dict:
        """One rule, in short batches; counts only."""
        return jobs_retention.execute(runtime.context(), options, rule_id)

    @task(trigger_rule="none_failed")
    def report(planned: dict, options: dict, *waves: list) -> dict:
        """JSON + HTML report (plan next to result), summary, and the ledger entry."""
        return jobs_retention.report(
            runtime.context(), planned, options, list(waves), get_current_context()["run_id"]
        )

    p = plan()
    # not approved: every task after the gate is skipped by it directly (none_failed would
    # otherwise run the waves and the report as if nothing had been asked)
    gate = p >> FourEyesApproval(task_id="approve", subject="Retention sweep: approve the rules")
    done, lists = [], []
    for wave, task_id in WAVES:
        ids = gate >> rules.override(task_id=f"{wave}_rules")(p["run"], wave)
        lists.append(ids)
        # an empty wave (dry run, or no rule selected) is skipped; what follows still runs
        step = execute.override(task_id=task_id, trigger_rule="none_failed")
        done.append(gate >> step.partial(options=p["options"]).expand(rule_id=ids))
    chain(*done[:-1])  # objects (the last) run alongside the SQL waves
    gate >> report(p["plan"], p["options"], *done)  # a leaf: a failed run shows failed
    alert_not_approved(after=lists[0])  # skipped with the waves: not approved


def _plan_or_fail(ctx, context) -> dict:
    """A bad form or policy file fails the task at once: a retry would not fix either."""
    try:
        return jobs_retention.plan(
            ctx, dict(context["params"]), scheduled=runtime.scheduled(context)
        )
    except (RetentionError, PolicyInvalid) as exc:
        raise AirflowFailException(str(exc)) from exc


retention_sweep()
