"""Deletion requests as one batch: plan, fan out per system and shard, verify, receipt (R16-R21).

The DAG `deletion_requests` calls these in order. Every open request of type `delete` joins one
batch per run, so 1,000 requests cost one pass over each store. The batch's *targets* (consumer
ids, identities, recording keys) are written once, encrypted, to `batches/<id>/targets.json` in
the workspace bucket, never to XCom; tasks receive only the batch id and a system or shard name.

Convergence: a batch stays `planned` until `finalize` succeeds. A rerun after a crash finds it,
reuses its stored targets and plan, and re-executes the idempotent steps; receipts are built from
the plan stored before anything changed, so they are the same as a clean run's.
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Engine

from compliance import erase_sql, faults, holds, ledger, logs, recordings, state
from compliance.datamap.model import BackupStore, DataMap, IdentityType, LogStore, RecordingStore
from compliance.hashing import keyed_hash
from compliance.outputs import put_json, put_summary
from compliance.resolve import Subject, resolve

BATCHES = "batches/"
RECEIPTS = "receipts/"


class ErasureIncomplete(RuntimeError):
    """Verification found residue: the requests stay open and the run fails loudly."""

    reason = "erasure_residue"


@dataclass
class Targets:
    """What a batch erases. Holds identities: lives only in the encrypted workspace bucket."""

    batch_id: str
    requests: dict[str, dict[str, Any]] = field(default_factory=dict)  # ref -> request facts
    consumers: dict[str, dict[str, list[str]]] = field(default_factory=dict)  # system->ref->ids
    given: dict[str, dict[str, list[str]]] = field(default_factory=dict)  # as the request said
    identities: dict[str, dict[str, list[str]]] = field(default_factory=dict)  # + found on rows
    recordings: dict[str, dict[str, list[str]]] = field(default_factory=dict)  # store->ref->keys
    deferred: dict[str, str] = field(default_factory=dict)  # ref -> exception code

    def active_refs(self) -> list[str]:
        return [r for r in self.requests if r not in self.deferred]

    def consumer_ids(self, system: str) -> list[str]:
        per_ref = self.consumers.get(system, {})
        return sorted({c for r in self.active_refs() for c in per_ref.get(r, [])})

    def log_targets(self) -> logs.Targets:
        by_tenant: dict[str, list[tuple[IdentityType, str, str]]] = defaultdict(list)
        for ref in self.active_refs():
            tenant = str(self.requests[ref]["client_id"])
            for kind, values in self.identities.get(ref, {}).items():
                by_tenant[tenant].extend((IdentityType(kind), v, ref) for v in values)
        return logs.Targets(by_tenant)


def targets_key(batch_id: str) -> str:
    return f"{BATCHES}{batch_id}/targets.json"


def load_targets(s3: Any, bucket: str, batch_id: str) -> Targets:
    body = s3.get_object(Bucket=bucket, Key=targets_key(batch_id))["Body"].read()
    return Targets(**json.loads(body))


def plan(
    s3: Any,
    bucket: str,
    dm: DataMap,
    engines: dict[str, Engine],
    state_engine: Engine,
    hash_key: bytes,
    now: datetime,
) -> dict[str, Any]:
    """Form (or resume) the batch; return small JSON naming what to fan out over."""
    pending = state.actionable_requests(state_engine, "delete")
    resumable = sorted(
        {r.batch_id for r in pending if r.batch_id and _is_planned(state_engine, r.batch_id)}
    )
    if resumable:
        batch_id = resumable[0]
        targets = load_targets(s3, bucket, batch_id)
    else:
        batch_id, targets = _new_batch(
            s3, bucket, dm, engines, state_engine, hash_key, now, pending
        )
    return _fanout(s3, dm, targets)


def _is_planned(state_engine: Engine, batch_id: str) -> bool:
    batch = state.get_batch(state_engine, batch_id)
    return batch is not None and batch.status == "planned"


def _new_batch(
    s3, bucket, dm, engines, state_engine, hash_key, now, pending
) -> tuple[str, Targets]:
    if not pending:
        return "", Targets("")
    digest = hashlib.sha256(",".join(str(r.id) for r in pending).encode()).hexdigest()[:8]
    batch_id = f"del-{now:%Y%m%dT%H%M%S}-{digest}"
    targets = Targets(batch_id)
    subjects: list[Subject] = []
    for row in pending:
        ref = str(row.id)
        doc = json.loads(s3.get_object(Bucket=bucket, Key=row.source)["Body"].read())
        idents = tuple((IdentityType(k), v) for k, v in sorted(doc["identities"].items()))
        subjects.append(Subject(ref, row.client_id, idents))
        targets.given[ref] = {k.value: [v] for k, v in idents}
        targets.requests[ref] = {
            "pk": row.id,
            "client_id": row.client_id,
            "request_id": row.request_id,
            "received_at": row.received_at.isoformat(),
        }
    for sname, system in dm.systems.items():
        resolved = resolve(engines[sname], system, subjects)
        targets.consumers[sname] = {
            ref: sorted(str(c) for c in res.consumer_ids) for ref, res in resolved.items()
        }
        for ref, res in resolved.items():
            per_kind = targets.identities.setdefault(ref, {})
            for kind, values in res.identities.items():
                per_kind[kind.value] = sorted(set(per_kind.get(kind.value, [])) | values)
        active = holds.active_holds(engines[sname], system, now, {s.client_id for s in subjects})
        for s in subjects:
            found = holds.holding(active, s.client_id, targets.consumers[sname][s.ref])
            if found:
                targets.deferred[s.ref] = found[0].exception_code
    for store_name, store in dm.stores.items():
        if isinstance(store, RecordingStore):
            system = dm.systems[store.system]
            per_ref = {}
            for ref in targets.active_refs():
                ids = targets.consumers[store.system].get(ref, [])
                keys = recordings.recording_keys(engines[store.system], system, store, ids)
                per_ref[ref] = sorted(k for ks in keys.values() for k in ks)
            targets.recordings[store_name] = per_ref
    plan_rows = []
    for sname, system in dm.systems.items():
        consumer_refs: dict[str, list[str]] = defaultdict(list)
        for ref in targets.active_refs():
            for cid in targets.consumers[sname].get(ref, []):
                consumer_refs[cid].append(ref)
        for tplan in erase_sql.plan_erasure(engines[sname], system, consumer_refs):
            per_ref: dict[str, int] = defaultdict(int)
            for cid, n in tplan.per_consumer.items():
                for ref in consumer_refs[cid]:
                    per_ref[ref] += n
            plan_rows += [
                state.PlanRow(int(ref), sname, tplan.table, n) for ref, n in per_ref.items()
            ]
    for store_name, per_ref in targets.recordings.items():
        plan_rows += [
            state.PlanRow(int(ref), store_name, "objects", len(keys))
            for ref, keys in per_ref.items()
            if keys
        ]
    put_json(s3, bucket, targets_key(batch_id), targets.__dict__)
    faults.checkpoint("plan.targets_written")
    state.plan_batch(state_engine, batch_id, "delete", plan_rows, created_at=now)
    faults.checkpoint("plan.batch_stored")
    active = [int(r) for r in targets.active_refs()]
    deferred_by_code: dict[str, list[int]] = defaultdict(list)
    for ref, code in targets.deferred.items():
        deferred_by_code[code].append(int(ref))
    state.set_status(state_engine, active, "open", batch_id=batch_id)
    for code, pks in deferred_by_code.items():
        state.set_status(state_engine, pks, "deferred", reason_code=code, batch_id=batch_id)
    return batch_id, targets


def _fanout(s3: Any, dm: DataMap, targets: Targets) -> dict[str, Any]:
    if not targets.batch_id or not targets.active_refs():
        return {
            "batch_id": targets.batch_id,
            "requests": 0,
            "deferred": len(targets.deferred),
            "systems": [],
            "shards": [],
            "recordings": [],
            "backups": [],
        }
    shards = [
        f"{name}|{prefix}"
        for name, store in sorted(dm.stores.items())
        if isinstance(store, LogStore)
        for prefix in logs.day_prefixes(s3, store)
    ]
    return {
        "batch_id": targets.batch_id,
        "requests": len(targets.active_refs()),
        "deferred": len(targets.deferred),
        "systems": sorted(dm.systems),
        "shards": shards,
        "recordings": sorted(n for n, s in dm.stores.items() if isinstance(s, RecordingStore)),
        "backups": sorted(n for n, s in dm.stores.items() if isinstance(s, BackupStore)),
    }


# -- fan-out steps (each idempotent) -------------------------------------------------------------


def erase_system(
    s3, bucket, dm: DataMap, engine: Engine, batch_id: str, system: str, hash_key: bytes
) -> dict[str, Any]:
    targets = load_targets(s3, bucket, batch_id)
    done = erase_sql.execute_erasure(
        engine, dm.systems[system], targets.consumer_ids(system), hash_key
    )
    return {"system": system, "rows": done}


def erase_recordings(
    s3, bucket, dm: DataMap, store_s3, batch_id: str, store: str
) -> dict[str, Any]:
    targets = load_targets(s3, bucket, batch_id)
    spec = dm.stores[store]
    keys = [
        k for ref in targets.active_refs() for k in targets.recordings.get(store, {}).get(ref, [])
    ]
    return {"store": store, "objects": recordings.delete_all_versions(store_s3, spec.bucket, keys)}


def scrub_log_shard(s3, bucket, dm: DataMap, store_s3, batch_id: str, shard: str) -> dict[str, Any]:
    store_name, prefix = shard.split("|", 1)
    targets = load_targets(s3, bucket, batch_id)
    result = logs.scrub_shard(
        store_s3, dm.stores[store_name], prefix, targets.log_targets(), batch_id=batch_id
    )
    return {"store": store_name, "shard": prefix, **result.to_dict()}


def tombstone(
    s3, bucket, dm: DataMap, state_engine: Engine, batch_id: str, store: str, hash_key: bytes
) -> dict[str, Any]:
    """Record keyed hashes so a restore of an old snapshot re-applies the deletions (R18, R20)."""
    targets = load_targets(s3, bucket, batch_id)
    spec = dm.stores[store]
    added = 0
    for ref in targets.active_refs():
        client_id = int(targets.requests[ref]["client_id"])
        stones = [
            (client_id, kind, tombstone_hash(hash_key, kind, value))
            for kind, values in targets.identities.get(ref, {}).items()
            for value in values
        ]
        added += state.add_tombstones(state_engine, spec.system, stones, request_pk=int(ref))
    return {"store": store, "tombstones": added}


def tombstone_hash(hash_key: bytes, kind: str, value: str) -> str:
    return keyed_hash(hash_key, f"tombstone:{kind}", value)


# -- verification and receipts --------------------------------------------------------------------


def finalize(
    s3: Any,
    bucket: str,
    dm: DataMap,
    engines: dict[str, Engine],
    store_clients: dict[str, Any],
    state_engine: Engine,
    hash_key: bytes,
    batch_id: str,
    shard_results: list[dict[str, Any]],
    now: datetime,
) -> dict[str, Any]:
    """Re-check every system for every target, then receipt, ledger and close (R16, R20)."""
    if not batch_id:
        return {"batch_id": "", "completed": 0, "deferred": 0, "residue": 0}
    targets = load_targets(s3, bucket, batch_id)
    residue: dict[str, int] = {}
    for sname, system in dm.systems.items():
        left = erase_sql.residue(engines[sname], system, targets.consumer_ids(sname))
        # Re-resolve by what the request gave (not the expanded set, which may include an
        # identity shared with someone else in the tenant, e.g. a household phone).
        subjects = [
            Subject(
                ref,
                int(targets.requests[ref]["client_id"]),
                tuple(
                    (IdentityType(k), v) for k, vs in targets.given.get(ref, {}).items() for v in vs
                ),
            )
            for ref in targets.active_refs()
        ]
        found = sum(len(r.consumer_ids) for r in resolve(engines[sname], system, subjects).values())
        residue[sname] = sum(left.values()) + found
    for name, per_ref in targets.recordings.items():
        keys = [k for ref in targets.active_refs() for k in per_ref.get(ref, [])]
        residue[name] = recordings.remaining(store_clients[name], dm.stores[name].bucket, keys)
    for res in shard_results:
        residue[res["store"]] = residue.get(res["store"], 0) + int(res.get("residue", 0))
    for name, store in dm.stores.items():
        if isinstance(store, BackupStore):
            stones = state.tombstone_hashes(state_engine, store.system)
            missing = sum(
                1
                for ref in targets.active_refs()
                for kind, values in targets.identities.get(ref, {}).items()
                for v in values
                if (
                    int(targets.requests[ref]["client_id"]),
                    kind,
                    tombstone_hash(hash_key, kind, v),
                )
                not in stones
            )
            residue[name] = missing
    if any(residue.values()):
        bad = sorted(k for k, v in residue.items() if v)
        raise ErasureIncomplete(
            f"batch {batch_id}: residue in {', '.join(bad)}; requests stay open"
        )
    receipts = _receipts(dm, state_engine, targets, shard_results, now)
    entries = []
    for ref, receipt in receipts.items():
        req = targets.requests[ref]
        key = f"{RECEIPTS}{req['client_id']}/{req['request_id']}.delete.json"
        put_json(s3, bucket, key, receipt)
        entries.append(
            ledger.Entry(
                "erasure_completed",
                keyed_hash(
                    hash_key, "request", f"{req['client_id']}\x1f{req['request_id']}\x1fdelete"
                ),
                {
                    "batch": batch_id,
                    "receipt": key,
                    "counts": receipt["counts"],
                    "rules": ["R16", "R18", "R20"],
                },
                f"erasure:{batch_id}:{ref}",
            )
        )
        faults.checkpoint("finalize.after_receipt", n=len(entries))
    faults.checkpoint("finalize.receipts_written")
    ledger.append(state_engine, hash_key, entries)
    faults.checkpoint("finalize.ledger_appended")
    state.set_status(
        state_engine, [int(r) for r in targets.active_refs()], "completed", completed_at=now
    )
    faults.checkpoint("finalize.requests_completed")
    state.finish_batch(state_engine, batch_id, finished_at=now)
    faults.checkpoint("finalize.batch_finished")
    for ref in targets.active_refs():  # R20: from now on only keyed hashes remain
        row = state.get_requests(state_engine, [int(ref)])[int(ref)]
        s3.delete_object(Bucket=bucket, Key=row.source)
    s3.delete_object(Bucket=bucket, Key=targets_key(batch_id))  # deferred ones re-plan next run
    summary = {
        "batch_id": batch_id,
        "completed": len(receipts),
        "deferred": len(targets.deferred),
        "residue": 0,
        "receipts": f"s3://{bucket}/{RECEIPTS}",
    }
    put_summary(s3, bucket, "deletion_requests", summary)
    return summary


def _receipts(dm, state_engine, targets: Targets, shard_results, now) -> dict[str, dict[str, Any]]:
    plan = state.batch_plan(state_engine, targets.batch_id)
    counts: dict[str, dict[str, dict[str, int]]] = defaultdict(lambda: defaultdict(dict))
    for row in plan:
        counts[str(row.request_pk)][row.system][row.target] = row.planned
    for res in shard_results:
        for ref, n in res.get("per_ref", {}).items():
            store = counts[ref][res["store"]]
            store["lines"] = store.get("lines", 0) + int(n)
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
    for ref in targets.active_refs():
        req = targets.requests[ref]
        touched = {(s, t) for s, tables in counts[ref].items() for t, n in tables.items() if n}
        held_back = [e for e in exceptions if (e["system"], e["table"]) in touched]
        row = state.get_requests(state_engine, [int(ref)])[int(ref)]
        out[ref] = {
            "request_id": req["request_id"],
            "client_id": req["client_id"],
            "type": "delete",
            "received_at": req["received_at"],
            "completed_at": now.isoformat(),
            "response_due": row.due.isoformat() if row.due else None,
            "batch_id": targets.batch_id,
            "counts": {s: dict(t) for s, t in sorted(counts[ref].items())},
            "verification": "every system re-checked: zero residue",
            "exceptions": held_back,
            "subprocessors": {
                name: n.status for name, n in sorted(state.notices(state_engine, int(ref)).items())
            },
            "backups": backups,
            "rules": ["R16", "R18", "R19", "R20"],
        }
    return out
