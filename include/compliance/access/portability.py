"""Portability (G3, GDPR Art. 20): the data the consumer provided, machine-readable, to the
business or straight to another controller.

A `portability` request (GDPR only, docs/requests.md) goes through the access pipeline: the
access run plans it in the same batch as access requests, gathers its rows and log lines in the
same passes (`access.batch`, `access.gather`), and this module delivers it, before the access
bundles are built (`compliance.jobs.access.build_bundles`). What it holds is narrower than an
access bundle: only what the consumer provided (`core.datamap.provided`: given or observed,
never derived; withheld values never leave the stores), from the live systems (not backup
copies), without our internal record ids.

The export is one JSON document (`portability.json`: identities as the request gave them, then
per source a list of records) plus one CSV per source, in a zip.

- **To the business** (no `transfer_to`): the zip at
  `access/<client>/<request_id>/portability.zip`, encrypted at rest, with an expiring link
  (at most 7 days, R12) in `portability.link.json` beside it. The bundle folder is the access
  bundles', so the same retention rule removes it.
- **To another controller** (`transfer_to`, Art. 20(2)): the JSON document is POSTed to that
  endpoint (`access.portability_transfer`), nothing is kept. A failure (refused, unreachable,
  not 2xx) keeps the request open, records the attempt (`portability.transfer.json`, counts
  and codes only), appends a ledger entry and alerts; the next access run plans it again.

Each delivered request gets a receipt (`receipts/<client>/<request_id>.portability.json`) and a
ledger entry (`portability_delivered`), and is completed. Nothing personal goes to logs, XCom or
the ledger.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import zipfile
from datetime import datetime, timedelta
from typing import Any

from botocore.exceptions import ClientError

from compliance.access import portability_transfer as transfer
from compliance.access.batch import AccessBatch, load
from compliance.access.deliver import link_lifetime, presign
from compliance.access.gather import read_parts
from compliance.core import alerts, ledger, workspace_layout
from compliance.core.context import JobContext
from compliance.core.datamap import paths as fpaths
from compliance.core.datamap.model import DataMap
from compliance.core.datamap.provided import provided_columns, provided_fields
from compliance.core.hashing import keyed_hash
from compliance.core.outputs import encryption_args, put_json
from compliance.requests import state

log = logging.getLogger(__name__)

TYPE = "portability"
SCHEMA = "compliance-jobs/portability/1"
RULES = ["G3", "R12"]


def folder(client_id: str, request_id: str) -> str:
    return workspace_layout.bundle_prefix(client_id, request_id)  # the request's folder


def export_key(client_id: str, request_id: str) -> str:
    return f"{folder(client_id, request_id)}portability.zip"


def link_key(client_id: str, request_id: str) -> str:
    return f"{folder(client_id, request_id)}portability.link.json"


def attempt_key(client_id: str, request_id: str) -> str:
    return f"{folder(client_id, request_id)}portability.transfer.json"


def receipt_key(client_id: str, request_id: str) -> str:
    return workspace_layout.receipt_key(client_id, request_id, TYPE)


# -- what the consumer provided ------------------------------------------------------------------


def provided_records(dm: DataMap, records: list[dict[str, Any]]) -> dict[str, list[dict]]:
    """source -> records holding only provided values (G3), in the gathered order.

    A SQL row keeps its provided columns; a log line keeps the values at its provided field
    paths (a path matching several values gives a list). Backup copies (`snapshot`) are left
    out: the live record is the one the consumer provided. A record with nothing provided in
    it is dropped."""
    columns: dict[str, list[str]] = {}
    fields: dict[str, list[str]] = {}
    for sname, system in dm.systems.items():
        for tname in system.tables:
            columns[f"{sname}.{tname}"] = provided_columns(dm, sname, tname)
    for name in dm.stores:
        fields[name] = provided_fields(dm, name)
    out: dict[str, list[dict]] = {}
    for rec in records:
        source = rec.get("source", "")
        if rec.get("snapshot") is not None:
            continue
        values = rec.get("values") or {}
        if source in columns:
            kept = {c: values[c] for c in columns[source] if values.get(c) is not None}
        elif source in fields:
            kept = {}
            for path in fields[source]:
                found = list(fpaths.values(values, path))
                if found:
                    kept[path] = found[0] if len(found) == 1 else found
        else:
            continue
        if kept:
            out.setdefault(source, []).append({"collected_at": rec.get("collected_at"), **kept})
    return out


def document(
    req: dict[str, Any], given: dict[str, list[str]], data: dict[str, list[dict]], when: str
) -> dict[str, Any]:
    """The machine-readable export (JSON): who it is about, then the provided data."""
    return {
        "schema": SCHEMA,
        "request_id": req["request_id"],
        "client_id": str(req["client_id"]),
        "generated_at": when,
        "legal_basis": "GDPR Art. 20 (right to data portability): data the data subject "
        "provided, given or observed; derived and inferred data are not included",
        "subject": {"identities": given},
        "data": data,
        "counts": {source: len(recs) for source, recs in sorted(data.items())},
    }


def _csv(records: list[dict]) -> bytes:
    names = sorted({k for r in records for k in r}, key=lambda k: (k != "collected_at", k))
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(names)
    for rec in records:
        row = []
        for name in names:
            value = rec.get(name)
            row.append(
                ""
                if value is None
                else json.dumps(value)
                if isinstance(value, list | dict)
                else value
            )
        writer.writerow(row)
    return text.getvalue().encode()


def zip_bytes(doc: dict[str, Any]) -> bytes:
    """`portability.json`, `csv/<source>.csv` and `manifest.json` (sha256 of each)."""
    stamp = datetime.fromisoformat(doc["generated_at"]).timetuple()[:6]
    members = {"portability.json": json.dumps(doc, indent=2, sort_keys=True).encode()}
    for source, recs in sorted(doc["data"].items()):
        members[f"csv/{source}.csv"] = _csv(recs)
    manifest = {
        "schema": SCHEMA,
        "files": {n: hashlib.sha256(b).hexdigest() for n, b in sorted(members.items())},
    }
    members["manifest.json"] = json.dumps(manifest, indent=2, sort_keys=True).encode()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, body in members.items():
            zf.writestr(zipfile.ZipInfo(name, date_time=stamp), body, zipfile.ZIP_DEFLATED)
    return buf.getvalue()


# -- delivery ------------------------------------------------------------------------------------


def refs(ctx: JobContext, batch: AccessBatch) -> dict[str, state.RequestRow]:
    """The batch's portability requests that are not completed yet."""
    rows = state.get_requests(ctx.state, [int(r) for r in batch.refs])
    return {
        ref: rows[int(ref)]
        for ref in batch.refs
        if rows[int(ref)].type == TYPE and rows[int(ref)].status != "completed"
    }


def deliver(ctx: JobContext, batch_id: str, *, link_days: int | None = None) -> dict[str, Any]:
    """Deliver every portability request of the batch; counts only (XCom-safe)."""
    if not batch_id:
        return {"portability_delivered": 0, "portability_failed": 0}
    batch = load(ctx.workspace, batch_id, ctx.datamap_hash)
    pending = refs(ctx, batch)
    if not pending:
        return {"portability_delivered": 0, "portability_failed": 0}
    gathered = read_parts(ctx.workspace.s3, ctx.workspace.bucket, batch_id)
    lifetime = link_lifetime(link_days)
    delivered, failed = 0, 0
    for ref, row in pending.items():
        ok = _deliver_one(ctx, batch, ref, row, gathered.get(ref, []), lifetime)
        delivered += ok
        failed += not ok
    return {"portability_delivered": delivered, "portability_failed": failed}


def _deliver_one(
    ctx: JobContext,
    batch: AccessBatch,
    ref: str,
    row: state.RequestRow,
    records: list[dict[str, Any]],
    lifetime: timedelta,
) -> bool:
    s3, bucket = ctx.workspace.s3, ctx.workspace.bucket
    req = batch.requests[ref]
    client_id, request_id = str(req["client_id"]), str(req["request_id"])
    accepted = json.loads(s3.get_object(Bucket=bucket, Key=row.source)["Body"].read())
    endpoint = accepted.get("transfer_to")
    data = provided_records(ctx.datamap, records)
    doc = document(req, batch.given.get(ref, {}), data, batch.created_at)
    now = ctx.now()
    receipt: dict[str, Any] = {
        "request_id": request_id,
        "client_id": client_id,
        "type": TYPE,
        "jurisdiction": req["jurisdiction"],
        "received_at": req["received_at"],
        "response_due": req.get("response_due"),
        "delivered_at": now.isoformat(),
        "batch_id": batch.batch_id,
        "counts": doc["counts"],
        "rules": RULES,
    }
    if endpoint:
        outcome = transfer.post(endpoint, doc, _ref(ctx, client_id, request_id))
        if not outcome.ok:
            _failed(ctx, batch, ref, client_id, request_id, outcome)
            return False
        receipt["delivery"] = {"to": "controller", **outcome.facts()}
    else:
        body = zip_bytes(doc)
        key = export_key(client_id, request_id)
        s3.put_object(
            Bucket=bucket, Key=key, Body=body, ContentType="application/zip", **encryption_args()
        )
        expires = (now + lifetime).isoformat()
        url = presign(s3, bucket, key, lifetime)
        put_json(s3, bucket, link_key(client_id, request_id), {"url": url, "expires_at": expires})
        receipt["delivery"] = {
            "to": "business",
            "key": key,
            "sha256": hashlib.sha256(body).hexdigest(),
            "bytes": len(body),
            "link": link_key(client_id, request_id),
            "link_expires_at": expires,
        }
    put_json(s3, bucket, receipt_key(client_id, request_id), receipt)
    entry = ledger.Entry(
        "portability_delivered",
        _ref(ctx, client_id, request_id),
        {
            "batch": batch.batch_id,
            "receipt": receipt_key(client_id, request_id),
            "to": receipt["delivery"]["to"],
            "counts": doc["counts"],
            "rules": RULES,
        },
        f"portability:{batch.batch_id}:{ref}",
    )
    with ctx.state.begin() as conn:
        ledger.append(conn, ctx.hash_key, [entry])
        state.set_status(conn, [int(ref)], "completed", completed_at=now)
    return True


def _ref(ctx: JobContext, client_id: str, request_id: str) -> str:
    return keyed_hash(ctx.hash_key, "request", f"{client_id}\x1f{request_id}\x1f{TYPE}")


def _failed(
    ctx: JobContext,
    batch: AccessBatch,
    ref: str,
    client_id: str,
    request_id: str,
    outcome: transfer.Outcome,
) -> None:
    """The request stays open (the next access run plans it again); recorded and alerted."""
    s3, bucket = ctx.workspace.s3, ctx.workspace.bucket
    key = attempt_key(client_id, request_id)
    try:
        before = json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    except ClientError:  # the first failure
        before = {"attempts": 0}
    record = {
        "attempts": int(before.get("attempts", 0)) + 1,
        "last_attempt_at": ctx.now().isoformat(),
        "batch_id": batch.batch_id,
        **outcome.facts(),
    }
    put_json(s3, bucket, key, record)
    ledger.append(
        ctx.state,
        ctx.hash_key,
        [
            ledger.Entry(
                "portability_transfer_failed",
                _ref(ctx, client_id, request_id),
                {"batch": batch.batch_id, "attempts": record["attempts"], **outcome.facts()},
                f"portability-failed:{batch.batch_id}:{ref}",
            )
        ],
    )
    log.warning(
        "portability transfer failed (%s); request kept open, attempt %d",
        outcome.code,
        record["attempts"],
    )
    if ctx.channels is not None:
        ctx.channels.alert(
            alerts.Alert(
                subject=f"Portability transfer failed: {client_id}/{request_id}",
                body=(
                    f"The direct transfer to another controller failed ({outcome.code}); the "
                    f"request stays open and the next access run tries again (attempt "
                    f"{record['attempts']}, G3). Details: {key}."
                ),
                kind="portability",
            )
        )
