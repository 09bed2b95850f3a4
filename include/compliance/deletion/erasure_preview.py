"""Deletion dry run: what a run now would erase, and nothing changed (issue 7, R16, R19).

Manual runs of `deletion_requests` default to this; scheduled runs always execute. The preview
covers the requests already open plus those the inbox (and the form) would add, examined without
moving a document or writing a state row. It goes through the same `plan.assemble` as a real
batch (resolution within the tenant, legal holds, per-table counts, recordings), and the log
shards are *scanned* by the same mapped tasks that would scrub them. The only writes are the
report under `deletion/dry-runs/<id>/` and a transient targets file for the scans, removed by
`report` (or by the next run's `targets.sweep` if the dry run crashed).
"""

from __future__ import annotations

import hashlib
import html
import json
from collections import Counter
from typing import Any

from compliance.core import logfiles as logs
from compliance.core.context import JobContext
from compliance.core.outputs import put_bytes, put_json, put_summary
from compliance.core.shards import LogShard
from compliance.core.stores.s3 import list_keys
from compliance.deletion import plan
from compliance.deletion.targets import Targets, load_targets, store_targets, sweep, targets_key
from compliance.requests import intake, state
from compliance.requests.inbox import Examination

DRY_RUNS = "deletion/dry-runs/"
PREFIX = "dry-"


def preview(ctx: JobContext, exam: Examination) -> dict[str, Any]:
    """Plan without storing: fan-out JSON whose only non-empty list is the log shards to scan."""
    ws, now = ctx.workspace, ctx.now()
    sweep(ws, ctx.state)
    pending = [
        plan.Pending.stored(ws.s3, ws.bucket, row)
        for row in state.actionable_requests(ctx.state, "delete")
    ]
    pending += [
        plan.Pending(
            f"new-{i}",
            a.client_id,
            a.request_id,
            a.received_at.isoformat(),
            a.identities.as_doc(),
        )
        for i, a in enumerate(exam.accepted(intake.RequestType.delete), 1)
    ]
    digest = hashlib.sha256(",".join(p.ref for p in pending).encode()).hexdigest()[:8]
    batch_id = f"{PREFIX}{now:%Y%m%dT%H%M%S}-{digest}"
    targets, counts = plan.assemble(ctx.datamap, ctx.engines, batch_id, pending, now)
    rejections = [r.as_dict() for r, _ in exam.results if isinstance(r, intake.Rejected)]
    draft = {
        "batch_id": batch_id,
        "generated_at": now.isoformat(),
        "intake": exam.summary().to_dict(),
        "rejections": rejections,
        "requests": [
            {
                "request_id": targets.requests[ref]["request_id"],
                "client_id": targets.requests[ref]["client_id"],
                "source": "new" if ref.startswith("new-") else "open",
                # R19: `erase_partly` keeps what a scoped hold covers (`kept` says what and
                # why); `wait`: a partial erasure whose holds are unchanged, nothing to do
                "action": _action(targets, ref),
                "reason_code": targets.deferred.get(ref)
                or targets.partial.get(ref)
                or targets.waiting.get(ref),
                "kept": targets.kept.get(ref, []),
                "consumers": {s: len(per.get(ref, [])) for s, per in targets.consumers.items()},
                "counts": counts.get(ref, {}),
                "ref": ref,
            }
            for ref in targets.requests
        ],
    }
    put_json(ws.s3, ws.bucket, f"{DRY_RUNS}{batch_id}/draft.json", draft)
    fan = plan.fanout(ctx, targets)
    if fan["shards"]:
        store_targets(ws, targets, ctx.datamap_hash)
    return {
        **fan,
        "batch_id": batch_id,
        "dry_run": True,
        "systems": [],
        "recordings": [],
        "backups": [],
    }


def scan_log_shard(ctx: JobContext, batch_id: str, shard: LogShard) -> dict[str, Any]:
    """Count the lines a scrub of one day folder would erase, per request; read only."""
    store = ctx.datamap.stores[shard.store]
    store_s3 = ctx.store(shard.store)
    wanted = load_targets(ctx.workspace, batch_id).log_targets(shard.store)  # holds: R19
    per_ref: Counter[str] = Counter()
    objects = 0
    for obj in list_keys(store_s3, store.bucket, shard.prefix):
        per_ref.update(logs.scan_object(store_s3, store, store.bucket, obj["Key"], wanted).per_ref)
        objects += 1
    return {
        "store": shard.store,
        "shard": shard.prefix,
        "objects": objects,
        "per_ref": dict(per_ref),
    }


def report(ctx: JobContext, batch_id: str, shard_results: list[dict[str, Any]]) -> dict[str, Any]:
    """Merge the log scans into the draft; write report.json and index.html; drop the targets."""
    s3, bucket = ctx.workspace.s3, ctx.workspace.bucket
    base = f"{DRY_RUNS}{batch_id}/"
    doc = json.loads(s3.get_object(Bucket=bucket, Key=base + "draft.json")["Body"].read())
    lines: dict[str, Counter[str]] = {}
    for res in shard_results:
        for ref, n in res.get("per_ref", {}).items():
            lines.setdefault(ref, Counter())[res["store"]] += int(n)
    for req in doc["requests"]:
        ref = req.pop("ref")
        for store, n in sorted(lines.get(ref, Counter()).items()):
            req["counts"].setdefault(store, {})["lines"] = n
    doc["dry_run"] = True
    doc["note"] = (
        "Dry run: nothing was erased, moved, registered or sent. A scheduled run (or a manual "
        "run with dry run off) would act on these requests, re-planned at that time."
    )
    doc["rules"] = ["R16", "R19"]
    put_json(s3, bucket, base + "report.json", doc)
    put_bytes(s3, bucket, base + "index.html", render_html(doc).encode(), "text/html")
    s3.delete_object(Bucket=bucket, Key=targets_key(batch_id))
    s3.delete_object(Bucket=bucket, Key=base + "draft.json")
    summary = {
        "batch_id": batch_id,
        "dry_run": True,
        "would_erase": sum(r["action"] == "erase" for r in doc["requests"]),
        "would_defer": sum(r["action"] == "defer" for r in doc["requests"]),
        "would_erase_partly": sum(r["action"] == "erase_partly" for r in doc["requests"]),
        "rejected": doc["intake"]["rejected"],
        "report": f"s3://{bucket}/{base}index.html",
    }
    put_summary(s3, bucket, "deletion_requests", summary)
    return summary


def _action(targets: Targets, ref: str) -> str:
    if ref in targets.deferred:
        return "defer"
    if ref in targets.waiting:
        return "wait"
    return "erase_partly" if ref in targets.partial else "erase"


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def render_html(doc: dict[str, Any]) -> str:
    rows = []
    for r in doc["requests"]:
        counts = "".join(
            f"<div><code>{_e(where)}</code>: "
            + ", ".join(f"{_e(t)} {_e(n)}" for t, n in sorted(per.items()))
            + "</div>"
            for where, per in sorted(r["counts"].items())
        )
        action = {
            "erase": "erase",
            "erase_partly": f"erase all but what a legal hold keeps ({_e(r['reason_code'])}, R19)",
            "wait": f"wait: partly erased, hold unchanged ({_e(r['reason_code'])}, R19)",
        }.get(r["action"], f"defer ({_e(r['reason_code'])}, R19)")
        rows.append(
            f"<tr><td>{_e(r['client_id'])}</td><td><code>{_e(r['request_id'])}</code></td>"
            f"<td>{_e(r['source'])}</td><td>{action}</td><td>{counts or '&ndash;'}</td></tr>"
        )
    refused = "".join(
        f"<tr><td><code>{_e(r['source'])}</code></td><td>{_e(r['reason'])}</td>"
        f"<td>{_e(r['field'] or '')}</td><td>{_e(r['message'])}</td></tr>"
        for r in doc["rejections"]
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Deletion dry run {_e(doc["batch_id"])}</title>
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'">
<style>body{{font-family:system-ui,sans-serif;margin:2em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;vertical-align:top;text-align:left}}</style></head>
<body>
<h1>Deletion dry run</h1>
<p>{_e(doc["note"])}</p>
<p>Generated {_e(doc["generated_at"])} &middot; inbox: {_e(doc["intake"]["documents"])} document(s),
{_e(doc["intake"]["accepted"])} would be accepted, {_e(doc["intake"]["rejected"])} refused.</p>
<h2>Requests (R16)</h2>
<table><tr><th>Client</th><th>Request</th><th>Source</th><th>Action</th><th>Would erase</th></tr>
{"".join(rows) or '<tr><td colspan="5">No request to act on.</td></tr>'}</table>
<h2>Refused documents</h2>
<table><tr><th>Document</th><th>Reason</th><th>Field</th><th>Message</th></tr>
{refused or '<tr><td colspan="4">None.</td></tr>'}</table>
</body></html>
"""
