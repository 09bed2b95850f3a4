"""An access batch: every open access request, planned once, resumed until delivered (R8-R15).

The DAG `access_reports` plans one batch per run: all open requests of type `access` join it, so a
thousand requests still cost one pass over each store. Planning resolves each request's identities
to consumer rows *within its client's tenant* (`compliance.requests.resolve`, shared with
deletion), fixes
each request's look-back window (R9, G2), counts repeats (R7), and writes the batch's targets
(identities included) encrypted to `batches/<id>/targets.json` in the workspace bucket. Tasks see
only the batch id and a system or shard name.

Convergence: a batch stays `planned` until `deliver.build_bundles` has delivered every request;
a rerun finds it through its open requests and reuses the stored targets, so the windows, the
`generated_at` stamp and therefore the bundles' bytes are the same as a clean run's. The
lifecycle (plan or resume, the targets document stamped with the data map's digest, refusing to
resume under another map) is the one deletion uses: `compliance.requests.batches`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, time, timedelta
from typing import Any

from sqlalchemy import Engine

from compliance.access import snapshots
from compliance.core import logfiles as logs
from compliance.core.context import JobContext, Workspace
from compliance.core.datamap.model import DataMap, IdentityType, LogStore
from compliance.core.settings import Settings
from compliance.core.shards import LogShard
from compliance.requests import batches, intake, state
from compliance.requests.resolve import Subject, resolve

BATCHES = batches.BATCHES
KIND = "access"
# Request types an access batch answers: portability (G3) is gathered in the same passes and
# delivered by `access.portability` (restricted to what the consumer provided).
PLANNED_KINDS = (KIND, "portability")
REPEAT_THRESHOLD = 3  # R7: the business need not answer a third request within 12 months
# R5: an access request the business verified only for categories (`verification.level`).
SCOPE_CATEGORIES = "categories"
SCOPE_SPECIFIC = "specific_pieces"


@dataclass
class AccessBatch:
    """What a batch exports. Holds identities: lives only in the encrypted workspace bucket."""

    batch_id: str
    created_at: str = ""  # ISO; every bundle's `generated_at`, so reruns rebuild identical bytes
    include_audio: bool = False
    requests: dict[str, dict[str, Any]] = field(default_factory=dict)  # ref -> request facts
    given: dict[str, dict[str, list[str]]] = field(default_factory=dict)  # as the request said
    identities: dict[str, dict[str, list[str]]] = field(default_factory=dict)  # + found on rows
    # system -> ref -> consumer keys as text (sqlmap.key_text; typed again at the SQL boundary)
    consumers: dict[str, dict[str, list[str]]] = field(default_factory=dict)

    @property
    def refs(self) -> list[str]:
        return sorted(self.requests, key=int)

    def categories_only(self, ref: str) -> bool:
        """R5: the business verified this consumer only for categories: nothing is resolved,
        gathered or scanned for it, and its bundle holds the categories page only."""
        return self.requests[ref].get("scope") == SCOPE_CATEGORIES

    @property
    def gather_refs(self) -> list[str]:
        """The requests whose specific pieces are gathered (all but categories-only ones)."""
        return [r for r in self.refs if not self.categories_only(r)]

    def window(self, ref: str) -> tuple[datetime | None, datetime]:
        """(since, until) of one request, aware UTC; since None = no limit (G2)."""
        req = self.requests[ref]
        since = datetime.fromisoformat(req["since"]) if req["since"] else None
        return since, datetime.fromisoformat(req["until"])

    def union_window(self) -> tuple[datetime | None, datetime | None]:
        """The smallest window covering every request's: what one pass over a store reads."""
        if not self.gather_refs:  # categories-only requests read no store (R5)
            return None, None
        windows = [self.window(r) for r in self.gather_refs]
        since = None if any(s is None for s, _ in windows) else min(s for s, _ in windows)
        return since, max(u for _, u in windows)

    def log_targets(self) -> logs.Targets:
        """Every request's identities (given and found) by tenant, for the log scanner."""
        by_tenant: dict[str, list[tuple[IdentityType, str, str]]] = {}
        for ref in self.gather_refs:
            tenant = str(self.requests[ref]["client_id"])
            for kind, values in self.identities.get(ref, {}).items():
                by_tenant.setdefault(tenant, []).extend(
                    (IdentityType(kind), v, ref) for v in values
                )
        return logs.Targets(by_tenant)


targets_key = batches.targets_key


def load(ws: Workspace, batch_id: str, datamap_hash: str | None = None) -> AccessBatch:
    """The stored targets; `MapChanged` when planned under another map than `datamap_hash`
    (None: no check, for readers that change nothing)."""
    return AccessBatch(**batches.load_targets(ws, batch_id, datamap_hash))


def audio_setting(value: bool | None, settings: Settings) -> bool:
    """A run's choice (the trigger form) wins, else COMPLIANCE_ACCESS_INCLUDE_AUDIO (deployment).

    On by default: the audio is a specific piece of the consumer's information (R8). A run or
    deployment may opt out; the bundle then says what was left out and why (R14).
    """
    if value is not None:
        return bool(value)
    return settings.access_include_audio


def plan(ctx: JobContext, *, include_audio: bool = True, replan: bool = False) -> dict[str, Any]:
    """Form (or resume) the batch; return small JSON naming what to fan out over.

    `replan`: abandon a batch planned under another data map and plan its requests afresh."""
    resumable, pending = batches.to_plan(ctx.state, PLANNED_KINDS, replan=replan)
    if resumable:
        batch = load(ctx.workspace, resumable, ctx.datamap_hash)
    else:
        batch = _new_batch(ctx, pending, include_audio)
    return fanout(ctx.datamap, batch, ctx.stores)


def _new_batch(
    ctx: JobContext, pending: list[state.RequestRow], include_audio: bool
) -> AccessBatch:
    if not pending:
        return AccessBatch("")
    now = state.to_utc(ctx.now()).replace(microsecond=0)
    batch = AccessBatch(
        batches.new_batch_id("acc", pending, now), now.isoformat(), include_audio=include_audio
    )
    ws = ctx.workspace
    subjects: list[Subject] = []
    for row in pending:
        ref = str(row.id)
        doc = json.loads(ws.s3.get_object(Bucket=ws.bucket, Key=row.source)["Body"].read())
        # R5: verified only for categories -> no identity is resolved, searched or echoed; the
        # request's identities never enter the batch. Documents before the field: specific.
        scope = (
            SCOPE_CATEGORIES
            if doc.get("verification_level") == intake.LEVEL_CATEGORIES
            else SCOPE_SPECIFIC
        )
        if scope == SCOPE_SPECIFIC:
            idents = intake.identity_pairs(doc["identities"])  # a phone: several spellings
            subjects.append(Subject(ref, row.client_id, idents))
            batch.given[ref] = intake.identity_lists(doc["identities"])
        since, until = request_window(row, doc, now)
        batch.requests[ref] = {
            "scope": scope,
            "pk": row.id,
            "client_id": row.client_id,
            "request_id": row.request_id,
            "jurisdiction": row.jurisdiction,
            "look_back": doc.get("look_back") or row.look_back,
            "received_at": state.to_utc(row.received_at).isoformat(),
            "response_due": row.due.isoformat() if row.due else None,
            "since": since.isoformat() if since else None,
            "until": until.isoformat(),
            "repeat": repeat(ctx.state, row),
        }
    for sname, system in ctx.datamap.systems.items():
        # categories-only requests are not subjects; with none else, no store is queried (R5)
        resolved = resolve(ctx.engine(sname), system, subjects) if subjects else {}
        batch.consumers[sname] = {ref: sorted(res.consumer_ids) for ref, res in resolved.items()}
        for ref, res in resolved.items():
            per_kind = batch.identities.setdefault(ref, {})
            for kind, values in res.identities.items():
                per_kind[kind.value] = sorted(set(per_kind.get(kind.value, [])) | values)
    batches.store_targets(ws, batch.batch_id, asdict(batch), ctx.datamap_hash)
    plan_rows = [
        state.PlanRow(int(ref), sname, "consumers", len(ids))
        for sname, per_ref in batch.consumers.items()
        for ref, ids in per_ref.items()
    ]
    with ctx.state.begin() as conn:  # the batch exists only with its requests pointing at it
        state.plan_batch(conn, batch.batch_id, KIND, plan_rows, created_at=now)
        state.set_status(conn, [int(r) for r in batch.refs], "open", batch_id=batch.batch_id)
    return batch


def request_window(
    row: state.RequestRow, doc: dict[str, Any], now: datetime
) -> tuple[datetime | None, datetime]:
    """The collection window one request covers: (since, until), aware UTC.

    since: intake's `collected_since` (R9: 12 months before the day of receipt at 00:00 UTC, or
    2022-01-01 when the consumer asked; G2: None, no limit). until: the business's receipt for
    the CCPA (R9 counts back from it); for the GDPR the moment the copy is made, because Art. 15
    gives a copy of the data being processed, with no look-back limit (G2).
    """
    if doc.get("collected_since"):
        since: datetime | None = datetime.fromisoformat(doc["collected_since"])
    else:
        look_back = doc.get("look_back") or row.look_back
        if not look_back:
            look_back = "all" if row.jurisdiction == "gdpr" else "default"
        since = intake.collected_since(row.receipt_day, look_back, row.jurisdiction)
    received = state.to_utc(row.received_at)
    until = state.to_utc(now) if row.jurisdiction == "gdpr" else received
    return (state.to_utc(since) if since else None), until


def repeat(state_engine: Engine, row: state.RequestRow) -> dict[str, Any]:
    """R7: how many access requests this consumer made in the 12 months up to this one.

    Counted by the keyed subject hash intake stores (the request's first identity), so a consumer
    who used another identity each time is not recognised; the business has the final word.
    """
    if not row.subject_hash:
        return {"requests_in_12_months": None, "flagged": False, "rule": "R7"}
    start = datetime.combine(intake.add_months(row.receipt_day, -12), time(), tzinfo=UTC)
    received = state.to_utc(row.received_at)
    count = state.subject_request_count(
        state_engine, row.client_id, row.subject_hash, KIND, start
    ) - state.subject_request_count(
        state_engine, row.client_id, row.subject_hash, KIND, received + timedelta(microseconds=1)
    )
    return {"requests_in_12_months": count, "flagged": count >= REPEAT_THRESHOLD, "rule": "R7"}


def fanout(dm: DataMap, batch: AccessBatch, stores: Mapping[str, Any]) -> dict[str, Any]:
    """Small JSON for XCom: the batch id, counts, and the systems, log days and backup
    snapshot days to map over.

    Log days are those of the union window, one day wider on each side: a line's day folder may
    differ from its timestamp's UTC day; lines are then kept by their own timestamps.
    """
    if not batch.batch_id or not batch.requests:
        return {
            "batch_id": batch.batch_id,
            "requests": 0,
            "systems": [],
            "shards": [],
            "backup_shards": [],
        }
    if not batch.gather_refs:  # only categories-only requests (R5): no store is read
        return {
            "batch_id": batch.batch_id,
            "requests": len(batch.requests),
            "systems": [],
            "shards": [],
            "backup_shards": [],
        }
    since, until = batch.union_window()
    first = (since - timedelta(days=1)).date() if since else None
    last = (until + timedelta(days=1)).date() if until else None
    shards = [
        LogShard(name, prefix).key
        for name, store in sorted(dm.stores.items())
        if isinstance(store, LogStore)
        for prefix in logs.day_prefixes(stores[name], store, first, last)
    ]
    return {
        "batch_id": batch.batch_id,
        "requests": len(batch.requests),
        "systems": sorted(dm.systems),
        "shards": shards,
        # R13: one snapshot day per shard of every backup store the map does not declare
        # not searched (`snapshots.backup_shards`)
        "backup_shards": snapshots.backup_shards(dm, stores),
    }
