"""Four-eyes rules for destructive runs (issue 18, item 4; docs/approvals.md).

Which run must wait for a second staff member before it erases anything, and why. Plain
Python: each plan task asks here, and the answer travels through XCom to the approval step
(`plugins/compliance_approval.py`), which waits only when `required` is true:

- a **deletion batch** of more requests than `approval_batch_size`, or a manual run that is
  not a dry run (`approval_manual_runs`): a person started it, so another person confirms it;
  small scheduled batches go ahead (R16-R18 deadlines keep moving);
- **client offboarding** whenever something is to be deleted or returned (G4 Art. 28(3)(g), R27);
- a **retention run** whose rules changed since the last approved run (`approval_retention_rules`):
  the rules are the policy file *and* the data map, because the policy names categories and the
  map decides which tables and stores those categories are, so an edit of either changes what
  a sweep deletes (R27, R26). The first run ever counts as changed.

Approvals are written to the audit ledger (R22) as `approval` entries: the dag id, the run id,
the digest approved and a keyed hash of the approver (no names); the last approved digest is
read back from there. A dry run never needs approval: it changes nothing.

The dict returned (`Decision.to_xcom`) is small and PII-free: `required`, `why` (codes),
`summary_md` (the counts the approver reads), `digest`, `timeout_s`, and a random `token` naming
this one decision. The approval's ledger entry carries the token, and every destructive step
checks that entry before it acts (`require`): marking the approval task "success" by hand, or
clearing the erasing tasks after a rejection, erases nothing, because only a second person's
approval writes that entry.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine, select

from compliance.core import ledger
from compliance.core.hashing import keyed_hash
from compliance.core.settings import Settings

KIND = "approval"  # the ledger entry kind

# Reason codes (`why`): what made a run wait.
BATCH_SIZE = "batch_size"
MANUAL_RUN = "manual_run"
OFFBOARDING = "offboarding"
RULES_CHANGED = "rules_changed"
FIRST_RUN = "first_run"


@dataclass(frozen=True)
class Decision:
    required: bool
    why: list[str] = field(default_factory=list)
    summary_md: str = ""
    digest: str | None = None  # what an approval approves (retention: the rules' digest)
    timeout_s: int = 72 * 3600

    def to_xcom(self) -> dict[str, Any]:
        return {
            "token": secrets.token_hex(16) if self.required else None,
            "required": self.required,
            "why": list(self.why),
            "summary_md": self.summary_md,
            "digest": self.digest,
            "timeout_s": self.timeout_s,
        }


def _timeout(settings: Settings) -> int:
    return max(1, int(settings.approval_timeout_hours * 3600))


def _decide(settings: Settings, why: list[str], summary: str, digest: str | None = None) -> dict:
    reasons = "; ".join(WHY_TEXT.get(w, w) for w in why)
    md = f"**Why this waits for you:** {reasons}.\n\n{summary}" if why else summary
    return Decision(bool(why), why, md, digest, _timeout(settings)).to_xcom()


WHY_TEXT = {
    BATCH_SIZE: "the batch is larger than the configured size (COMPLIANCE_APPROVAL_BATCH_SIZE)",
    MANUAL_RUN: "a person started this run and it is not a dry run",
    OFFBOARDING: "client offboarding always needs a second person (G4 Art. 28(3)(g), R27)",
    RULES_CHANGED: "the retention rules changed since the last approved run",
    FIRST_RUN: "no retention run was ever approved",
}


# --------------------------------------------------------------------------- deletion


def for_deletion(settings: Settings, batch: dict[str, Any], *, scheduled: bool) -> dict[str, Any]:
    """A batch above the configured size, or a manual non-dry run with something to erase."""
    n = int(batch.get("requests") or 0)
    if batch.get("dry_run") or n == 0:
        return _decide(settings, [], deletion_summary(batch, n))
    why = []
    if n > settings.approval_batch_size:
        why.append(BATCH_SIZE)
    if not scheduled and settings.approval_manual_runs:
        why.append(MANUAL_RUN)
    return _decide(settings, why, deletion_summary(batch, n))


def deletion_summary(batch: dict[str, Any], n: int) -> str:
    """What the approver reads: counts and store names, never a consumer."""
    lines = [
        f"Erase the personal data of **{n}** consumer request(s) in batch "
        f"`{batch.get('batch_id')}` (R16-R18); {batch.get('deferred', 0)} deferred (R19).",
        "",
        "| what | count |",
        "|---|---|",
        f"| SQL systems | {len(batch.get('systems') or [])} |",
        f"| log day folders to scrub | {len(batch.get('shards') or [])} |",
        f"| recording stores | {len(batch.get('recordings') or [])} |",
        f"| backup stores (tombstones, R18) | {len(batch.get('backups') or [])} |",
        "",
        "Run a dry run of `deletion_requests` for the per-request counts; the batch's targets "
        "stay in the workspace (`batches/`).",
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------- offboarding


def for_offboarding(settings: Settings, planned: dict[str, Any]) -> dict[str, Any]:
    """Always, when there is a client to act on and it is not a dry run."""
    act = not planned.get("dry_run") and bool(planned.get("clients"))
    return _decide(settings, [OFFBOARDING] if act else [], planned.get("summary_md") or "")


# --------------------------------------------------------------------------- retention


def rules_digest(policy_sha256: str, datamap_sha256: str) -> str:
    """One digest of what decides a sweep's deletions: the policy file and the data map."""
    text = json.dumps({"policy": policy_sha256, "datamap": datamap_sha256}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def for_retention(
    settings: Settings,
    state: Engine,
    planned: dict[str, Any],
    *,
    dry_run: bool,
    digest: str,
    dag_id: str = "retention_sweep",
) -> dict[str, Any]:
    """Rules changed since the last approved run (or never approved): wait; else go ahead."""
    summary = retention_summary(planned)
    if dry_run or not settings.approval_retention_rules:
        return _decide(settings, [], summary, digest)
    last = last_approved_digest(state, dag_id)
    if last == digest:
        return _decide(settings, [], summary, digest)
    return _decide(settings, [FIRST_RUN if last is None else RULES_CHANGED], summary, digest)


def retention_summary(planned: dict[str, Any]) -> str:
    lines = [
        "The retention sweep's dry-run counts per rule (R27, R26; held rows stay, R19):",
        "",
        "| rule | wave | action | counts |",
        "|---|---|---|---|",
    ]
    for rule in planned.get("rules") or []:
        counts = ", ".join(
            f"{where} {k}={v}"
            for where, per in sorted((rule.get("counts") or {}).items())
            for k, v in sorted((per or {}).items() if isinstance(per, dict) else [("n", per)])
        )
        lines.append(f"| {rule['rule']} | {rule['wave']} | {rule['action']} | {counts or '-'} |")
    return "\n".join(lines)


# --------------------------------------------------------------------------- the ledger


def last_approved_digest(state: Engine, dag_id: str) -> str | None:
    """The digest of the newest `approval` entry of this DAG (None: never approved)."""
    t = ledger.cj_ledger
    with state.connect() as conn:
        text = conn.execute(
            select(t.c.payload)
            .where(t.c.kind == KIND, t.c.ref == dag_id)
            .order_by(t.c.seq.desc())
            .limit(1)
        ).scalar()
    return json.loads(text).get("digest") if text else None


def record(
    state: Engine,
    hash_key: bytes,
    *,
    dag_id: str,
    run_id: str,
    approval: dict[str, Any],
    approver_id: str,
) -> int:
    """The approval in the ledger (R22): who as a keyed hash, what as a digest; once per run."""
    entry = ledger.Entry(
        kind=KIND,
        ref=dag_id,
        payload={
            "dag_id": dag_id,
            "run_id": run_id,
            "digest": approval.get("digest"),
            "why": list(approval.get("why") or []),
            "approver": keyed_hash(hash_key, "approver", approver_id),
        },
        idempotency_key=_approved_key(approval, dag_id, run_id),
    )
    return ledger.append(state, hash_key, [entry])[0]


class NotApproved(PermissionError):
    """A destructive step whose plan needed a second person's approval, with none on record."""


def require(state: Engine, approval: dict[str, Any] | None) -> None:
    """Raise `NotApproved` unless the plan needed no approval or its approval is in the ledger.

    Why here and not only in the approval step: Airflow lets a user mark a task "success" or
    clear downstream tasks after a rejection; the ledger entry is written only when a second
    person's Approve is recorded (`plugins/compliance_approval.py`)."""
    if not approval or approval.get("required") is False:
        return
    token = approval.get("token")
    t = ledger.cj_ledger
    found = None
    if token:
        with state.connect() as conn:
            found = conn.execute(
                select(t.c.seq).where(t.c.idempotency_key == f"{KIND}:{token}")
            ).first()
    if found is None:
        raise NotApproved(
            "four eyes: this plan needs a second person's approval and none is on record; "
            "the destructive step does not run (docs/approvals.md)"
        )


def _approved_key(approval: dict[str, Any], dag_id: str, run_id: str) -> str:
    token = approval.get("token")
    return f"{KIND}:{token}" if token else f"{KIND}:{dag_id}:{run_id}"
