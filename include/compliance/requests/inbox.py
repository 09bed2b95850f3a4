"""The request inbox in S3: documents in, accepted and rejected out, nothing lost.

Clients drop documents under `inbox/<client_id>/` (their prefix names the only client they may
file for, spelt as the tenant registry spells it: `inbox/7/`, `inbox/acme-east/`); staff
submissions from the UI land under `inbox/ui/`. One pass:

1. read every inbox object (bounded size) and validate it (`compliance.requests.intake`);
2. drop duplicates of requests still open (keyed hashes in the state DB, R7); a request id is
   processed once; a consumer erased before may ask again (a new request linked to the earlier
   ones by keyed refs, R20);
3. write each accepted request, normalised, to `accepted/<client>/<request_id>.<type>.json`, and
   each document with rejections to `rejected/<day>/` beside a `.reasons.json` naming the field
   and rule of every rejection;
4. register the requests (state DB) and ledger entries, then delete the inbox object.

Every step is idempotent, and the inbox object is deleted last: a crash anywhere means the next
run redoes the document, and a replay of a document already registered from the same source is
recognised as such, not as a duplicate.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy import Engine

from compliance.core import ledger, workspace_layout
from compliance.core.datamap.model import SqlSystem
from compliance.core.hashing import keyed_hash
from compliance.core.outputs import (
    THREADS,
    delete_many,
    ensure_workspace,
    put_bytes,
    put_json,
    put_json_many,
    put_summary,
)
from compliance.core.sqlmap import key_text
from compliance.core.stores.s3 import list_keys
from compliance.core.workspace_layout import ACCEPTED as ACCEPTED
from compliance.core.workspace_layout import INBOX, REJECTED, UI
from compliance.requests import intake, request_records, state

MAX_OBJECT_BYTES = 16 * 1024 * 1024  # an NDJSON batch of thousands of requests fits
_SAFE = re.compile(r"[^A-Za-z0-9._-]")


@dataclass
class IntakeSummary:
    documents: int = 0
    accepted: int = 0
    rejected: int = 0
    replayed: int = 0
    by_reason: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def submit(s3: Any, bucket: str, document: dict[str, Any], key: str) -> str:
    """Staff's form and the client API: put one checked request document into the inbox at its
    `entry_key` (the intake validates it like any other)."""
    put_bytes(s3, bucket, key, json.dumps(document).encode(), "application/json")
    return key


ENTERED = f"{INBOX}{UI}/"  # where requests entered on the staff page or the API wait


def submission_key(name: str) -> str:
    return f"{ENTERED}{_SAFE.sub('_', name)}.json"


def entered_names(s3: Any, bucket: str) -> set[str]:
    """The keys of every entered document waiting in the inbox: one listing for a batch."""
    return {o["Key"] for o in list_keys(s3, bucket, ENTERED)}


def entry_key(type_: str, client_id: Any, request_id: Any) -> str:
    """Where an entered request (staff form, client API) waits in the inbox.

    The sanitised name alone is not one-to-one: tenant `acme` with request `east-1` and tenant
    `acme-east` with request `1` would share a file, and so would tenants differing only in
    non-ASCII letters; the second would be refused as a duplicate (R22) while the first waits.
    A digest of the exact (type, tenant, request id) keeps the readable name and makes it unique.
    Tenant ids are compared as text, as everywhere in the desk."""
    exact = json.dumps([str(type_), str(client_id), str(request_id)]).encode()
    digest = hashlib.sha256(exact).hexdigest()[:12]
    return submission_key(f"{type_}-{client_id}-{request_id}-{digest}")


def legacy_entry_key(type_: str, client_id: Any, request_id: Any) -> str:
    """The name `entry_key` gave before its digest (up to 2026-12-06). A document entered before
    an upgrade still waits under it until a run takes it in, and the desk must still see it
    there (`staff_entry.waiting`). Two requests may share this name (why the digest came), so
    a document found under it counts only when it names this exact request (`names_request`).
    Drop it once no inbox holds such names (one run after the upgrade drains them)."""
    return submission_key(f"{type_}-{client_id}-{request_id}")


def names_request(raw: bytes, type_: str, client_id: Any, request_id: Any) -> bool:
    """Whether an inbox document is this (type, tenant, request id), compared as text, as
    `entry_key` compares (a document without a type names every type)."""
    try:
        doc = json.loads(raw)
    except ValueError:
        return False
    if not isinstance(doc, dict):
        return False
    return (str(doc.get("client_id")), str(doc.get("request_id"))) == (
        str(client_id),
        str(request_id),
    ) and str(doc.get("type", type_)) == str(type_)


def form_document(params: dict[str, Any], type_: str) -> dict[str, Any] | None:
    """A request document from a DAG trigger form, or None when the form was left empty.

    The document then goes through the inbox like any client's, so the form cannot bypass a rule.
    """
    if not params.get("request_id"):
        return None
    identities = {k: params[k] for k in ("email", "phone", "contact_id") if params.get(k)}
    doc: dict[str, Any] = {
        "request_id": params["request_id"],
        "client_id": params.get("client_id"),
        "type": type_,
        "identities": identities,
        "received_at": params.get("received_at"),
        "jurisdiction": params.get("jurisdiction") or "ccpa",
        "verification": {
            "method": params.get("verification_method"),
            "verified_at": params.get("verified_at") or params.get("received_at"),
            "verified_by": params.get("verified_by"),
        },
    }
    if type_ == "access" and params.get("look_back"):
        doc["look_back"] = params["look_back"]
    if params.get("verification_level"):  # R5: absent = verified for specific pieces
        doc["verification"]["level"] = params["verification_level"]
    return doc


def load_clients(engine: Engine, system: SqlSystem) -> dict[str, bool]:
    """client id -> active, from the tenant registry the data map names.

    Keyed by the registry key's text (`sqlmap.key_text`): tenant ids may be integers, text or
    UUIDs (any-CRM), and intake compares a request's client id with this text exactly, so "01"
    is not tenant 1 and "01" and "1" stay distinct text tenants (R6)."""
    if system.tenants is None:
        raise ValueError("the data map names no tenant registry (systems.<name>.tenants)")
    reg = system.tenants
    table = sa.Table(reg.table, sa.MetaData(), autoload_with=engine)
    active = table.c[reg.active_column] if reg.active_column else sa.true()
    with engine.connect() as conn:
        rows = conn.execute(sa.select(table.c[reg.key], active))
        return {key_text(k): bool(a) for k, a in rows if k is not None}


def accepted_key(item: intake.Accepted) -> str:
    return workspace_layout.accepted_key(item.client_id, item.request_id, item.type.value)


@dataclass
class Examination:
    """The inbox read and validated, nothing written: what `ingest` commits, or a dry run shows."""

    documents: list[tuple[str, bytes, list[intake.Result]]]
    results: list[tuple[intake.Result, bool]]  # after the duplicate check; True = a replay
    checked: dict[int, intake.Result]  # id(parsed result) -> result after the duplicate check

    def summary(self) -> IntakeSummary:
        out = IntakeSummary(documents=len(self.documents))
        reasons: Counter[str] = Counter()
        for result, replay in self.results:
            if isinstance(result, intake.Accepted):
                out.replayed += int(replay)
                out.accepted += int(not replay)
            else:
                out.rejected += 1
                reasons[result.reason.value] += 1
        out.by_reason = dict(sorted(reasons.items()))
        return out

    def accepted(self, type_: intake.RequestType) -> list[intake.Accepted]:
        """New requests of one type (replays are registered already)."""
        return [
            r
            for r, replay in self.results
            if isinstance(r, intake.Accepted) and r.type is type_ and not replay
        ]


def examine(
    s3: Any,
    bucket: str,
    clients: dict[str, bool],
    state_engine: Engine,
    hash_key: bytes,
    now: datetime,
    extra: Sequence[tuple[str, bytes]] = (),
) -> Examination:
    """Read and validate every inbox document (and `extra` (key, body) pairs not stored, e.g. a
    dry run's form), duplicates checked against the state DB; writes nothing."""
    documents: list[tuple[str, bytes, list[intake.Result]]] = []
    objects = [
        obj
        for obj in sorted(list_keys(s3, bucket, INBOX), key=lambda o: o["Key"])
        if not obj["Key"].endswith("/")
    ]
    with ThreadPoolExecutor(max_workers=THREADS) as pool:  # latency-bound: overlap the reads
        bodies = pool.map(lambda o: _read_bounded(s3, bucket, o["Key"], int(o["Size"])), objects)
        inbox = [(obj["Key"], raw) for obj, raw in zip(objects, bodies, strict=True)]
    for key, raw in [*inbox, *extra]:
        source_client = _source_client(key)
        if raw is None:
            results: list[intake.Result] = [
                intake.Rejected(
                    key,
                    None,
                    intake.Reason.too_large,
                    None,
                    f"the object exceeds {MAX_OBJECT_BYTES} bytes; split it (R1)",
                )
            ]
        else:
            results = intake.parse_documents(
                raw, key, now=now, clients=clients, source_client=source_client
            )
        documents.append((key, raw or b"", results))
    flat = [r for _, _, rs in documents for r in rs]
    replays = _replays(state_engine, flat, hash_key)
    fresh = [r for r in flat if id(r) not in replays]
    new = [r for r in fresh if isinstance(r, intake.Accepted)]
    # Identities deduplicate only against requests still being worked on (open, deferred...):
    # a consumer erased before whose data was collected again may ask to be erased again, and
    # that is a new request (R16, R20); one who asks to know again is R7's repeat, flagged by
    # the access run. A request id, though, is processed once, whatever became of it.
    existing = state.existing_dedupe_keys(
        state_engine, {k for r in new for k in intake.identity_keys(r, hash_key)}
    ) | state.existing_dedupe_keys(
        state_engine, {intake.request_key(r, hash_key) for r in new}, state.ACCEPTED_STATUSES
    )
    # ...refused ones included (they hold no keys): the log keeps one row per (client, request
    # id, type), so a corrected resend under a refused id would be swallowed; it is refused as
    # a duplicate instead, and the business resends it under a new id (R22).
    logged = state.find_requests(state_engine, [(r.client_id, r.request_id, r.type) for r in new])
    existing |= {
        intake.request_key(r, hash_key)
        for r in new
        if (r.client_id, r.request_id, r.type.value) in logged
    }
    checked = {
        id(orig): res
        for orig, res in zip(fresh, intake.find_duplicates(fresh, existing, hash_key), strict=True)
    }
    return Examination(
        documents, [(checked.get(id(r), r), id(r) in replays) for r in flat], checked
    )


def ingest(
    s3: Any,
    bucket: str,
    clients: dict[str, bool],
    state_engine: Engine,
    hash_key: bytes,
    now: datetime,
) -> IntakeSummary:
    ensure_workspace(s3, bucket)
    exam = examine(s3, bucket, clients, state_engine, hash_key, now)
    summary = exam.summary()
    new_rows: list[state.NewRequest] = []
    entries: list[ledger.Entry] = []
    accepted_docs: dict[str, dict[str, Any]] = {}
    taken = [r for r, _ in exam.results if isinstance(r, intake.Accepted)]
    holders = state.requests_holding_keys(
        state_engine, {k for r in taken for k in intake.identity_keys(r, hash_key)}
    )
    previous = request_records.previous(taken, holders, hash_key)
    for result, _replay in exam.results:
        idem = f"intake:{result.source}:{result.line or 0}"
        if isinstance(result, intake.Accepted):
            accepted_docs[accepted_key(result)] = _accepted_doc(result)
            new_rows.append(_new_request(result, hash_key, now, previous[id(result)]))
            entries.append(
                ledger.Entry(
                    "request_accepted",
                    _ref(result, hash_key),
                    {
                        "type": result.type.value,
                        "client_id": result.client_id,
                        "rules": ["R1", "R5"],
                    },
                    idem,
                )
            )
        else:
            row = _rejected_request(result, clients, now)
            if row is not None:
                new_rows.append(row)
            entries.append(
                ledger.Entry(
                    "request_rejected",
                    None,
                    {
                        "reason": result.reason.value,
                        "field": result.field,
                        "client_id": result.client_id,
                    },
                    idem,
                )
            )
    put_json_many(s3, bucket, accepted_docs)
    day = now.date().isoformat()
    for key, raw, results in exam.documents:
        rejections = [
            r
            for r in (exam.checked.get(id(x), x) for x in results)
            if isinstance(r, intake.Rejected)
        ]
        if rejections:
            base = f"{REJECTED}{day}/{_SAFE.sub('_', key[len(INBOX) :])}"
            put_bytes(s3, bucket, base, raw, "application/octet-stream")
            put_json(s3, bucket, base + ".reasons.json", [r.as_dict() for r in rejections])
    state.insert_requests(state_engine, new_rows)
    ledger.append(state_engine, hash_key, entries)
    delete_many(s3, bucket, [key for key, _, _ in exam.documents if key.startswith(INBOX)])
    if summary.documents:  # both request DAGs run intake; keep the run that saw documents
        put_summary(s3, bucket, "intake", summary.to_dict())
    return summary


def _source_client(key: str) -> str | None:
    """The client an inbox object came from: its folder `inbox/<client_id>/`, as text (tenant
    ids may be any text, so every folder but the staff's `ui/` names a client, R6). None for
    the staff folder, an object at the inbox root and `extra` documents."""
    if not key.startswith(INBOX):
        return None
    parts = key[len(INBOX) :].split("/")
    if len(parts) < 2 or parts[0] in ("", UI):
        return None
    return parts[0]


def _read_bounded(s3: Any, bucket: str, key: str, size: int) -> bytes | None:
    if size > MAX_OBJECT_BYTES:
        return None
    return s3.get_object(Bucket=bucket, Key=key)["Body"].read(MAX_OBJECT_BYTES + 1)


def _replays(state_engine: Engine, results: list[intake.Result], hash_key: bytes) -> set[int]:
    """Accepted results that are the registered request itself (a rerun after a crash).

    A replay names the same (client, request_id, type) *and* the same identities (its dedupe keys
    are the ones on record). A resend of a request_id with other identities is not a replay: it
    falls through to `find_duplicates` and is rejected, so it can never redirect an erasure.
    """
    accepted = [r for r in results if isinstance(r, intake.Accepted)]
    if not accepted:
        return set()
    known = state.find_requests(
        state_engine, [(r.client_id, r.request_id, r.type.value) for r in accepted]
    )
    on_record = state.request_keys(state_engine, [row.id for row in known.values()])
    return {
        id(r)
        for r in accepted
        if (row := known.get((r.client_id, r.request_id, r.type.value))) is not None
        and row.source == accepted_key(r)
        and intake.dedupe_key(r, hash_key) <= on_record[row.id]
    }


def _ref(item: intake.Accepted, hash_key: bytes) -> str:
    return keyed_hash(hash_key, "request", f"{item.client_id}\x1f{item.request_id}\x1f{item.type}")


def _accepted_doc(item: intake.Accepted) -> dict[str, Any]:
    """The normalised request, the only place its identities live until it is completed."""
    return {
        "request_id": item.request_id,
        "client_id": item.client_id,
        "type": item.type.value,
        "jurisdiction": item.jurisdiction.value,
        "identities": item.identities.as_doc(),  # a phone's other spellings too (a list)
        "received_at": item.received_at.isoformat(),
        "look_back": item.look_back.value if item.look_back else None,
        "collected_since": item.collected_since.isoformat() if item.collected_since else None,
        "under_13": item.under_13,
        # R5: "categories" = verified only for categories; the access run then gathers nothing
        # for it and answers with the categories page (compliance.access.batch).
        "verification_level": item.verification.level,
        "source": item.source,
        # G3: the other controller's endpoint (portability only); read by access.portability
        **({"transfer_to": item.transfer_to} if item.transfer_to else {}),
    }


def _new_request(
    item: intake.Accepted, hash_key: bytes, now: datetime, previous: str | None = None
) -> state.NewRequest:
    """The request as registered. `accepted_at` is when it reached our records: the watchdog
    treats a request accepted after its last check as new and reports it at whatever level it
    is already at, so one forwarded late with its acknowledgement overdue alerts on the next
    run (R2, R3). R1/R5/R24's records are stored as codes, times and keyed hashes
    (`request_records`); `previous` links earlier requests for the same identities (R20)."""
    first = next(iter(item.identities.items()))
    return state.NewRequest(
        client_id=item.client_id,
        request_id=item.request_id,
        type=item.type.value,
        jurisdiction=item.jurisdiction.value,
        received_at=item.received_at,
        source=accepted_key(item),
        received_on=item.due.received_on,
        ack_due=item.due.ack_due,
        response_due=item.due.response_due,
        subject_hash=keyed_hash(
            hash_key, f"subject:{first[0].value}", f"{item.client_id}\x1f{first[1]}"
        ),
        look_back=item.look_back.value if item.look_back else None,
        accepted_at=now,
        previous_requests=previous,
        **request_records.columns(item, hash_key),
        keys=tuple(sorted(intake.dedupe_key(item, hash_key))),
    )


def _rejected_request(
    item: intake.Rejected, clients: dict[str, bool], now: datetime
) -> state.NewRequest | None:
    """A refusal is part of the request log (R22) when it names a known client and request.

    The type, receipt time and jurisdiction are the document's own, each read on its own
    (`intake.Rejected`): what it does not give readably is `unknown` (null for the receipt),
    never guessed from the S3 key, the clock or a default (R22, R23). The refusal is the
    response, dated now, with its reason code as the basis (R21). Not logged: duplicates (the
    original request is the one on record) and a document naming a client other than the
    folder it came from (that client never sent it, R6).
    """
    if (
        item.reason in (intake.Reason.duplicate, intake.Reason.client_mismatch)
        or item.client_id not in clients
        or not item.request_id
    ):
        return None
    return state.NewRequest(
        client_id=item.client_id,
        request_id=item.request_id,
        type=item.type or state.UNKNOWN,
        jurisdiction=item.jurisdiction or state.UNKNOWN,
        received_at=item.received_at,
        source=item.source,
        status="rejected",
        reason_code=item.reason.value,
        completed_at=now,
    )
