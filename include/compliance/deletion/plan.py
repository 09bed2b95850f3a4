"""Planning a deletion batch: who is in it, what each system and store erases, what waits
(R16, R19). Read only until the batch is stored.

Every open request of type `delete` joins one batch per run, so 1,000 requests cost one pass
over each store. `assemble` resolves identities to consumers within each client's tenant, applies
legal holds (whole or scoped), lists recordings and counts CRM rows per table: the same code for
a real run and a dry run (`erasure_preview`). `plan` then stores the targets (stamped with the
data map's digest, `compliance.requests.batches`) and, in one transaction, the batch, its plan
and the requests pointing at it.

Convergence: a rerun after a crash finds the planned batch and resumes it from its stored
targets, unless the data map changed since (`MapChanged`: the operator restores the map or
re-plans explicitly with the form's `replan`, which abandons the old batch first).
"""

from __future__ import annotations

import json
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Engine

from compliance.core import checkpoints, logfiles
from compliance.core.context import JobContext
from compliance.core.datamap.model import (
    BackupStore,
    DataMap,
    IdentityType,
    LogStore,
    RecordingStore,
)
from compliance.core.outputs import THREADS
from compliance.core.shards import LogShard
from compliance.core.sqlmap import key_text
from compliance.core.stores import recordings
from compliance.deletion import erase_sql
from compliance.deletion.targets import Targets, held_key, load_targets, store_targets, sweep
from compliance.requests import batches, holds, state
from compliance.requests.intake import identity_lists, identity_pairs
from compliance.requests.resolve import Resolution, Subject, holders, normal_identity, resolve


def plan(ctx: JobContext, *, replan: bool = False) -> dict[str, Any]:
    """Form (or resume) the batch; return small JSON naming what to fan out over.

    `replan`: the operator's explicit choice after the data map changed under a planned batch:
    it is abandoned (finished without receipts) and its requests planned afresh."""
    ws = ctx.workspace
    sweep(ws, ctx.state)
    resume, pending = batches.to_plan(ctx.state, "delete", replan=replan)
    if replan:
        sweep(ws, ctx.state)  # an abandoned batch's targets go now: a new batch replaces them
    if resume:  # a crash left it planned: the same targets, unless the map changed (MapChanged)
        return fanout(ctx, load_targets(ws, resume, ctx.datamap_hash))
    return fanout(ctx, _new_batch(ctx, pending))


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
        """The request's accepted document and, if partial, its memory (`held_key`)."""
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


def _new_batch(ctx: JobContext, pending: list[state.RequestRow]) -> Targets:
    if not pending:
        return Targets("")
    ws, now = ctx.workspace, ctx.now()
    batch_id = batches.new_batch_id("del", pending, now)
    with ThreadPoolExecutor(max_workers=THREADS) as pool:
        requests = list(pool.map(lambda row: Pending.stored(ws.s3, ws.bucket, row), pending))
    targets, counts = assemble(ctx.datamap, ctx.engines, batch_id, requests, now)
    plan_rows = [
        state.PlanRow(int(ref), system, target, n)
        for ref, per_system in counts.items()
        for system, per_target in per_system.items()
        for target, n in per_target.items()
    ]
    store_targets(ws, targets, ctx.datamap_hash)
    checkpoints.reached("plan.targets_written")
    deferred_by_code: dict[str, list[int]] = defaultdict(list)
    for ref, code in targets.deferred.items():
        deferred_by_code[code].append(int(ref))
    with ctx.state.begin() as conn:  # the batch exists only with its requests pointing at it
        state.plan_batch(conn, batch_id, "delete", plan_rows, created_at=now)
        checkpoints.reached("plan.batch_stored")
        active = [int(r) for r in targets.active_refs()]
        state.set_status(conn, active, "open", batch_id=batch_id)
        for code, pks in deferred_by_code.items():
            state.set_status(conn, pks, "deferred", reason_code=code, batch_id=batch_id)
    return targets


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
    resolutions = {}
    for sname, system in dm.systems.items():
        resolved = resolutions[sname] = resolve(engines[sname], system, subjects)
        targets.consumers[sname] = {
            ref: sorted(str(c) for c in res.consumer_ids) for ref, res in resolved.items()
        }
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
    _apply_scoped_holds(dm, targets, applying, remembered)
    _settle_identities(dm, engines, targets, resolutions, remembered)
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


def _settle_identities(
    dm: DataMap,
    engines: dict[str, Engine],
    targets: Targets,
    resolutions: dict[str, dict[str, Resolution]],
    remembered: dict[str, dict[str, Any]],
) -> None:
    """Each request's identities to erase by: what it gave, what was found on its consumers'
    rows, and what a partial request's earlier batch found. A found value that consumers
    outside the request hold too (`Resolution.shared`) is erased by only when, in every
    system, each holder is erased by this batch: not one whose request is deferred or
    waiting, nor one whose log lines a hold keeps (R19). Run after the holds are applied, so
    `active_refs` is final. The earlier batch's values are checked against today's holders
    too (a value remembered before this rule, or one a new consumer holds since).
    `shared_identities`: how many distinct values stayed out, a count for the receipt."""
    active = targets.active_refs()
    keeps_logs = {ref for ref in active if targets.held_stores.get(ref)}
    given = {ref: set(identity_pairs(targets.given.get(ref, {}))) for ref in targets.requests}
    found: dict[str, set[tuple[IdentityType, str]]] = defaultdict(set)
    out: dict[str, set[tuple[IdentityType, str]]] = defaultdict(set)
    for ref, memo in remembered.items():
        found[ref] |= {
            (IdentityType(k), v) for k, vs in memo.get("identities", {}).items() for v in vs
        }
    for sname, resolved in resolutions.items():
        per_ref = targets.consumers[sname]
        erased = {c for ref in active if ref not in keeps_logs for c in per_ref.get(ref, [])}
        for ref, res in resolved.items():
            res.admit(erased)
            found[ref] |= {(k, v) for k, vs in res.identities.items() for v in vs}
            out[ref] |= set(res.shared)
        recheck: dict[tuple[str, IdentityType, str], set[str]] = defaultdict(set)
        for ref, memo in remembered.items():  # each remembered value the request did not give
            for k, vs in memo.get("identities", {}).items():
                kind = IdentityType(k)
                for v in vs:
                    if (kind, v) not in given[ref] and kind is not IdentityType.record_id:
                        recheck[(key_text(targets.requests[ref]["client_id"]), kind, v)].add(ref)
        held = holders(engines[sname], dm.systems[sname], set(recheck))
        for (tenant, kind, v), refs in recheck.items():
            if held.get((tenant, kind, normal_identity(kind, v)), set()) - erased:
                for ref in refs:
                    out[ref].add((kind, v))
    for ref in targets.requests:
        values: dict[str, set[str]] = defaultdict(set)
        for kind, value in found[ref] - (out[ref] - given[ref]):
            values[kind.value].add(value)
        targets.identities[ref] = {k: sorted(vs) for k, vs in sorted(values.items())}
        if n := len(out[ref] - given[ref]):
            targets.requests[ref]["shared_identities"] = n


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


def fanout(ctx: JobContext, targets: Targets) -> dict[str, Any]:
    """What the DAG maps over: SQL systems, log shards (`LogShard.key`), recording and backup
    stores. Names only: the identities stay in the targets document."""
    dm = ctx.datamap
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
        LogShard(name, prefix).key
        for name, store in sorted(dm.stores.items())
        if isinstance(store, LogStore)
        for prefix in logfiles.day_prefixes(ctx.store(name), store)
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
