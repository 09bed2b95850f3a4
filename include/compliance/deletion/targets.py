"""What a deletion batch erases, where that list lives, and when it goes (R16, R19, R20).

A batch's `Targets` hold identities, so they never travel through XCom: `plan` writes them once,
encrypted, to `batches/<id>/targets.json` in the workspace (`compliance.requests.batches`, which
stamps the data map's digest), and every later step loads them by batch id. A partial request's
memory waits under `held/` until its legal hold ends (R19). `sweep` removes what a crash left
behind, so identities do not outlive their requests (R20).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine

from compliance.core import logfiles, workspace_layout
from compliance.core.context import Workspace
from compliance.core.datamap.model import IdentityType
from compliance.core.hashing import keyed_hash
from compliance.core.outputs import delete_many
from compliance.core.workspace_layout import HELD, RECEIPTS
from compliance.deletion import residue_oracle
from compliance.requests import batches, state
from compliance.requests.batches import BATCHES, targets_key
from compliance.requests.inbox import ACCEPTED

__all__ = ["BATCHES", "HELD", "RECEIPTS", "Targets", "targets_key"]


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

    def log_targets(self, store: str | None = None) -> logfiles.Targets:
        """Identities to scrub (from `store`: not those of requests a hold keeps there, R19)."""
        by_tenant: dict[str, list[tuple[IdentityType, str, str]]] = defaultdict(list)
        for ref in self.active_refs():
            if store is not None and store in self.held_stores.get(ref, []):
                continue
            tenant = str(self.requests[ref]["client_id"])
            for kind, values in self.identities.get(ref, {}).items():
                by_tenant[tenant].extend((IdentityType(kind), v, ref) for v in values)
        return logfiles.Targets(by_tenant)


def held_key(client_id: str, request_id: str) -> str:
    """Where a `partial` request's consumers and identities wait for its hold to end (R19)."""
    return workspace_layout.held_key(client_id, request_id)


def load_targets(ws: Workspace, batch_id: str, datamap_hash: str | None = None) -> Targets:
    """The batch's targets; `MapChanged` when planned under a map other than `datamap_hash`
    (None: a reader that changes nothing, or a clean-up)."""
    return Targets(**batches.load_targets(ws, batch_id, datamap_hash))


def store_targets(ws: Workspace, targets: Targets, datamap_hash: str) -> None:
    batches.store_targets(ws, targets.batch_id, targets.__dict__, datamap_hash)


def tombstone_hash(hash_key: bytes, kind: str, value: str) -> str:
    """A keyed hash of an erased identity: what a restored backup is matched against (R18)."""
    return keyed_hash(hash_key, f"tombstone:{kind}", value)


def sweep(ws: Workspace, state_engine: Engine) -> int:
    """Remove what a crash left in `batches/`; return how many batches it cleaned up.

    A targets file whose batch was never stored (a crash inside `plan`, or a dry run's that
    crashed before its report) is deleted; a finished batch whose clean-up did not complete (a
    crash at the end of `finalize`) is cleaned up now. Planned batches are left alone: the run
    resumes them. Access batches (`acc-`) are the access DAG's.
    """
    s3, bucket = ws.s3, ws.bucket
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
                clean_up(ws, state_engine, load_targets(ws, batch_id))
            else:
                s3.delete_object(Bucket=bucket, Key=targets_key(batch_id))
            found += 1
    return found


def clean_up(ws: Workspace, state_engine: Engine, targets: Targets) -> None:
    """R20: once a batch is finished only keyed hashes remain. Deferred requests keep their
    documents: they are planned again when their hold lifts."""
    s3, bucket = ws.s3, ws.bucket
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
