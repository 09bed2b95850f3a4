"""One offboarding run: plan (counts; a dry run stops here), approval, then execute.

`plan` finds the clients due (`scope.due_clients`), counts what each holds in every store and
writes the report to `reports/offboarding/<run_id>.json`; its small result (client ids, totals,
a markdown summary for the approver) travels through XCom. Client ids are our business clients'
ids, never a consumer's data.

`execute` runs after a person approved (the DAG's `ApprovalOperator`; docs/offboarding.md):
it checks each client again (still ended and due, no hold since), then deletes or returns its
data, verifies a deletion left nothing (`erase.residue` must be empty, else the step fails and
a rerun converges), queues one contract-end notice per sub-processor (`notify`, sent at the end
of the step and retried by the outbox), writes a receipt per client
(`receipts/offboarding/<client>/<action>.json`) and appends a ledger entry
(`client_offboarded` or `client_data_returned`): counts, rule ids and the client's keyed hash,
with an idempotency key so a rerun adds nothing twice. A rejected or timed-out approval skips
execute; `not_approved` then alerts staff (`notify`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from compliance.core import alerts, ledger, workspace_layout
from compliance.core.context import JobContext
from compliance.core.hashing import keyed_hash
from compliance.core.outputs import put_json, put_summary
from compliance.offboarding import erase, export, notify, scope

DAG_ID = "client_offboarding"
REPORTS = workspace_layout.OFFBOARDING_REPORTS
ACTIONS = ("delete", "return")
RULES = ["G4 Art. 28(3)(g)", "R27", "R19", "R18"]


class Refused(ValueError):
    """A run's parameters are not acceptable; names the field and the rule."""


@dataclass(frozen=True)
class Options:
    action: str = "delete"
    dry_run: bool = True
    client_id: str | None = None
    link_days: int | None = None

    def __post_init__(self) -> None:
        if self.action not in ACTIONS:
            raise Refused('action must be "delete" or "return" (G4 Art. 28(3)(g))')


def report_key(run_id: str) -> str:
    return f"{REPORTS}{run_id}.json"


def client_ref(ctx: JobContext, client: str) -> str:
    """How the ledger names a client: a keyed hash, like every other ledger reference."""
    return keyed_hash(ctx.hash_key, "client", client)


def _totals(counts: dict[str, dict[str, Any]]) -> dict[str, int]:
    return {
        "rows": sum(sum(c["tables"].values()) for c in counts.values()),
        "log_lines": sum(sum(c["log_lines"].values()) for c in counts.values()),
        "recordings": sum(sum(c["recordings"].values()) for c in counts.values()),
        "workspace_objects": sum(c["workspace_objects"] for c in counts.values()),
    }


def summary_markdown(result: dict[str, Any]) -> str:
    """What the approver reads in Required Actions: counts per client, nothing else."""
    lines = [
        f"**{result['action']}** the data of {len(result['clients'])} client(s) whose contract "
        f"ended more than {result['grace_days']} days ago (G4 Art. 28(3)(g), R27).",
        "",
        "| client | contract ended | rows | log lines | recordings | documents |",
        "|---|---|---|---|---|---|",
    ]
    for c in result["report"]:
        if c["held"]:
            continue
        lines.append(
            f"| {c['client_id']} | {c['ended_on']} | {sum(c['tables'].values())} | "
            f"{sum(c['log_lines'].values())} | {sum(c['recordings'].values())} | "
            f"{c['workspace_objects']} |"
        )
    if result["held"]:
        lines += ["", f"Held (R19), not touched: {', '.join(result['held'])}."]
    lines += ["", f"Report: `{result['report_key']}`."]
    return "\n".join(lines)


def plan(ctx: JobContext, options: Options) -> dict[str, Any]:
    """Who is due and what they hold; the report in the workspace, a small result for XCom."""
    now = ctx.now()
    run_id = f"off-{now:%Y%m%dT%H%M%S}"
    due = scope.due_clients(ctx, options.client_id, again=options.action == "return")
    counts = scope.inventory(ctx, [c.client_id for c in due])
    report = [{**c.to_dict(), **counts[c.client_id]} for c in due]
    ready = [c.client_id for c in due if not c.held]
    result: dict[str, Any] = {
        "run_id": run_id,
        "action": options.action,
        "dry_run": options.dry_run,
        "grace_days": ctx.settings.offboarding_grace_days,
        "clients": ready,
        "held": [c.client_id for c in due if c.held],
        "totals": _totals({c: counts[c] for c in ready}),
        "report_key": report_key(run_id),
        "link_days": options.link_days,
    }
    ws = ctx.workspace
    put_json(ws.s3, ws.bucket, result["report_key"], {**result, "report": report, "rules": RULES})
    result["summary_md"] = summary_markdown({**result, "report": report})
    put_summary(ws.s3, ws.bucket, DAG_ID, {k: v for k, v in result.items() if k != "summary_md"})
    return result


def needs_approval(planned: dict[str, Any]) -> bool:
    """A dry run, or a run with nobody to offboard, stops before the approval step."""
    return not planned["dry_run"] and bool(planned["clients"])


def execute(ctx: JobContext, planned: dict[str, Any]) -> dict[str, Any]:
    """The approved action for every planned client that is still due and not held."""
    if planned["dry_run"]:
        raise Refused("a dry run never executes (docs/offboarding.md)")
    action, run_id = planned["action"], planned["run_id"]
    done, skipped, already = [], {}, []
    for client in planned["clients"]:
        if action == "delete" and scope.exists(ctx, scope.receipt_key(client, "delete")):
            already.append(client)  # a retry after this client was done: the receipt stays
            continue
        still = scope.due_clients(ctx, client, again=True)
        if not still or still[0].held:
            skipped[client] = "held" if still else "no_longer_due"
            continue
        if action == "delete":
            receipt = _delete(ctx, client, run_id)
        else:
            receipt = _return(ctx, client, run_id, planned.get("link_days"))
        done.append(receipt)
    result = {
        "run_id": run_id,
        "action": action,
        "done": len(done),
        "already_done": already,
        "skipped": skipped,
        "notices": notify.send_due(ctx) if action == "delete" and done else {},
    }
    ws = ctx.workspace
    put_summary(ws.s3, ws.bucket, DAG_ID, {**result, "dry_run": False})
    if skipped:
        alerts.send_digest(ctx.channels, _skipped_alert(run_id, skipped), "offboarding")
    return result


def _delete(ctx: JobContext, client: str, run_id: str) -> dict[str, Any]:
    before = scope.inventory(ctx, [client])[client]
    done = erase.delete_client(ctx, client, run_id)
    left = erase.residue(ctx, client, done)
    if left:
        raise RuntimeError(
            f"offboarding {run_id}: {sum(left.values())} item(s) of a client remain in "
            f"{sorted(left)}; the run fails so a rerun converges (G4 Art. 28(3)(g))"
        )
    receipt = {
        "run_id": run_id,
        "client_id": client,
        "action": "delete",
        "completed_at": ctx.now().isoformat(),
        "found": before,
        "deleted": done,
        "residue": 0,
        "backups": _backups_text(done),
        # one contract-end notice per sub-processor, through the outbox (retried until
        # acknowledged; statuses in the state DB and the watchdog's digest)
        "subprocessors": notify.queue_notices(ctx, client),
        "rules": RULES,
    }
    return _record(ctx, client, receipt, "client_offboarded")


def _backups_text(done: dict[str, Any]) -> str:
    text = "tombstoned: a restore purges the client's consumers before going live (R18)"
    if done.get("backups"):
        stores = ", ".join(sorted(done["backups"]))
        text += f"; snapshots of {stores} rewritten without the client's rows, old versions deleted"
    return text


def _return(ctx: JobContext, client: str, run_id: str, link_days: int | None) -> dict[str, Any]:
    made = export.build(ctx, client, run_id, link_days=link_days)
    receipt = {
        "run_id": run_id,
        "client_id": client,
        "action": "return",
        "completed_at": ctx.now().isoformat(),
        "export": made,
        "rules": ["G4 Art. 28(3)(g)", "R12", "R27"],
    }
    return _record(ctx, client, receipt, "client_data_returned")


def _record(ctx: JobContext, client: str, receipt: dict[str, Any], kind: str) -> dict[str, Any]:
    ws = ctx.workspace
    put_json(ws.s3, ws.bucket, scope.receipt_key(client, receipt["action"]), receipt)
    payload = {
        "run_id": receipt["run_id"],
        "action": receipt["action"],
        "rules": receipt["rules"],
        "counts": _counts(receipt),
    }
    entry = ledger.Entry(
        kind=kind,
        ref=client_ref(ctx, client),
        payload=payload,
        idempotency_key=f"offboarding:{receipt['run_id']}:{client_ref(ctx, client)[:32]}",
    )
    ledger.append(ctx.state, ctx.hash_key, [entry])
    return receipt


def _counts(receipt: dict[str, Any]) -> dict[str, int]:
    if receipt["action"] == "return":
        made = receipt["export"]
        return {k: made[k] for k in ("rows", "log_lines", "recordings", "bytes")}
    done = receipt["deleted"]
    return {
        "rows": sum(done["tables"].values()),
        "log_lines": sum(done["log_lines"].values()),
        "recordings": sum(done["recordings"].values()),
        "tombstones": sum(done["tombstones"].values()),
        "workspace_objects": done["workspace_objects"],
        "backup_rows": sum(b["rows_removed"] for b in done.get("backups", {}).values()),
    }


def not_approved(ctx: JobContext, planned: dict[str, Any]) -> dict[str, Any]:
    """The approval was rejected or timed out: execute was skipped; staff are alerted."""
    return notify.not_approved(ctx, planned)


def _skipped_alert(run_id: str, skipped: dict[str, str]) -> alerts.Alert:
    return alerts.Alert(
        subject=f"Offboarding {run_id}: {len(skipped)} client(s) not processed",
        body=(
            "Approved, but no longer due or now under a legal hold (R19): "
            + ", ".join(f"{c} ({why})" for c, why in sorted(skipped.items()))
        ),
        kind="offboarding",
    )
