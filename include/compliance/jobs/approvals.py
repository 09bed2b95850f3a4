"""The four-eyes approval's task-layer steps, shared by every destructive DAG (issue 18 item 4).

`not_approved` is the one alert task of `deletion_requests`, `retention_sweep` and
`client_offboarding`: it runs only when the approval step skipped the destructive tasks (a
rejection, the timeout's default Reject, or an approval refused because the run's own trigger
gave it). `approved` writes an approval to the ledger; the approval step calls it on resume.
Rules: `compliance.desk.approvals`; guide: docs/approvals.md.
"""

from __future__ import annotations

from typing import Any

from compliance.core import alerts
from compliance.core.context import JobContext
from compliance.desk import approvals as rules
from compliance.offboarding import run as offboarding

WHY = (
    "the approval was rejected, nobody answered it within its timeout (its default is "
    "Reject), or the run's own trigger approved it (four eyes: refused)"
)


def approved(
    ctx: JobContext, dag_id: str, run_id: str, approval: dict[str, Any], approver_id: str
) -> int:
    """Record the approval (keyed hash of the approver, the digest approved) in the ledger."""
    return rules.record(
        ctx.state,
        ctx.hash_key,
        dag_id=dag_id,
        run_id=run_id,
        approval=approval,
        approver_id=approver_id,
    )


def not_approved(ctx: JobContext, dag_id: str, planned: dict[str, Any] | None) -> dict[str, Any]:
    """One alert to the staff channels: what was planned and did not run. Client offboarding
    keeps its own message (clients named, R27); the others say what stays undone."""
    planned = planned or {}
    if dag_id == "client_offboarding":
        return offboarding.not_approved(ctx, planned)
    approval = planned.get("approval") or {}
    if not approval.get("required"):
        return {"sent": [], "alerted": False}  # nothing was waiting for a person
    message = alerts.Alert(
        subject=f"[compliance] {dag_id}: destructive run not approved",
        body="\n".join(
            [
                f"The destructive steps of {dag_id} did not run: {WHY}.",
                f"Why it needed approval: {', '.join(approval.get('why') or [])}.",
                "",
                approval.get("summary_md") or "",
                "",
                _next_step(dag_id),
                "What to do: docs/approvals.md, section 'When a run is not approved'.",
            ]
        ),
        kind="approval",
    )
    sent = alerts.send_digest(ctx.channels, message, f"{dag_id} approval alert")
    return {**sent, "alerted": True}


def _next_step(dag_id: str) -> str:
    if dag_id == "deletion_requests":
        return (
            "The batch stays open and its deadlines keep running (R16, G1): the next run "
            "resumes it and asks again."
        )
    return "Nothing was deleted; the next nightly run asks again while the rules are unapproved."
