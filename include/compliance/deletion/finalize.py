"""Closing a deletion batch: verify zero residue twice, then receipts, ledger, close (R16,
R18-R20).

Receipts are built from state that outlives crashes: the plan stored before anything changed,
and the log lines counted per object just before each object was replaced (`state.record_lines`).
The ledger entries, the completed requests and the finished batch are committed in one
transaction; a crash before it resumes the batch, a retry after it only cleans up.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime
from typing import Any

from sqlalchemy import Engine

from compliance.core import checkpoints, ledger, workspace_layout
from compliance.core.context import JobContext, Workspace
from compliance.core.datamap.model import BackupStore, DataMap, IdentityType
from compliance.core.hashing import keyed_hash
from compliance.core.outputs import put_json_many, put_summary
from compliance.core.stores import recordings
from compliance.deletion import (
    backup_rewrite,
    erase_sql,
    outbox,
    residue_oracle,
    workspace_copies,
)
from compliance.deletion.targets import (
    BATCHES,
    RECEIPTS,
    Targets,
    clean_up,
    held_key,
    load_targets,
    sweep,
    tombstone_hash,
)
from compliance.requests import state
from compliance.requests.request_records import receipt_fields as request_record_fields
from compliance.requests.resolve import Subject, resolve


class ErasureIncomplete(RuntimeError):
    """Verification found residue: the requests stay open and the run fails loudly."""

    reason = "erasure_residue"


def finalize(ctx: JobContext, batch_id: str, shard_results: list[dict[str, Any]]) -> dict[str, Any]:
    """Re-check every system for every target, then receipt, ledger and close (R16, R20).

    Two checks must both find nothing: the eraser's own (its SQL residue query, identities
    resolved again, recordings, the scrub's re-scan, tombstones) and the independent oracle
    (`residue_oracle`, which shares no matching code with the eraser: raw bytes of every log
    object version, every text column of every mapped table). The oracle's log part is read from
    the `verify_logs` shard verdicts when their objects are unchanged, and searched here for
    anything they do not cover.
    """
    if not batch_id:
        return {"batch_id": "", "completed": 0, "deferred": 0, "residue": 0}
    ws, state_engine = ctx.workspace, ctx.state
    batch = state.get_batch(state_engine, batch_id)
    if batch is not None and batch.status == "done":  # a retry after success: clean up only
        sweep(ws, state_engine)
        return _summary(ws, state_engine, batch_id)
    targets = load_targets(ws, batch_id, ctx.datamap_hash)
    _check_residue(ctx, targets, shard_results)
    verdict = residue_oracle.verify(
        ctx.datamap,
        ctx.engines,
        ctx.stores,
        targets,
        residue_oracle.load_verdicts(ws.s3, ws.bucket, f"{BATCHES}{batch_id}/"),
    )
    if not verdict.clean:  # where and how many, never the value (no PII in exceptions)
        raise ErasureIncomplete(
            f"batch {batch_id}: the independent check found residue in {verdict.describe()}; "
            "requests stay open"
        )
    _close(ctx, targets, verdict)
    return _summary(ws, state_engine, batch_id)


def _check_residue(ctx: JobContext, targets: Targets, shard_results: list[dict[str, Any]]) -> None:
    """The eraser's own re-check: SQL residue, identities resolved again, recordings, the
    scrub's re-scan, tombstones. Counts per system or store; raises on any."""
    dm, engines, hash_key = ctx.datamap, ctx.engines, ctx.hash_key
    residue: dict[str, int] = {}
    for sname, system in dm.systems.items():
        held = targets.held.get(sname) or None
        left = erase_sql.residue(engines[sname], system, targets.consumer_ids(sname), held)
        # Re-resolve by what the request gave (not the expanded set, which may include an
        # identity shared with someone else in the tenant, e.g. a household phone).
        subjects = [
            Subject(
                ref,
                str(targets.requests[ref]["client_id"]),
                tuple(
                    (IdentityType(k), v) for k, vs in targets.given.get(ref, {}).items() for v in vs
                ),
            )
            for ref in targets.active_refs()
        ]
        # A consumer whose rows a hold keeps may still be found through them (R19): not residue;
        # erase_sql.residue above checked that nothing else of it is left.
        found = sum(
            len(
                {str(c) for c in r.consumer_ids}
                - set((held or {}) if ref in targets.partial else ())
            )
            for ref, r in resolve(engines[sname], system, subjects).items()
        )
        residue[sname] = sum(left.values()) + found
    for name, per_ref in targets.recordings.items():
        keys = [k for ref in targets.active_refs() for k in per_ref.get(ref, [])]
        residue[name] = recordings.remaining(ctx.store(name), dm.stores[name].bucket, keys)
    for res in shard_results:
        residue[res["store"]] = residue.get(res["store"], 0) + int(res.get("residue", 0))
    for name, store in dm.stores.items():
        if isinstance(store, BackupStore):
            stones = state.tombstone_hashes(ctx.state, store.system)
            missing = sum(
                1
                for ref in targets.active_refs()
                for kind, values in targets.identities.get(ref, {}).items()
                for v in values
                if (
                    str(targets.requests[ref]["client_id"]),
                    kind,
                    tombstone_hash(hash_key, kind, v),
                )
                not in stones
            )
            residue[name] = missing
    if any(residue.values()):
        bad = sorted(k for k, v in residue.items() if v)
        raise ErasureIncomplete(
            f"batch {targets.batch_id}: residue in {', '.join(bad)}; requests stay open"
        )


def _close(ctx: JobContext, targets: Targets, verdict: residue_oracle.Verdict) -> None:
    """Receipts, then ledger, statuses and the finished batch in one transaction, then the
    clean-up of identity documents (R20)."""
    ws, state_engine, hash_key, now = ctx.workspace, ctx.state, ctx.hash_key, ctx.now()
    batch_id = targets.batch_id
    # The jobs' own earlier copies of these consumers (bundles, request documents): recorded,
    # then deleted, then counted from the record, so a rerun's receipt says the same (issue 16).
    copies = workspace_copies.remove(ctx, targets)
    left = {ref: f.count() for ref, f in workspace_copies.find(ctx, targets).items()}
    if any(left.values()):
        raise ErasureIncomplete(f"batch {batch_id}: workspace copies remain; requests stay open")
    receipts = _receipts(ctx.datamap, state_engine, targets, now, verdict, copies)
    backup_rewrite.add_to_receipts(ctx, batch_id, receipts)  # rewritten snapshots (R18)
    entries = []
    documents = {}
    for ref, receipt in receipts.items():
        req = targets.requests[ref]
        key = workspace_layout.receipt_key(req["client_id"], req["request_id"], "delete")
        documents[key] = receipt
        partial = ref in targets.partial
        entries.append(
            ledger.Entry(
                "erasure_partial" if partial else "erasure_completed",
                keyed_hash(
                    hash_key, "request", f"{req['client_id']}\x1f{req['request_id']}\x1fdelete"
                ),
                {
                    "batch": batch_id,
                    "receipt": key,
                    "counts": receipt["counts"],
                    "workspace_copies": receipt["workspace_copies"]["kinds"],
                    **({"kept": _kept_summary(targets.kept[ref])} if partial else {}),
                    "rules": ["R16", "R18", "R19", "R20"] if partial else ["R16", "R18", "R20"],
                },
                f"erasure:{batch_id}:{ref}",
            )
        )
        if partial:  # what the next batch needs once the hold ends (encrypted, like targets)
            documents[held_key(req["client_id"], req["request_id"])] = _held_doc(targets, ref)
    put_json_many(ws.s3, ws.bucket, documents)
    checkpoints.reached("finalize.receipts_written")
    partial_by_code: dict[str, list[int]] = defaultdict(list)
    for ref in targets.active_refs():
        if ref in targets.partial:
            partial_by_code[targets.partial[ref]].append(int(ref))
    done = [int(r) for r in targets.active_refs() if r not in targets.partial]
    with state_engine.begin() as conn:  # all or nothing: a crash before commit resumes the batch
        ledger.append(conn, hash_key, entries)
        checkpoints.reached("finalize.ledger_appended")
        state.set_status(conn, done, "completed", completed_at=now)
        for code, pks in sorted(partial_by_code.items()):  # R19, R21: erased but for the hold
            state.set_status(conn, pks, "partial", reason_code=code, batch_id=batch_id)
        checkpoints.reached("finalize.requests_completed")
        state.finish_batch(conn, batch_id, finished_at=now)
    checkpoints.reached("finalize.batch_finished")
    clean_up(ws, state_engine, targets)


def _hold_sections(targets: Targets, ref: str) -> dict[str, Any]:
    """The receipt's legal-hold part: what is kept (tables, stores, counts), why (exception code,
    scope, until when) and how it may be used; and, once the rest is erased, what an earlier
    partial erasure had kept. Names and counts only, never an identity value."""
    out: dict[str, Any] = {}
    if ref in targets.partial:
        out["legal_holds"] = {
            "statement": (
                "erased except what the legal holds below keep (R16.2, R19); what is kept is "
                "used only for that exception (R21) and erased when the hold ends"
            ),
            "holds": targets.kept.get(ref, []),
            "rules": ["R16.2", "R19", "R21"],
        }
    earlier = targets.requests[ref].get("earlier")
    if earlier:
        out["earlier_partial_erasure"] = earlier
    return out


def _shared_section(req: dict[str, Any]) -> dict[str, Any]:
    """R16, R21: identities found on the consumer's rows that other consumers of the client
    also hold were not erased by (`Resolution.admit`); the receipt says how many and why."""
    n = req.get("shared_identities", 0)
    if not n:
        return {}
    return {
        "shared_identities": {
            "count": n,
            "handling": (
                "found on the consumer's records but also the own identity of other consumers "
                "of the client (a shared or business phone or e-mail): the consumer's records "
                "were erased by key, but lines and rows holding only this value were kept as "
                "the other consumers' data"
            ),
            "rules": ["R16", "R21"],
        }
    }


def _kept_summary(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What holds kept, for the ledger: scope, code, tables/stores and counts (no identities)."""
    return [
        {"scope": e["scope"], "exception": e["exception"], "hold": e["hold"], "kept": e["kept"]}
        for e in entries
    ]


def _held_doc(targets: Targets, ref: str) -> dict[str, Any]:
    """A partial request's memory until its hold ends (R19): the consumers and identities this
    batch found (their rows are erased now, so the next resolution would miss the held rows),
    the holds that applied (unchanged holds: the request waits) and what was kept and erased.
    Holds identities: lives only in the encrypted workspace, deleted when the request completes
    (R20)."""
    return {
        "batch_id": targets.batch_id,
        "code": targets.partial[ref],
        "signature": targets.signatures.get(ref, []),
        "consumers": {s: per.get(ref, []) for s, per in targets.consumers.items()},
        "identities": targets.identities.get(ref, {}),
        "kept": targets.kept.get(ref, []),
    }


def _summary(ws: Workspace, state_engine: Engine, batch_id: str) -> dict[str, Any]:
    statuses = [r.status for r in state.batch_requests(state_engine, batch_id)]
    summary = {
        "batch_id": batch_id,
        "completed": statuses.count("completed"),
        "partial": statuses.count("partial"),
        "deferred": statuses.count("deferred"),
        "residue": 0,
        "receipts": f"s3://{ws.bucket}/{RECEIPTS}",
    }
    put_summary(ws.s3, ws.bucket, "deletion_requests", summary)
    return summary


def _receipts(
    dm: DataMap,
    state_engine: Engine,
    targets: Targets,
    now: datetime,
    verdict: residue_oracle.Verdict,
    copies: dict[str, dict[str, int]] | None = None,
) -> dict[str, dict[str, Any]]:
    plan = state.batch_plan(state_engine, targets.batch_id)
    counts: dict[str, dict[str, dict[str, int]]] = defaultdict(lambda: defaultdict(dict))
    for row in plan:
        counts[str(row.request_pk)][row.system][row.target] = row.planned
    for pk, per_store in state.batch_lines(state_engine, targets.batch_id).items():
        for store, n in per_store.items():
            if not store.startswith(workspace_copies.KIND_PREFIX):  # objects, not lines
                counts[str(pk)][store]["lines"] = n
    exceptions = [
        {"system": s, "table": t, "column": c, "exception": col.exception.value, "rule": "R19"}
        for s, system in dm.systems.items()
        for t, table in system.tables.items()
        for c, col in table.columns.items()
        if col.exception is not None
    ] + [
        {
            "system": s,
            "table": t,
            "exception": table.exception.value,
            "reason": table.reason,
            "rule": "R19",
        }
        for s, system in dm.systems.items()
        for t, table in system.tables.items()
        if table.exception is not None
    ]
    backups = [
        {
            "store": n,
            "handling": "tombstoned; re-applied on restore (R18)",
            "rewritten": bool(s.rewrite),
        }
        for n, s in dm.stores.items()
        if isinstance(s, BackupStore)
    ]
    out = {}
    pks = [int(ref) for ref in targets.active_refs()]
    rows = state.get_requests(state_engine, pks)
    notices = state.notices_of(state_engine, pks)
    for ref in targets.active_refs():
        req = targets.requests[ref]
        touched = {(s, t) for s, tables in counts[ref].items() for t, n in tables.items() if n}
        held_back = [e for e in exceptions if (e["system"], e["table"]) in touched]
        row = rows[int(ref)]
        partial = ref in targets.partial
        out[ref] = {
            "request_id": req["request_id"],
            "client_id": req["client_id"],
            "type": "delete",
            "received_at": req["received_at"],
            # R19, R21: a partial erasure is a response in part; the request completes (and
            # this receipt is re-issued) when the holds end and the rest is erased.
            "status": "partial" if partial else "completed",
            "completed_at": None if partial else now.isoformat(),
            **({"partially_erased_at": now.isoformat()} if partial else {}),
            "response_due": row.due.isoformat() if row.due else None,
            "batch_id": targets.batch_id,
            "counts": {s: dict(t) for s, t in sorted(counts[ref].items())},
            "verification": {
                "statement": "every system re-checked: zero residue"
                + (" outside what legal holds keep (see legal_holds)" if partial else ""),
                "eraser_recheck": (
                    "CRM rows still owned by the consumers, the request's identities resolved "
                    "again, recording versions, the scrubbed log folders re-scanned, tombstones"
                ),
                "independent": residue_oracle.statement(
                    dm, verdict, residue_oracle.request_values(targets, ref)
                ),
                "rules": ["R16.1", "R16.2", "R18", "R19"],
            },
            "exceptions": held_back,
            **_shared_section(req),
            **_hold_sections(targets, ref),  # R16.2, R19, R21: what holds keep, and why
            # R16.3/R16.4: status and attempts per sub-processor and recipient; the outbox
            # re-issues this receipt when one changes (compliance.deletion.outbox.reissue).
            **outbox.receipt_sections(dm, notices.get(int(ref), {})),
            "backups": backups,
            # issue 16: the jobs' own earlier copies (bundles, documents), counts and kinds only
            "workspace_copies": workspace_copies.receipt_section((copies or {}).get(ref, {})),
            **request_record_fields(row),  # R1, R5, R24; earlier requests (R20)
            "rules": ["R16", "R18", "R19", "R20"],
        }
    return out
