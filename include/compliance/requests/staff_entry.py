"""Staff enter one verified request: validated like any client's, written to the inbox, and
named from then on by a reference that carries no identity.

Why this exists (issue 16, deliverable 2; issue 18, item 3): a DAG trigger form keeps what it is
given in Airflow's `dag_run.conf` for good, and shows it to anyone who can list runs, viewers
included. So the identities staff type in go straight to the inbox in the workspace bucket, the
same place and the same format as a client's document (`inbox.form_document`), after the same
validation (`inbox.examine`: the intake rules, the duplicate checks against the state DB and
against what already waits in the inbox, reason codes and all). Airflow only ever sees the
reference `<client_id>/<request_id>` (`REF_PARAM` in the run's conf): the client's tenant id and
the client's own request id, neither of which identifies a consumer.

Plain Python on a `JobContext`: the staff page (`plugins/compliance_desk.py`), `make demo` and
the tests call the same `enter`; the request DAGs' intake resolves the reference with `lookup`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from compliance.core.context import JobContext
from compliance.requests import inbox, intake, state
from compliance.requests.request_format import REQUEST_ID_RE

REF_PARAM = "request_ref"  # the only request field a run's conf may carry
# The DAG that answers each request type (its intake picks the document up from the inbox).
DAG_FOR_TYPE = {
    "delete": "deletion_requests",
    "access": "access_reports",
    "portability": "access_reports",  # G3: answered by the access pipeline
}
# What staff type in: the trigger form's old fields (`inbox.form_document` reads these names).
FIELDS = (
    "request_id",
    "client_id",
    "email",
    "phone",
    "contact_id",
    "received_at",
    "verification_method",
    "verified_at",
    "verified_by",
    "verification_level",
    "jurisdiction",
    "look_back",
    "transfer_to",
)
IDENTITY_FIELDS = ("email", "phone", "contact_id")


@dataclass(frozen=True)
class Entered:
    """The request is in the inbox; `ref` is all a run needs (and all Airflow may keep)."""

    ref: str
    key: str  # the inbox object written
    type: str
    again: bool = False  # the same document had been entered before: nothing written twice

    @property
    def dag_id(self) -> str:
        return DAG_FOR_TYPE[self.type]

    def conf(self) -> dict[str, str]:
        return {REF_PARAM: self.ref}


@dataclass(frozen=True)
class Refused:
    """Why the page refused it: the intake's reason codes, each naming a field and a rule (never
    a value, `intake.Rejected`). Nothing was written."""

    reasons: list[dict[str, Any]] = field(default_factory=list)


def enter(ctx: JobContext, type_: str, fields: Mapping[str, Any]) -> Entered | Refused:
    """Validate one staff-entered request and put it in the inbox (idempotent per client,
    request id and type: the same document entered twice is written once)."""
    if type_ not in DAG_FOR_TYPE:
        return _refused("unknown_type", "type", f"the type must be one of {sorted(DAG_FOR_TYPE)}")
    params = {k: _clean(fields.get(k)) for k in FIELDS}
    if params["look_back"] == "default":  # the jurisdiction's own (R9, G2): left out
        params["look_back"] = None
    doc = inbox.form_document(params, type_)
    if doc is None:
        return _refused("missing_field", "request_id", "the request id is required (R1)")
    if params["transfer_to"]:  # G3: another controller's endpoint (the intake checks the type)
        doc["transfer_to"] = params["transfer_to"]
    return enter_document(ctx, type_, doc)


@dataclass(frozen=True)
class Checked:
    """A document that passed validation and is not in the inbox yet: `put` writes it. Split
    from the write so the client API can claim its idempotency key in between (a conflicting
    submission racing this one must not overwrite the inbox object)."""

    entered: Entered
    doc: dict[str, Any] = field(repr=False)


def enter_document(ctx: JobContext, type_: str, doc: dict[str, Any]) -> Entered | Refused:
    """One request document (the inbox's format) validated and put in the inbox: the staff
    page's and the client API's shared path (issue 18, items 1 and 3)."""
    (checked,) = check_documents(ctx, [(type_, doc)])
    return put(ctx, checked) if isinstance(checked, Checked) else checked


def check_documents(
    ctx: JobContext, items: Sequence[tuple[str, dict[str, Any]]]
) -> list[Checked | Entered | Refused]:
    """Validate documents as the inbox's intake will (`inbox.examine`, one pass for the whole
    batch, duplicates among them included); writes nothing. An `Entered` (with `again`) is a
    document already waiting in the inbox unchanged."""
    out: list[Checked | Entered | Refused | None] = [None] * len(items)
    pending: list[tuple[int, str, dict[str, Any], str, bytes]] = []
    ws = ctx.workspace
    keys: set[str] = set()
    names = inbox.entered_names(ws.s3, ws.bucket) if len(items) > 1 else None
    for i, (type_, doc) in enumerate(items):
        if type_ not in DAG_FOR_TYPE:
            out[i] = _refused(
                "unknown_type", "type", f"the type must be one of {sorted(DAG_FOR_TYPE)}"
            )
            continue
        if not isinstance(doc.get("request_id"), str) or not doc["request_id"]:
            out[i] = _refused("missing_field", "request_id", "the request id is required (R1)")
            continue
        body = json.dumps(doc).encode()
        key = inbox.entry_key(type_, doc.get("client_id"), doc["request_id"])
        found = waiting(ctx, type_, doc.get("client_id"), doc["request_id"], names)
        if key in keys or (found is not None and found[1] != body):
            out[i] = _refused(
                "duplicate",
                "request_id",
                "another request was entered under this client and request id and waits in "
                "the inbox; use a new request id (R22)",
            )
            continue
        keys.add(key)
        if found is not None:  # entered before and not yet taken in by a run
            ref = _ref(doc.get("client_id"), doc["request_id"])
            out[i] = Entered(ref, found[0], type_, again=True)
            continue
        pending.append((i, type_, doc, key, body))
    if pending:
        exam = inbox.examine(
            ws.s3,
            ws.bucket,
            registry(ctx),
            ctx.state,
            ctx.hash_key,
            ctx.now(),
            [(key, body) for _, _, _, key, body in pending],
        )
        found = {r.source: (r, again) for r, again in exam.results}  # one result per document
        for i, type_, doc, key, _ in pending:
            result, replay = found[key]
            if isinstance(result, intake.Rejected):
                out[i] = Refused([_public(result.as_dict())])
            elif replay:
                out[i] = _refused(
                    "duplicate", "request_id", "this request is already on record (R7)"
                )
            else:
                entered = Entered(_ref(result.client_id, result.request_id), key, type_)
                out[i] = Checked(entered, doc)
    return [o for o in out if o is not None]


def waiting(
    ctx: JobContext, type_: str, client_id: Any, request_id: Any, names: set[str] | None = None
) -> tuple[str, bytes] | None:
    """Where this request's entered document waits in the inbox, and its bytes; None when it
    does not. Its `entry_key` first, then the name before the digest
    (`inbox.legacy_entry_key`: documents entered before an upgrade), which counts only when
    the document there is this request. `names` (`inbox.entered_names`, one listing): when a
    caller checks many, only names listed are read; without it, at most two GETs."""
    ws = ctx.workspace

    def read(key: str) -> bytes | None:
        return _read(ws.s3, ws.bucket, key) if names is None or key in names else None

    return _entered(read, type_, client_id, request_id)


def _entered(
    read: Callable[[str], bytes | None], type_: str, client_id: Any, request_id: Any
) -> tuple[str, bytes] | None:
    """The one rule for where an entered document waits, whatever `read` reads from (S3, or
    documents already read): `waiting` and `lookup` must never disagree."""
    key = inbox.entry_key(type_, client_id, request_id)
    if (raw := read(key)) is not None:
        return key, raw
    old = inbox.legacy_entry_key(type_, client_id, request_id)
    raw = read(old)
    if raw is not None and inbox.names_request(raw, type_, client_id, request_id):
        return old, raw
    return None


def put(ctx: JobContext, checked: Checked) -> Entered:
    """Write a checked document to the inbox (the same object a client's drop would be)."""
    inbox.submit(ctx.workspace.s3, ctx.workspace.bucket, checked.doc, checked.entered.key)
    return checked.entered


def run_ref(params: Mapping[str, Any]) -> tuple[str, str] | None:
    """The request a run's conf names, if any. A conf that carries an identity (someone posted
    one to the REST API by hand) stops the run, naming the field: it is not entered silently,
    and the alert tells staff the run's record holds one to remove (issue 16)."""
    for name in identity_fields(params):
        raise ValueError(
            f"{name}: a run's conf never carries identities; enter the request on the "
            "staff page (/compliance/requests) and delete this run (issue 16)"
        )
    return parse_ref(params.get(REF_PARAM))


EMAIL_LIKE = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")


def identity_fields(conf: Mapping[str, Any]) -> list[str]:
    """The conf fields that carry (or look like they carry) a consumer identity: the identity
    fields by name, and any text value shaped like an e-mail address. The api-server's guard
    (`plugins/compliance_desk.py`) refuses such a trigger before Airflow stores it; `run_ref`
    stops a run that got one anyway."""
    named = [n for n in (*IDENTITY_FIELDS, "identities") if conf.get(n)]
    shaped = [
        k for k, v in conf.items() if isinstance(v, str) and EMAIL_LIKE.search(v) and k not in named
    ]
    return named + shaped


def parse_ref(value: object) -> tuple[str, str] | None:
    """`<client_id>/<request_id>` -> (client_id, request_id); None when the run names none.

    Raises ValueError naming the field when the value is not a reference: a run whose conf
    holds anything else (an e-mail pasted in, say) stops instead of guessing."""
    if value in (None, ""):
        return None
    if not isinstance(value, str):
        raise ValueError(f"{REF_PARAM}: must be text '<client_id>/<request_id>'")
    client, _, request_id = value.rpartition("/")
    if not client or REQUEST_ID_RE.fullmatch(request_id) is None or "@" in value:
        raise ValueError(
            f"{REF_PARAM}: not a reference '<client_id>/<request_id>' (the request id is letters, "
            "digits and . _ : -); identities are entered on the staff page, never in a run's conf"
        )
    return client, request_id


def lookup(ctx: JobContext, ref: tuple[str, str], type_: str, in_inbox: dict[str, bytes]) -> str:
    """Where the referenced request stands: its status on record, or `waiting` when its
    document is still in the inbox (`in_inbox`: the inbox's documents by key; a dry run reads
    and changes nothing). Raises when it is nowhere: the reference names no request staff
    entered (or a run refused it as a duplicate, which is not logged, R22)."""
    client, request_id = ref
    dag = DAG_FOR_TYPE.get(type_)
    types = [t for t, d in DAG_FOR_TYPE.items() if d == dag] or [type_]  # access: portability too
    rows = state.find_requests(ctx.state, [(client, request_id, t) for t in types])
    for t in types:
        if (row := rows.get((client, request_id, t))) is not None:
            return str(row.status)
        if _entered(in_inbox.get, t, client, request_id) is not None:
            return "waiting"
    raise ValueError(
        f"{REF_PARAM}: no {type_} request {client}/{request_id} in the inbox or on record; "
        "enter it on the staff page (/compliance/requests) first"
    )


def registry(ctx: JobContext) -> dict[str, bool]:
    """Every client of the first SQL system's tenant registry and whether it is active (R27)."""
    name = sorted(ctx.datamap.systems)[0]
    return inbox.load_clients(ctx.engine(name), ctx.datamap.systems[name])


def _ref(client_id: object, request_id: str) -> str:
    return f"{client_id}/{request_id}"


def _clean(value: Any) -> Any:
    """An HTML form sends every field as text; an empty one means not given."""
    if isinstance(value, str):
        value = value.strip()
        return value or None
    return value


def _public(rejection: dict[str, Any]) -> dict[str, Any]:
    """What the page may show: the code, the field and the rule (the S3 key is ours)."""
    return {k: rejection[k] for k in ("reason", "field", "message")}


def _refused(reason: str, field_: str, message: str) -> Refused:
    return Refused([{"reason": reason, "field": field_, "message": message}])


def _read(s3: Any, bucket: str, key: str) -> bytes | None:
    try:
        return bytes(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    except s3.exceptions.NoSuchKey:
        return None
