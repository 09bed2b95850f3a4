"""
### Client offboarding

At a contract's end the service provider returns or deletes all of the client's personal data
(G4 Art. 28(3)(g)) and keeps nothing beyond the contract's purposes (R27). Daily:

1. **plan**: every client whose contract ended (the tenant registry's `ended_column`) more than
   `COMPLIANCE_OFFBOARDING_GRACE_DAYS` (30) ago and not yet offboarded; what each holds, counted
   per table, log store, recording store and workspace folder, to
   `reports/offboarding/<run_id>.json`. Clients under a legal hold are listed, never touched
   (R19). **A dry run stops here** (the default for manual runs);
2. **needs_approval**: nothing to do, or a dry run, skips the rest;
3. **approve**: a second person approves the counts in Browse -> Required Actions
   (`FourEyesApproval`, docs/approvals.md: not the user who triggered the run); no answer
   within `COMPLIANCE_APPROVAL_TIMEOUT_HOURS` (72) counts as a rejection;
4. **approved**: an empty marker, the approval's one direct downstream: a rejection skips it,
   and with it execute;
5. **execute**: *delete*: recordings, the client's log lines, tombstones for backups (R18), every
   mapped CRM table through the tenant column and relations, its workspace documents; verified
   empty; `rewrite: true` backups rewritten without the client's rows; one contract-end notice
   per sub-processor through the notice outbox. *return*: one zip of every mapped table (CSV and
   JSON), its log lines and recordings, encrypted, behind a link that expires within 7 days
   (R12). A receipt per client in `receipts/offboarding/<client>/` and a ledger entry (counts,
   keyed hashes);
6. **alert_not_approved**: only when the approval was rejected or timed out (`approved`
   skipped): one alert to the staff channels naming the clients whose data stays (R27).

It hangs below `approved`, not below execute: execute stays a leaf, and the leaves decide the
run's state (the alert, all_skipped, is skipped whenever something before it failed), so a
failed plan, approval or execute shows a failed run, never a green one.

Scheduled runs delete (after approval). Tasks: `compliance.jobs.offboarding`; guide:
docs/offboarding.md.
"""

from __future__ import annotations

from datetime import datetime

from airflow.providers.standard.operators.empty import EmptyOperator
from airflow.sdk import Param, dag, get_current_context, task

from compliance import runtime
from compliance.jobs import offboarding as jobs_offboarding
from compliance_alerts import DEFAULT_ARGS
from compliance_approval import FourEyesApproval, alert_not_approved

PARAMS = {
    "dry_run": Param(
        True,
        type="boolean",
        title="Dry run",
        description="Count only; nothing is returned or deleted. Scheduled runs always act.",
    ),
    "action": Param(
        "delete",
        enum=["delete", "return"],
        title="Action",
        description="delete: erase the client's data everywhere. return: an export of it all.",
    ),
    "client_id": Param(
        None,
        type=["null", "string"],
        title="Client",
        description="One client id (empty: every client due).",
    ),
    "link_expiry_days": Param(
        7, type="integer", minimum=1, maximum=7, title="Export link expiry (days)"
    ),
}


@dag(
    schedule="0 4 * * *",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    params=PARAMS,
    tags=["compliance", "deletion"],
    doc_md=__doc__,
)
def client_offboarding():
    @task
    def plan(params: dict | None = None) -> dict:
        return jobs_offboarding.plan(
            runtime.context(), params or {}, runtime.scheduled(get_current_context())
        )

    @task.short_circuit
    def needs_approval(planned: dict) -> bool:
        return jobs_offboarding.needs_approval(planned)

    approve = FourEyesApproval(
        task_id="approve",
        subject="Client offboarding: approve {{ ti.xcom_pull(task_ids='plan')['action'] }}",
    )

    @task
    def execute(planned: dict) -> dict:
        return jobs_offboarding.execute(runtime.context(), planned)

    planned = plan()
    # A rejection (or its timeout's default) skips the gate's direct downstream, `approved`, and
    # so execute; the alert (all_skipped) hangs below `approved`, not below execute, which stays
    # the leaf that decides the run's state. A dry run's short-circuit skips all of them.
    approved = needs_approval(planned) >> approve >> EmptyOperator(task_id="approved")
    alert_not_approved(after=approved)
    approved >> execute(planned)


client_offboarding()
