"""Deletion dry run: what a run now would erase, and nothing changed (issue 7, R16, R19).

Manual runs of `deletion_requests` default to this; scheduled runs always execute. The preview
covers the requests already open plus those the inbox (and the form) would add, examined without
moving a document or writing a state row. It goes through the same `plan.assemble` as a real
batch (resolution within the tenant, legal holds, per-table counts, recordings), the log
shards are *scanned* by the same mapped tasks that would scrub them, and the backup stores are
*counted* by the mapped `tombstone_backups` (`count_backups`: the tombstones a run would add
and, with `rewrite: true`, the snapshot rows it would remove; no tombstone, object or state row
written, R16.1, R18). The only writes are the report under `deletion/dry-runs/<id>/` (the
backup counts wait there as parts, since the DAG hands `finalize` only the log scans) and a
transient targets file for the scans, removed by `report` (or by the next run's
`targets.sweep` if the dry run crashed).
"""

from __future__ import annotations

import hashlib
import html
import json
from collections import Counter
from typing import Any

import sqlalchemy as sa

from compliance.core import logfiles as logs
from compliance.core.context import JobContext
from compliance.core.outputs import delete_many, put_bytes, put_json, put_summary
from compliance.core.shards import LogShard
from compliance.core.stores.s3 import list_keys
from compliance.core.workspace_layout import DRY_RUNS
from compliance.deletion import backup_rewrite, plan
from compliance.deletion.targets import (
    Targets,
    load_targets,
    store_targets,
    sweep,
    targets_key,
    tombstone_hash,
)
from compliance.requests import intake, state
from compliance.requests.inbox import Examination
from compliance.requests.schema import cj_tombstones
from compliance.requests.state_rows import chunks, client_text

PREFIX = "dry-"
BACKUP_PARTS = "backups/"  # under the dry run's folder: one count per backup store


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
    if fan["shards"] or fan["backups"]:
        store_targets(ws, targets, ctx.datamap_hash)
    return {
        **fan,  # log shards to scan, backup stores to count (`count_backups`)
        "batch_id": batch_id,
        "dry_run": True,
        "systems": [],
        "recordings": [],
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


def count_backups(ctx: JobContext, batch_id: str, store: str) -> dict[str, Any]:
    """What `tombstone_backups` would do to one backup store, read only (R16.1, R18, R19): per
    request, the tombstones it would add (those not already recorded) and, with `rewrite:
    true`, the snapshot rows it would remove (`backup_rewrite.count_store`: the same scope and
    the same joins as the rewrite). Writes no tombstone, no object of the store and no state
    row; the counts (request refs and numbers only) become a part of the dry run's report."""
    spec = ctx.datamap.stores[store]
    targets = load_targets(ctx.workspace, batch_id)
    per_ref: dict[str, dict[str, int]] = {
        ref: {"tombstones": n} for ref, n in _new_tombstones(ctx, targets, spec.system).items()
    }
    out: dict[str, Any] = {"store": store, "rewrite": bool(spec.rewrite)}
    if spec.rewrite:
        counted = backup_rewrite.count_store(
            ctx.store(store),
            spec,
            ctx.datamap.systems[spec.system],
            backup_rewrite.scope_for(targets, spec.system),
        )
        out.update(counted.to_dict())
        for ref, n in counted.per_ref.items():
            per_ref.setdefault(ref, {})["rows"] = int(n)
    out["tombstones"] = sum(c.get("tombstones", 0) for c in per_ref.values())
    out["per_ref"] = per_ref
    s3, bucket = ctx.workspace.s3, ctx.workspace.bucket
    put_json(s3, bucket, f"{DRY_RUNS}{batch_id}/{BACKUP_PARTS}{store}.json", out)
    return out


def _new_tombstones(ctx: JobContext, targets: Targets, system: str) -> dict[str, int]:
    """ref -> tombstones `erasure.tombstone` would add: each identity's keyed hash once (the
    first request in batch order has it), less those the state already holds. Reads only."""
    first: dict[tuple[str, str, str], str] = {}
    for ref in targets.active_refs():
        client = client_text(targets.requests[ref]["client_id"])
        for kind, values in targets.identities.get(ref, {}).items():
            for v in values:
                first.setdefault((client, kind, tombstone_hash(ctx.hash_key, kind, v)), ref)
    t = cj_tombstones
    held: set[tuple[str, str, str]] = set()
    with ctx.state.connect() as conn:
        for chunk in chunks(list(first)):
            q = sa.select(t.c.client_id, t.c.kind, t.c.hash).where(
                t.c.system == system, sa.tuple_(t.c.client_id, t.c.kind, t.c.hash).in_(chunk)
            )
            held.update((client_text(c), k, h) for c, k, h in conn.execute(q))
    return dict(Counter(ref for stone, ref in first.items() if stone not in held))


def _backup_parts(s3: Any, bucket: str, base: str) -> list[tuple[str, dict[str, Any]]]:
    keys = sorted(o["Key"] for o in list_keys(s3, bucket, base + BACKUP_PARTS))
    return [(k, json.loads(s3.get_object(Bucket=bucket, Key=k)["Body"].read())) for k in keys]


def _merge_backups(doc: dict[str, Any], parts: list[dict[str, Any]]) -> None:
    """Per request, what each backup store would get (R18): its rows a rewrite would remove go
    into `counts[<store>]["rows"]`, as the receipt will count them; the whole store's figures
    into `doc["backups"]`."""
    by_ref = {req["ref"]: req for req in doc["requests"]}
    doc["backups"] = []
    for part in sorted(parts, key=lambda p: p["store"]):
        store = part["store"]
        for ref, n in sorted(part.get("per_ref", {}).items()):
            req = by_ref.get(ref)
            if req is None:
                continue
            req.setdefault("backups", []).append({"store": store, **n})
            if n.get("rows"):
                req["counts"].setdefault(store, {})["rows"] = int(n["rows"])
        doc["backups"].append(
            {
                "store": store,
                "rewrite": bool(part.get("rewrite")),
                "tombstones": int(part.get("tombstones", 0)),
                **{
                    k: int(part[k])
                    for k in ("days", "objects_rewritten", "rows_removed")
                    if k in part
                },
            }
        )


def report(ctx: JobContext, batch_id: str, shard_results: list[dict[str, Any]]) -> dict[str, Any]:
    """Merge the log scans and the backup counts into the draft; write report.json and
    index.html; drop the targets and the parts."""
    s3, bucket = ctx.workspace.s3, ctx.workspace.bucket
    base = f"{DRY_RUNS}{batch_id}/"
    doc = json.loads(s3.get_object(Bucket=bucket, Key=base + "draft.json")["Body"].read())
    parts = _backup_parts(s3, bucket, base)
    _merge_backups(doc, [p for _, p in parts])
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
    doc["rules"] = ["R16", "R18", "R19"]
    put_json(s3, bucket, base + "report.json", doc)
    put_bytes(s3, bucket, base + "index.html", render_html(doc).encode(), "text/html")
    s3.delete_object(Bucket=bucket, Key=targets_key(batch_id))
    delete_many(s3, bucket, [base + "draft.json", *(k for k, _ in parts)])
    summary = {
        "batch_id": batch_id,
        "dry_run": True,
        "would_erase": sum(r["action"] == "erase" for r in doc["requests"]),
        "would_defer": sum(r["action"] == "defer" for r in doc["requests"]),
        "would_erase_partly": sum(r["action"] == "erase_partly" for r in doc["requests"]),
        "rejected": doc["intake"]["rejected"],
        "backup_rows": sum(b.get("rows_removed", 0) for b in doc["backups"]),
        "tombstones": sum(b["tombstones"] for b in doc["backups"]),
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
    backups = "".join(
        f"<tr><td><code>{_e(b['store'])}</code></td><td>"
        + (
            "rewrite the snapshots without the consumers' rows, and tombstone"
            if b["rewrite"]
            else "tombstone only: re-applied on restore"
        )
        + f"</td><td>{_e(b['tombstones'])}</td>"
        + (
            f"<td>{_e(b.get('rows_removed', 0))} row(s) in {_e(b.get('objects_rewritten', 0))}"
            f" object(s) of {_e(b.get('days', 0))} snapshot day(s)</td></tr>"
            if b["rewrite"]
            else "<td>&ndash;</td></tr>"
        )
        for b in doc.get("backups", [])
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
<h2>Backups (R18)</h2>
<table><tr><th>Store</th><th>Would</th><th>New tombstones</th><th>Would remove</th></tr>
{backups or '<tr><td colspan="4">No backup store to act on.</td></tr>'}</table>
<h2>Refused documents</h2>
<table><tr><th>Document</th><th>Reason</th><th>Field</th><th>Message</th></tr>
{refused or '<tr><td colspan="4">None.</td></tr>'}</table>
</body></html>
"""
