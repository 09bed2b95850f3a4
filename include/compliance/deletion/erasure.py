"""Deletion requests as one batch: plan, fan out per system and shard, verify, receipt (R16-R21).

The DAG `deletion_requests` calls these in order. Every open request of type `delete` joins one
batch per run, so 1,000 requests cost one pass over each store. The batch's *targets* (consumer
ids, identities, recording keys) are written once, encrypted, to `batches/<id>/targets.json` in
the workspace bucket, never to XCom; tasks receive only the batch id and a system or shard name.

Convergence: a batch and the requests pointing at it are stored in one transaction, and stay
`planned`/`open` until `finalize` commits the ledger entries, the completed requests and the
finished batch in another. A rerun after a crash finds the planned batch, reuses its stored
targets and plan, and re-executes the idempotent steps. Receipts are built from state that
outlives crashes: the plan stored before anything changed, and the log lines counted per object
just before each object is replaced (`state.record_lines`). Whatever a crash leaves in `batches/`
(targets of a batch that never got stored, or of one finished but not cleaned up) is removed
by the next `plan` (`sweep`), so identities do not outlive their requests (R20).
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Engine

from compliance.core import checkpoints, ledger
from compliance.core.datamap.model import (
    BackupStore,
    DataMap,
    IdentityType,
    LogStore,
    RecordingStore,
)
from compliance.core.hashing import keyed_hash
from compliance.core.outputs import THREADS, delete_many, put_json, put_json_many, put_summary
from compliance.deletion import erase_sql, logs, outbox, recordings, residue_oracle
from compliance.requests import holds, state
from compliance.requests.inbox import ACCEPTED
from compliance.requests.intake import identity_lists, identity_pairs
from compliance.requests.request_records import receipt_fields as request_record_fields
from compliance.requests.resolve import Subject, resolve

BATCHES = "batches/"
HELD = "held/"
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
    # Scoped legal holds (R16.2, R19, R21; `compliance.requests.holds`): what they keep is left
    # alone,
    # the rest is erased and the request stays `partial` until they end.
    held: dict[str, dict[str, list[str]]] = field(default_factory=dict)  # system->consumer->tables
    held_stores: dict[str, list[str]] = field(default_factory=dict)  # ref -> log stores kept
    kept: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # ref -> receipt entries
    partial: dict[str, str] = field(default_factory=dict)  # ref -> exception code (kept part)
    waiting: dict[str, str] = field(default_factory=dict)  # partial, holds unchanged: not planned
    signatures: dict[str, list[str]] = field(default_factory=dict)  # ref -> holds that apply

    def active_refs(self) -> list[str]:
        return [r for r in self.requests if r not in self.deferred and r not in self.waiting]

    def consumer_ids(self, system: str) -> list[str]:
        per_ref = self.consumers.get(system, {})
        return sorted({c for r in self.active_refs() for c in per_ref.get(r, [])})

    def log_targets(self, store: str | None = None) -> logs.Targets:
        """Identities to scrub (from `store`: not those of requests a hold keeps there, R19)."""
        by_tenant: dict[str, list[tuple[IdentityType, str, str]]] = defaultdict(list)
        for ref in self.active_refs():
            if store is not None and store in self.held_stores.get(ref, []):
                continue
            tenant = str(self.requests[ref]["client_id"])
            for kind, values in self.identities.get(ref, {}).items():
                by_tenant[tenant].extend((IdentityType(kind), v, ref) for v in values)
        return logs.Targets(by_tenant)


def targets_key(batch_id: str) -> str:
    return f"{BATCHES}{batch_id}/targets.json"


def held_key(client_id: str, request_id: str) -> str:
    """Where a `partial` request's consumers and identities wait for its hold to end (R19)."""
    return f"{HELD}{client_id}/{request_id}.json"


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
    sweep(s3, bucket, state_engine)
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
    return fanout(s3, dm, targets)


def _is_planned(state_engine: Engine, batch_id: str) -> bool:
    batch = state.get_batch(state_engine, batch_id)
    return batch is not None and batch.status == "planned"


@dataclass(frozen=True)
class Pending:
    """A request to plan: from the state DB, or (dry run) straight from intake's examination."""

    ref: str
    client_id: str  # the tenant id as text (any-CRM)
    request_id: str
    received_at: str
    identities: dict[str, str | list[str]]  # intake.Identities.as_doc()
    # A `partial` request (R19): what its earlier batch erased around a hold, kept encrypted in
    # the workspace (`held_key`) until it completes: the consumers and identities found then
    # (their rows are gone now, so resolution alone would no longer find the held rows).
    remembered: dict[str, Any] | None = None

    @classmethod
    def stored(cls, s3: Any, bucket: str, row: state.RequestRow) -> Pending:
        doc = json.loads(s3.get_object(Bucket=bucket, Key=row.source)["Body"].read())
        remembered = None
        if row.status in ("partial", "deferred"):  # deferred: a partial one a new hold froze
            key = held_key(row.client_id, row.request_id)
            try:
                remembered = json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
                remembered["was_partial"] = row.status == "partial"
            except s3.exceptions.NoSuchKey:  # lost: plan it again from what resolution finds
                if row.status == "partial":
                    remembered = {"signature": None, "consumers": {}, "identities": {}}
        return cls(
            str(row.id), row.client_id, row.request_id, row.received_at.isoformat(),
            dict(doc["identities"]), remembered,
        )  # fmt: skip


def _new_batch(
    s3, bucket, dm, engines, state_engine, hash_key, now, pending
) -> tuple[str, Targets]:
    if not pending:
        return "", Targets("")
    digest = hashlib.sha256(",".join(str(r.id) for r in pending).encode()).hexdigest()[:8]
    batch_id = f"del-{now:%Y%m%dT%H%M%S}-{digest}"
    with ThreadPoolExecutor(max_workers=THREADS) as pool:
        requests = list(pool.map(lambda row: Pending.stored(s3, bucket, row), pending))
    targets, counts = assemble(dm, engines, batch_id, requests, now)
    plan_rows = [
        state.PlanRow(int(ref), system, target, n)
        for ref, per_system in counts.items()
        for system, per_target in per_system.items()
        for target, n in per_target.items()
    ]
    put_json(s3, bucket, targets_key(batch_id), targets.__dict__)
    checkpoints.reached("plan.targets_written")
    deferred_by_code: dict[str, list[int]] = defaultdict(list)
    for ref, code in targets.deferred.items():
        deferred_by_code[code].append(int(ref))
    with state_engine.begin() as conn:  # the batch exists only with its requests pointing at it
        state.plan_batch(conn, batch_id, "delete", plan_rows, created_at=now)
        checkpoints.reached("plan.batch_stored")
        active = [int(r) for r in targets.active_refs()]
        state.set_status(conn, active, "open", batch_id=batch_id)
        for code, pks in deferred_by_code.items():
            state.set_status(conn, pks, "deferred", reason_code=code, batch_id=batch_id)
    return batch_id, targets


Counts = dict[str, dict[str, dict[str, int]]]  # ref -> system or store -> table or "objects" -> n


def assemble(
    dm: DataMap, engines: dict[str, Engine], batch_id: str, pending: list[Pending], now: datetime
) -> tuple[Targets, Counts]:
    """What a batch erases and how much, read only: the same for a real run and a dry run.

    One resolution per system for all requests, holds checked per consumer (R19), recordings
    listed and CRM rows counted per table with one set-based query each.
    """
    targets = Targets(batch_id)
    subjects: list[Subject] = []
    for p in pending:
        idents = identity_pairs(p.identities)  # a phone may have several spellings
        subjects.append(Subject(p.ref, p.client_id, idents))
        targets.given[p.ref] = identity_lists(p.identities)
        targets.requests[p.ref] = {
            "pk": int(p.ref) if p.ref.isdigit() else None,
            "client_id": p.client_id,
            "request_id": p.request_id,
            "received_at": p.received_at,
        }
    remembered = {p.ref: p.remembered for p in pending if p.remembered}
    applying: dict[str, list[tuple[str, holds.Hold, list[str]]]] = defaultdict(list)
    for sname, system in dm.systems.items():
        resolved = resolve(engines[sname], system, subjects)
        targets.consumers[sname] = {
            ref: sorted(str(c) for c in res.consumer_ids) for ref, res in resolved.items()
        }
        for ref, res in resolved.items():
            per_kind = targets.identities.setdefault(ref, {})
            for kind, values in res.identities.items():
                per_kind[kind.value] = sorted(set(per_kind.get(kind.value, [])) | values)
        for ref, memo in remembered.items():  # a partial request: what its first batch found
            mine = set(targets.consumers[sname].get(ref, []))
            targets.consumers[sname][ref] = sorted(mine | set(memo["consumers"].get(sname, [])))
        active = holds.active_holds(engines[sname], system, now, {s.client_id for s in subjects})
        for s in subjects:
            consumers = targets.consumers[sname][s.ref]
            for h in holds.holding(active, s.client_id, consumers):
                if h.scope == holds.ALL or not holds.known_scope(dm, sname, h.scope):
                    # the whole request waits (an unknown scope too: never guess what it meant)
                    code = h.code if h.scope == holds.ALL else holds.INVALID_SCOPE
                    targets.deferred.setdefault(s.ref, code)
                    continue
                held = consumers if h.client_wide else [c for c in consumers if c == h.consumer_id]
                applying[s.ref].append((sname, h, held))
    for ref, memo in remembered.items():
        targets.requests[ref]["earlier"] = {
            "batch_id": memo.get("batch_id"),
            "kept": memo.get("kept", []),
            "released": "re-examined after its holds changed: what they no longer keep is "
            "erased now",
        }
        per_kind = targets.identities.setdefault(ref, {})
        for kind, values in memo.get("identities", {}).items():
            per_kind[kind] = sorted(set(per_kind.get(kind, [])) | set(values))
    _apply_scoped_holds(dm, targets, applying, remembered)
    counts: Counts = defaultdict(lambda: defaultdict(dict))
    kept: dict[str, dict[tuple[str, ...], int]] = defaultdict(lambda: defaultdict(int))
    for store_name, store in dm.stores.items():
        if isinstance(store, RecordingStore):
            per_consumer = targets.consumers[store.system]
            owners = {c for ref in targets.active_refs() for c in per_consumer.get(ref, [])}
            keys = recordings.recording_keys(
                engines[store.system], dm.systems[store.system], store, owners
            )
            held = targets.held.get(store.system, {})
            per_ref = {}
            for ref in targets.active_refs():
                mine = per_consumer.get(ref, [])
                free = [c for c in mine if store.table not in held.get(c, [])]
                per_ref[ref] = sorted(k for c in free for k in keys.get(c, []))
                n_kept = sum(len(keys.get(c, [])) for c in mine if c not in free)
                if n_kept:
                    kept[ref][("store", store_name, "objects")] += n_kept
            targets.recordings[store_name] = per_ref
            for ref, ks in per_ref.items():
                if ks:
                    counts[ref][store_name]["objects"] = len(ks)
    for sname, system in dm.systems.items():
        consumer_refs: dict[str, list[str]] = defaultdict(list)
        for ref in targets.active_refs():
            for cid in targets.consumers[sname].get(ref, []):
                consumer_refs[cid].append(ref)
        held = targets.held.get(sname) or None
        for tplan in erase_sql.plan_erasure(engines[sname], system, consumer_refs, held):
            per_ref: dict[str, int] = defaultdict(int)
            for cid, n in tplan.per_consumer.items():
                for ref in consumer_refs[cid]:
                    per_ref[ref] += n
            for ref, n in per_ref.items():
                counts[ref][sname][tplan.table] = n
            for what, per_consumer in (("rows", tplan.kept), ("parent_rows", tplan.parents)):
                for cid, n in per_consumer.items():
                    for ref in consumer_refs[cid]:
                        kept[ref][("system", sname, tplan.table, what)] += n
    _kept_entries(dm, engines, targets, applying, kept)
    return targets, {r: dict(c) for r, c in counts.items()}


def _apply_scoped_holds(
    dm: DataMap,
    targets: Targets,
    applying: dict[str, list[tuple[str, holds.Hold, list[str]]]],
    remembered: dict[str, dict[str, Any]],
) -> None:
    """Scoped holds of requests not deferred whole: the tables and stores they keep (R19).

    A partial request whose applying holds are those of its earlier batch waits (nothing new to
    erase: re-examined on every run, planned again when a hold ends, lapses or changes)."""
    for ref, found in applying.items():
        if ref in targets.deferred:
            continue
        for sname, h, consumers in found:
            tables = holds.kept_tables(dm, sname, h.scope)
            per_consumer = targets.held.setdefault(sname, {})
            for cid in consumers:
                per_consumer[cid] = sorted(set(per_consumer.get(cid, [])) | tables)
            logs_kept = {
                n
                for n in holds.kept_stores(dm, sname, h.scope)
                if isinstance(dm.stores[n], LogStore)
            }
            if logs_kept and consumers:
                targets.held_stores[ref] = sorted(set(targets.held_stores.get(ref, [])) | logs_kept)
        targets.signatures[ref] = sorted(
            {
                f"{sname}|{h.scope}|{h.code}|{'client' if h.client_wide else 'consumer'}"
                for sname, h, consumers in found
                if consumers or h.client_wide
            }
        )
    for ref, memo in remembered.items():
        if ref in targets.deferred:
            continue
        unchanged = memo.get("signature") and memo["signature"] == targets.signatures.get(ref)
        if unchanged and memo.get("was_partial", True):
            targets.waiting[ref] = memo.get("code") or holds.INVALID_CODE


def _kept_entries(
    dm: DataMap,
    engines: dict[str, Engine],
    targets: Targets,
    applying: dict[str, list[tuple[str, holds.Hold, list[str]]]],
    kept: dict[str, dict[tuple[str, ...], int]],
) -> None:
    """The receipt's account of what holds keep, per request: tables, stores and row counts,
    the exception code and the hold's scope; never an identity value (R16.2, R19, R21).

    A request is `partial` when a hold keeps something of it (rows, parent rows, recordings, or
    a log store's lines); a hold that keeps nothing (no rows in its scope) changes nothing."""
    for ref in targets.active_refs():
        found = [(s, h, c) for s, h, c in applying.get(ref, []) if c or h.client_wide]
        if not found:
            continue
        entries = []
        counts = kept.get(ref, {})
        for sname, h, _consumers in sorted(found, key=lambda f: (f[0], f[1].scope, f[1].code)):
            tables = holds.kept_tables(dm, sname, h.scope)
            stores = holds.kept_stores(dm, sname, h.scope)
            what: list[dict[str, Any]] = []
            for t in sorted(tables):
                n = counts.get(("system", sname, t, "rows"), 0)
                if n:
                    what.append({"system": sname, "table": t, "rows": n})
            for st in sorted(stores):
                if isinstance(dm.stores[st], LogStore):
                    if st in targets.held_stores.get(ref, []):
                        what.append({"store": st, "lines": "kept, not scrubbed (not counted)"})
                elif counts.get(("store", st, "objects")):
                    what.append({"store": st, "objects": counts[("store", st, "objects")]})
            if not what:
                continue
            parents = []
            for t in sorted(holds.parent_tables(dm.systems[sname], tables)):
                n = counts.get(("system", sname, t, "parent_rows"), 0)
                if n:
                    keep_cols, lost = erase_sql.parent_columns(engines[sname], dm.systems[sname], t)
                    parents.append(
                        {
                            "system": sname,
                            "table": t,
                            "rows": n,
                            "kept_columns": keep_cols,
                            "erased_columns": lost,
                            "why": "referenced by held rows (foreign keys): its mapped "
                            "personal columns are erased; the key, tenant and relation columns "
                            "stay, with unmapped columns and NOT NULL flags the row needs",
                        }
                    )
            entries.append(
                {
                    "scope": h.scope,
                    "hold": "client-wide" if h.client_wide else "consumer",
                    "exception": h.code,
                    "valid_code": h.valid,
                    "until": h.expires_at.isoformat() if h.expires_at else None,
                    "lapses_after_90_days": h.lapses,
                    "kept": what,
                    "parents": parents,
                    "use": "kept only for this exception, then erased when the hold ends",
                    "rule": "R19",
                }
            )
        if entries:
            targets.kept[ref] = entries
            targets.partial[ref] = sorted(e["exception"] for e in entries)[0]


def sweep(s3: Any, bucket: str, state_engine: Engine) -> int:
    """Remove what a crash left in `batches/`; return how many batches it cleaned up.

    A targets file whose batch was never stored (a crash inside `plan`, or a dry run's that
    crashed before its report) is deleted; a finished batch whose clean-up did not complete (a
    crash at the end of `finalize`) is cleaned up now. Planned batches are left alone: the run
    resumes them. Access batches (`acc-`) are the access DAG's.
    """
    found = 0
    pages = s3.get_paginator("list_objects_v2").paginate(
        Bucket=bucket, Prefix=BATCHES, Delimiter="/"
    )
    for page in pages:
        for prefix in page.get("CommonPrefixes", []):
            batch_id = prefix["Prefix"][len(BATCHES) :].rstrip("/")
            if not batch_id.startswith(("del-", "dry-")):
                continue
            batch = state.get_batch(state_engine, batch_id)
            if batch is not None and batch.status == "planned":
                continue
            if batch is not None:
                _clean_up(s3, bucket, state_engine, load_targets(s3, bucket, batch_id))
            else:
                s3.delete_object(Bucket=bucket, Key=targets_key(batch_id))
            found += 1
    return found


def _clean_up(s3: Any, bucket: str, state_engine: Engine, targets: Targets) -> None:
    """R20: once a batch is finished only keyed hashes remain. Deferred requests keep their
    documents: they are planned again when their hold lifts."""
    rows = state.get_requests(state_engine, [int(r) for r in targets.active_refs()])
    done = [r.source for r in rows.values() if r.status == "completed"]
    delete_many(s3, bucket, [key for key in done if key.startswith(ACCEPTED)])
    delete_many(  # a partial request's memory, once the rest is erased (R19, R20)
        s3,
        bucket,
        [held_key(r.client_id, r.request_id) for r in rows.values() if r.status == "completed"],
    )
    prefix = f"{BATCHES}{targets.batch_id}/"
    delete_many(s3, bucket, residue_oracle.verdict_keys(s3, bucket, prefix))  # counts only
    s3.delete_object(Bucket=bucket, Key=targets_key(targets.batch_id))


def fanout(s3: Any, dm: DataMap, targets: Targets) -> dict[str, Any]:
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
        engine,
        dm.systems[system],
        targets.consumer_ids(system),
        hash_key,
        held=targets.held.get(system) or None,  # kept under a legal hold (R19)
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


def scrub_log_shard(
    s3, bucket, dm: DataMap, store_s3, state_engine: Engine, batch_id: str, shard: str
) -> dict[str, Any]:
    store_name, prefix = shard.split("|", 1)
    targets = load_targets(s3, bucket, batch_id)

    def count(key: str, per_ref: dict[str, int]) -> None:
        state.record_lines(state_engine, batch_id, store_name, key, per_ref)

    result = logs.scrub_shard(
        store_s3,
        dm.stores[store_name],
        prefix,
        targets.log_targets(store_name),
        batch_id=batch_id,
        before_replace=count,
    )
    return {"store": store_name, "shard": prefix, **result.to_dict()}


def verify_log_shard(
    s3, bucket, dm: DataMap, store_s3, batch_id: str, shard: str
) -> dict[str, Any]:
    """The independent oracle on one day folder, after its scrub (R16.1): its counts-only
    verdict goes beside the targets, where `finalize` reads it (`residue_oracle`)."""
    store_name, prefix = shard.split("|", 1)
    values = residue_oracle.wanted_values(load_targets(s3, bucket, batch_id), store=store_name)
    verdict = residue_oracle.verify_log_prefix(
        store_s3, store_name, dm.stores[store_name], prefix, values
    )
    put_json(s3, bucket, residue_oracle.verdict_key(f"{BATCHES}{batch_id}/", shard), verdict)
    return {k: verdict[k] for k in ("store", "prefix", "objects", "versions")} | {
        "residue": sum(verdict["hits"].values()),
        "unreadable": len(verdict["unreadable"]),
    }


def tombstone(
    s3, bucket, dm: DataMap, state_engine: Engine, batch_id: str, store: str, hash_key: bytes
) -> dict[str, Any]:
    """Record keyed hashes so a restore of an old snapshot re-applies the deletions (R18, R20)."""
    targets = load_targets(s3, bucket, batch_id)
    spec = dm.stores[store]
    stones = {
        int(ref): [
            (str(targets.requests[ref]["client_id"]), kind, tombstone_hash(hash_key, kind, value))
            for kind, values in targets.identities.get(ref, {}).items()
            for value in values
        ]
        for ref in targets.active_refs()
    }
    added = state.add_tombstones(state_engine, spec.system, stones)  # all or none
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
    batch = state.get_batch(state_engine, batch_id)
    if batch is not None and batch.status == "done":  # a retry after success: clean up only
        sweep(s3, bucket, state_engine)
        return _summary(s3, bucket, state_engine, batch_id)
    targets = load_targets(s3, bucket, batch_id)
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
            f"batch {batch_id}: residue in {', '.join(bad)}; requests stay open"
        )
    verdict = residue_oracle.verify(
        dm,
        engines,
        store_clients,
        targets,
        residue_oracle.load_verdicts(s3, bucket, f"{BATCHES}{batch_id}/"),
    )
    if not verdict.clean:  # where and how many, never the value (no PII in exceptions)
        raise ErasureIncomplete(
            f"batch {batch_id}: the independent check found residue in {verdict.describe()}; "
            "requests stay open"
        )
    receipts = _receipts(dm, state_engine, targets, now, verdict)
    entries = []
    documents = {}
    for ref, receipt in receipts.items():
        req = targets.requests[ref]
        key = f"{RECEIPTS}{req['client_id']}/{req['request_id']}.delete.json"
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
                    **({"kept": _kept_summary(targets.kept[ref])} if partial else {}),
                    "rules": ["R16", "R18", "R19", "R20"] if partial else ["R16", "R18", "R20"],
                },
                f"erasure:{batch_id}:{ref}",
            )
        )
        if partial:  # what the next batch needs once the hold ends (encrypted, like targets)
            documents[held_key(req["client_id"], req["request_id"])] = _held_doc(targets, ref)
    put_json_many(s3, bucket, documents)
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
    _clean_up(s3, bucket, state_engine, targets)
    return _summary(s3, bucket, state_engine, batch_id)


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


def _summary(s3: Any, bucket: str, state_engine: Engine, batch_id: str) -> dict[str, Any]:
    statuses = [r.status for r in state.batch_requests(state_engine, batch_id)]
    summary = {
        "batch_id": batch_id,
        "completed": statuses.count("completed"),
        "partial": statuses.count("partial"),
        "deferred": statuses.count("deferred"),
        "residue": 0,
        "receipts": f"s3://{bucket}/{RECEIPTS}",
    }
    put_summary(s3, bucket, "deletion_requests", summary)
    return summary


def _receipts(
    dm, state_engine, targets: Targets, now, verdict: residue_oracle.Verdict
) -> dict[str, dict[str, Any]]:
    plan = state.batch_plan(state_engine, targets.batch_id)
    counts: dict[str, dict[str, dict[str, int]]] = defaultdict(lambda: defaultdict(dict))
    for row in plan:
        counts[str(row.request_pk)][row.system][row.target] = row.planned
    for pk, per_store in state.batch_lines(state_engine, targets.batch_id).items():
        for store, n in per_store.items():
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
            **_hold_sections(targets, ref),  # R16.2, R19, R21: what holds keep, and why
            # R16.3/R16.4: status and attempts per sub-processor and recipient; the outbox
            # re-issues this receipt when one changes (compliance.deletion.outbox.reissue).
            **outbox.receipt_sections(dm, notices.get(int(ref), {})),
            "backups": backups,
            **request_record_fields(row),  # R1, R5, R24; earlier requests (R20)
            "rules": ["R16", "R18", "R19", "R20"],
        }
    return out
