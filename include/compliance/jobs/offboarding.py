"""The client_offboarding DAG's tasks: plan -> (approval) -> execute.

`plan` counts what each ended client holds (a dry run stops there: the default for a manual
run); the approval step between them is Airflow's `ApprovalOperator` in the DAG; `execute`
deletes or returns the approved clients' data. Logic: `compliance.offboarding`; guide:
docs/offboarding.md (G4 Art. 28(3)(g), R27).
"""

from __future__ import annotations

from typing import Any

from compliance.core.context import JobContext
from compliance.desk import approvals
from compliance.offboarding import run


def options(params: dict[str, Any], scheduled: bool) -> run.Options:
    """A manual run is a dry run unless the form says otherwise; a scheduled run is real (it
    still waits for a person's approval) so no ended client's data is kept forever (R27)."""
    dry = params.get("dry_run")
    return run.Options(
        action=params.get("action") or "delete",
        dry_run=False if scheduled else (True if dry is None else bool(dry)),
        client_id=params.get("client_id") or None,
        link_days=params.get("link_expiry_days"),
    )


def plan(ctx: JobContext, params: dict[str, Any], scheduled: bool = False) -> dict[str, Any]:
    """Who is due and what each holds (the report); a dry run ends the run here. `approval`:
    always required when there is something to do (`compliance.desk.approvals`)."""
    planned = run.plan(ctx, options(params, scheduled))
    return {**planned, "approval": approvals.for_offboarding(ctx.settings, planned)}


def needs_approval(planned: dict[str, Any]) -> bool:
    """False skips the approval and the execution: a dry run, or nobody due."""
    return run.needs_approval(planned)


def execute(ctx: JobContext, planned: dict[str, Any]) -> dict[str, Any]:
    """After approval: delete or return each planned client's data; receipts, ledger."""
    approvals.require(ctx.state, planned.get("approval"))  # four eyes (docs/approvals.md)
    return run.execute(ctx, planned)


def not_approved(ctx: JobContext, planned: dict[str, Any] | None) -> dict[str, Any]:
    """After a rejection or the approval's timeout (execute skipped): alert staff (R27)."""
    return run.not_approved(ctx, planned or {})
