"""Requests submitted through the client API, their status and their result (issue 18, item 1).

Why through `staff_entry`: a document a client POSTs is the same document it could drop in the
S3 inbox, so it is checked by the same code (`staff_entry.check_documents` -> `inbox.examine`,
the intake's reason codes) and written as the same inbox object; the request DAGs' intake takes
it in from there. Nothing here decides about a request.

Idempotency key: (client_id, request_id), recorded in `cj_api_requests` with the sha256 of the
canonical JSON of the document. The same document again is answered 200 with the request's
current status and nothing is written twice; another document under the same key is a 409
`duplicate`. The key is claimed (inserted) after validation and *before* the inbox write, so of
two conflicting submissions racing each other only the one that claimed the key writes.

Statuses are the public vocabulary of `desk.status` derived from the state DB's row, and
`received` while only the submission exists. Every answer is ids, codes and dates: never an
identity.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine, delete, insert, select
from sqlalchemy.exc import IntegrityError

from compliance.access.deliver import link_lifetime, presign
from compliance.core import workspace_layout
from compliance.core.context import JobContext
from compliance.desk import status as desk_status
from compliance.desk.api_calls import Problem
from compliance.desk.api_clients import ApiClient
from compliance.requests import staff_entry, state
from compliance.requests.schema import cj_api_requests

MAX_BATCH = 1000
RESULT_LINK_DAYS = 1  # a fresh link per call: short-lived (R12 allows up to 7 days)
TYPES = tuple(staff_entry.DAG_FOR_TYPE)


@dataclass(frozen=True)
class Answer:
    """What one submitted document got: 202 (newly received), 200 (a repeat), or a problem."""

    status: int
    body: dict[str, Any]


def submit(ctx: JobContext, client: ApiClient, payload: Any) -> tuple[int, dict[str, Any]]:
    """One document -> (202 | 200, status view), raising `Problem`; a batch
    (`{"requests": [...]}`) -> (207, {"results": [...]}) with one status per item, in order."""
    if isinstance(payload, dict) and set(payload) == {"requests"}:
        items = payload["requests"]
        if not isinstance(items, list) or not 1 <= len(items) <= MAX_BATCH:
            raise invalid("requests", "wrong_type", f"a list of 1 to {MAX_BATCH} documents")
        answers = submit_many(ctx, client, items)
        results = [{"index": i, "status": a.status, **_item(a)} for i, a in enumerate(answers)]
        return 207, {"results": results}
    (answer,) = submit_many(ctx, client, [payload])
    if answer.status >= 400:
        p = answer.body
        raise Problem(answer.status, p["reason"], p["title"], p["detail"], errors=p.get("errors"))
    return answer.status, answer.body


def _item(answer: Answer) -> dict[str, Any]:
    return {"problem" if answer.status >= 400 else "request": answer.body}


def submit_many(ctx: JobContext, client: ApiClient, docs: list[Any]) -> list[Answer]:
    """Each document answered on its own (one refused document does not refuse the others),
    validated in one pass over the inbox."""
    out: list[Answer | None] = [None] * len(docs)
    fresh: list[tuple[int, dict[str, Any], str]] = []
    for i, doc in enumerate(docs):
        try:
            client_id, request_id = _key(client, doc)
            digest = _digest(doc)
            known = _submitted(ctx.state, client_id, request_id)
            if known is not None:
                out[i] = Answer(200, _repeat(ctx, client_id, request_id, known, digest, doc))
            else:
                fresh.append((i, doc, digest))
        except Problem as problem:
            out[i] = Answer(problem.status, problem.body())
    checked = staff_entry.check_documents(ctx, [(str(d.get("type")), d) for _, d, _ in fresh])
    for (i, doc, digest), result in zip(fresh, checked, strict=True):
        try:
            out[i] = _enter(ctx, client, doc, digest, result)
        except Problem as problem:
            out[i] = Answer(problem.status, problem.body())
    return [a for a in out if a is not None]


def _enter(
    ctx: JobContext,
    client: ApiClient,
    doc: dict[str, Any],
    digest: str,
    result: staff_entry.Checked | staff_entry.Entered | staff_entry.Refused,
) -> Answer:
    if isinstance(result, staff_entry.Refused):
        raise _refused(result)
    client_id, request_id, type_ = (
        str(doc["client_id"]),
        str(doc["request_id"]),
        result_type(result),
    )
    if not _claim(ctx.state, client, client_id, request_id, type_, digest, ctx.now()):
        known = _submitted(ctx.state, client_id, request_id)  # claimed by a racing call
        assert known is not None
        return Answer(200, _repeat(ctx, client_id, request_id, known, digest, doc))
    if isinstance(result, staff_entry.Checked):
        try:
            staff_entry.put(ctx, result)
        except BaseException:  # not written: free the key, so the client's retry can write it
            _unclaim(ctx.state, client_id, request_id)
            raise
    return Answer(202, desk_status.view(client_id, request_id, type_, None))


def result_type(result: staff_entry.Checked | staff_entry.Entered) -> str:
    return (result.entered if isinstance(result, staff_entry.Checked) else result).type


def _repeat(
    ctx: JobContext,
    client_id: str,
    request_id: str,
    known: dict[str, Any],
    digest: str,
    doc: dict[str, Any],
) -> dict[str, Any]:
    """A submission under a key already used: the same document -> its current status; another
    one -> 409. When the first answer's inbox write was lost (a crash right after the key was
    claimed) and the intake never saw it, the repeat writes it now."""
    if known["body_sha256"] != digest:
        raise Problem(
            409,
            "duplicate",
            "Another request was submitted under this request id",
            "this client_id and request_id were used for a different document; a request id "
            "is used once (R22): submit a new request under a new id",
        )
    row = _row(ctx.state, client_id, request_id, [known["type"]])
    if row is None and staff_entry.waiting(ctx, known["type"], client_id, request_id) is None:
        again = staff_entry.enter_document(ctx, known["type"], doc)
        if isinstance(again, staff_entry.Refused):
            raise _refused(again)
    return desk_status.view(client_id, request_id, known["type"], row)


def status(ctx: JobContext, client: ApiClient, client_id: str | None, request_id: str) -> dict:
    """`GET /requests/{request_id}`: the request's public status (`desk.status.view`)."""
    client_id = _tenant(client, client_id)
    known = _submitted(ctx.state, client_id, request_id)
    types = [known["type"]] if known else list(TYPES)
    row = _row(ctx.state, client_id, request_id, types)
    if row is not None:
        return desk_status.view(client_id, request_id, row.type, row)
    if known is not None:
        return desk_status.view(client_id, request_id, known["type"], None)
    raise Problem(404, "not_found", "No such request", "no request by this id for this client")


def result(ctx: JobContext, client: ApiClient, client_id: str | None, request_id: str) -> dict:
    """`GET /requests/{request_id}/result`: a completed request's receipt (no identity, R22)
    and, for access and portability, a fresh expiring link to the bundle (R12): the client
    receives the answer without reaching into our bucket."""
    view = status(ctx, client, client_id, request_id)
    if view["status"] != "completed":
        raise Problem(
            409,
            "not_completed",
            "The request is not completed",
            f"the request is {view['status']}; the result is available once it is completed",
        )
    ws = ctx.workspace
    rkey = workspace_layout.receipt_key(view["client_id"], request_id, view["type"])
    receipt = _read_json(ws.s3, ws.bucket, rkey)
    if receipt is None:
        raise Problem(404, "no_receipt", "No receipt", "the request's receipt is not available")
    out: dict[str, Any] = {"request": view, "receipt": receipt}
    bundle = (receipt.get("bundle") or receipt.get("delivery") or {}).get("key")
    if bundle and _exists(ws.s3, ws.bucket, bundle):
        lifetime: timedelta = link_lifetime(RESULT_LINK_DAYS)
        out["link"] = {
            "url": presign(ws.s3, ws.bucket, bundle, lifetime),
            "expires_at": (ctx.now() + lifetime).isoformat(),
        }
    return out


def _tenant(client: ApiClient, client_id: str | None) -> str:
    if client_id is None:
        if len(client.client_ids) != 1:
            raise invalid(
                "client_id", "missing_field", "this credential acts for several clients: name one"
            )
        (client_id,) = client.client_ids
    if not client.may_act_for(client_id):
        raise _wrong_client()
    return str(client_id)


def _key(client: ApiClient, doc: Any) -> tuple[str, str]:
    """(client_id, request_id) of a document, after the credential's right to act for it."""
    if not isinstance(doc, dict):
        raise invalid("", "not_an_object", "each request is a JSON object")
    client_id, request_id = doc.get("client_id"), doc.get("request_id")
    if client_id is None or client_id == "":
        raise invalid("client_id", "missing_field", "the client id is required (R6)")
    if isinstance(client_id, bool) or not isinstance(client_id, (str, int)):
        raise invalid("client_id", "wrong_type", "the client id is text or an integer")
    if not isinstance(request_id, str) or not request_id:
        raise invalid("request_id", "missing_field", "the request id is required (R1)")
    if not client.may_act_for(client_id):
        raise _wrong_client()
    return str(client_id), request_id


def _digest(doc: dict[str, Any]) -> str:
    canonical = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _wrong_client() -> Problem:
    return Problem(
        403,
        "wrong_client",
        "Not this client's request",
        "this credential may not act for the client_id given",
    )


def invalid(field: str, reason: str, message: str) -> Problem:
    return Problem(
        400,
        "invalid_document",
        "The request document is invalid",
        f"{field or 'document'}: {message}",
        errors=[{"field": field, "reason": reason, "message": message}],
    )


def _refused(refused: staff_entry.Refused) -> Problem:
    """The intake's reasons as a problem: 409 when the only reason is a duplicate request id,
    400 otherwise. Each error names the field and the rule (`Rejected.message`), no value."""
    errors = [
        {"field": r.get("field") or "", "reason": r["reason"], "message": r["message"]}
        for r in refused.reasons
    ]
    if all(e["reason"] == "duplicate" for e in errors):
        return Problem(
            409,
            "duplicate",
            "The request duplicates one on record or waiting",
            errors[0]["message"],
            errors=errors,
        )
    return Problem(
        400,
        "invalid_document",
        "The request document is invalid",
        "; ".join(f"{e['field']}: {e['reason']}" for e in errors),
        errors=errors,
    )


def _submitted(engine: Engine, client_id: str, request_id: str) -> dict[str, Any] | None:
    t = cj_api_requests.c
    with engine.connect() as conn:
        row = (
            conn.execute(
                select(cj_api_requests).where(t.client_id == client_id, t.request_id == request_id)
            )
            .mappings()
            .first()
        )
    return dict(row) if row is not None else None


def _claim(
    engine: Engine,
    client: ApiClient,
    client_id: str,
    request_id: str,
    type_: str,
    digest: str,
    now: datetime,
) -> bool:
    """Insert the idempotency key; False when another call holds it already."""
    try:
        with engine.begin() as conn:
            conn.execute(
                insert(cj_api_requests).values(
                    client_id=client_id,
                    request_id=request_id,
                    type=type_,
                    api_key=client.key,
                    body_sha256=digest,
                    submitted_at=now,
                )
            )
    except IntegrityError:
        return False
    return True


def _unclaim(engine: Engine, client_id: str, request_id: str) -> None:
    t = cj_api_requests.c
    with engine.begin() as conn:
        conn.execute(
            delete(cj_api_requests).where(t.client_id == client_id, t.request_id == request_id)
        )


def _row(
    engine: Engine, client_id: str, request_id: str, types: list[str]
) -> state.RequestRow | None:
    rows = state.find_requests(engine, [(client_id, request_id, t) for t in types])
    return next((rows[k] for k in [(client_id, request_id, t) for t in types] if k in rows), None)


def _exists(s3: Any, bucket: str, key: str) -> bool:
    listed = s3.list_objects_v2(Bucket=bucket, Prefix=key, MaxKeys=1).get("Contents", [])
    return any(o["Key"] == key for o in listed)


def _read_json(s3: Any, bucket: str, key: str) -> dict[str, Any] | None:
    try:
        return json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    except s3.exceptions.NoSuchKey:
        return None
