"""Delivering a batch: a bundle per request, encrypted at rest, an expiring link, a receipt, a
ledger entry, and the request closed (R8-R15, R7, R12).

Per request: read its parts, assemble the report, write the zip to a spooled temporary file,
upload it to `access/<client>/<request_id>/bundle.zip` with server-side encryption
(`outputs.encryption_args`: KMS when COMPLIANCE_KMS_KEY_ID is set, else SSE-S3), presign a GET
link valid for at most 7 days (SigV4's own ceiling, and R12's "expiring"), and write the link
beside the bundle (`link.json`) for the business to pick up. The receipt
(`receipts/<client>/<request_id>.access.json`) names the object, its checksum and the link's
expiry but not the link, which is a bearer credential; the ledger holds keyed hashes and counts
only.

Rerun = converge: requests already completed are skipped; the others are rebuilt from the stored
batch and parts into the same bytes (same `generated_at`), receipts are overwritten with the same
content, ledger entries carry idempotency keys. Only when every request is delivered are the
requests closed, the batch finished and the identities (accepted documents, targets, parts)
deleted.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

from botocore.exceptions import ClientError

from compliance.access import bundle, disclosure, gather, report
from compliance.access.batch import AccessBatch, load, targets_key
from compliance.core import ledger
from compliance.core.context import JobContext
from compliance.core.datamap.model import DataMap, RecordingStore
from compliance.core.hashing import keyed_hash
from compliance.core.outputs import THREADS, delete_many, encryption_args, put_json, put_summary
from compliance.core.stores.s3 import list_keys
from compliance.requests import state
from compliance.requests.request_records import receipt_fields as request_record_fields

log = logging.getLogger(__name__)

ACCESS = "access/"
RECEIPTS = "receipts/"
DEFAULT_LINK_DAYS = 7
MAX_LINK_DAYS = 7  # SigV4 presigned URLs cannot outlive 7 days; R12 asks for expiring links
SPOOL_BYTES = 32 << 20


class LinkExpiryRefused(ValueError):
    """The requested link lifetime is outside 1..7 days (R12)."""

    reason = "link_expiry_out_of_range"


class LinkNotBounded(RuntimeError):
    """The S3 client presigned a link without an X-Amz-Expires bound (not SigV4)."""

    reason = "link_not_sigv4"


def link_lifetime(days: int | None) -> timedelta:
    """A whole number of days in 1..7, as a timedelta (R12); anything else is refused."""
    days = DEFAULT_LINK_DAYS if days is None else days
    if isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= MAX_LINK_DAYS:
        raise LinkExpiryRefused(
            f"a download link must expire within 1 to {MAX_LINK_DAYS} days (R12)"
        )
    return timedelta(days=days)


def bundle_key(client_id: str, request_id: str) -> str:
    return f"{ACCESS}{client_id}/{request_id}/bundle.zip"


def link_key(client_id: str, request_id: str) -> str:
    return f"{ACCESS}{client_id}/{request_id}/link.json"


def receipt_key(client_id: str, request_id: str) -> str:
    return f"{RECEIPTS}{client_id}/{request_id}.access.json"


def presign(s3: Any, bucket: str, key: str, lifetime: timedelta) -> str:
    """A GET link for `key`, checked to carry its own bounded expiry (SigV4 X-Amz-Expires)."""
    seconds = int(lifetime.total_seconds())
    url = s3.generate_presigned_url(
        "get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=seconds
    )
    expires = parse_qs(urlsplit(url).query).get("X-Amz-Expires", [""])[0]
    if not expires.isdigit() or int(expires) > MAX_LINK_DAYS * 86400:
        raise LinkNotBounded("the S3 client must sign with SigV4 (signature_version='s3v4')")
    return url


@dataclass(frozen=True)
class Delivered:
    ref: str
    receipt: dict[str, Any]
    entry: ledger.Entry


@dataclass(frozen=True)
class _Delivery:
    """What every bundle of one batch shares: the context, the batch, one clock reading (every
    receipt of the batch says the same `delivered_at`), the link lifetime and the policy."""

    ctx: JobContext
    batch: AccessBatch
    now: datetime
    lifetime: timedelta
    policy: Any


def build_bundles(
    ctx: JobContext, batch_id: str, *, link_days: int | None = DEFAULT_LINK_DAYS
) -> dict[str, Any]:
    """Deliver every request of the batch, then close it; return the run's summary (counts)."""
    s3, bucket = ctx.workspace.s3, ctx.workspace.bucket
    now = ctx.now()
    lifetime = link_lifetime(link_days)
    if not batch_id:
        summary = {"batch_id": "", "delivered": 0, "repeats_flagged": 0}
        put_summary(s3, bucket, "access_reports", summary)
        return summary
    batch = load(ctx.workspace, batch_id, ctx.datamap_hash)
    policy = disclosure.load_policy(ctx.settings.retention_path, ctx.datamap)
    rows = state.get_requests(ctx.state, [int(r) for r in batch.refs])
    pending = [ref for ref in batch.refs if rows[int(ref)].status != "completed"]
    skipped = len(batch.refs) - len(pending)  # delivered by an earlier attempt of this batch

    gathered = gather.read_parts(s3, bucket, batch_id)
    run = _Delivery(ctx, batch, now, lifetime, policy)

    def deliver(ref: str) -> Delivered:
        return _deliver_one(run, ref, gathered.get(ref, []), rows[int(ref)])

    with ThreadPoolExecutor(max_workers=THREADS) as pool:  # a dozen S3 round trips per bundle
        delivered = list(pool.map(deliver, pending))
    with ctx.state.begin() as conn:  # entries, completed requests and batch: all or nothing
        ledger.append(conn, ctx.hash_key, [d.entry for d in delivered])
        state.set_status(conn, [int(d.ref) for d in delivered], "completed", completed_at=now)
        state.finish_batch(conn, batch_id, finished_at=now)
    _forget(s3, bucket, batch, rows)
    summary = {
        "batch_id": batch_id,
        "delivered": len(delivered),
        "already_delivered": skipped,
        "records": sum(sum(d.receipt["counts"].values()) for d in delivered),
        "withheld_fields": sum(len(d.receipt["withheld"]) for d in delivered),
        "repeats_flagged": sum(1 for d in delivered if d.receipt["repeat"]["flagged"]),
        "link_expiry_days": lifetime.days,
        "bundles": f"s3://{bucket}/{ACCESS}",
        "receipts": f"s3://{bucket}/{RECEIPTS}",
    }
    put_summary(s3, bucket, "access_reports", summary)
    log.info("access batch %s: %d bundle(s) delivered", batch_id, len(delivered))
    return summary


def _deliver_one(
    run: _Delivery,
    ref: str,
    records: list[dict[str, Any]],
    row: state.RequestRow | None = None,
) -> Delivered:
    """One request's bundle, link, receipt and (returned) ledger entry."""
    s3, bucket = run.ctx.workspace.s3, run.ctx.workspace.bucket
    dm, store_clients, hash_key = run.ctx.datamap, run.ctx.stores, run.ctx.hash_key
    batch, now, lifetime, policy = run.batch, run.now, run.lifetime, run.policy
    req = batch.requests[ref]
    client_id, request_id = str(req["client_id"]), str(req["request_id"])
    if batch.categories_only(ref):  # R5: verified for categories only; nothing was gathered
        records, recordings, audio = [], {}, []
        body = report.assemble_categories(
            dm,
            req,
            retention=disclosure.retention_lines(policy, dm, client_id),
            generated_at=datetime.fromisoformat(batch.created_at),
        )
    else:
        recordings, audio = _recordings(dm, store_clients, records, batch.include_audio)
        body = report.assemble(
            dm,
            req,
            batch.given.get(ref, {}),
            records,
            retention=disclosure.retention_lines(policy, dm, client_id),
            generated_at=datetime.fromisoformat(batch.created_at),
            recordings=recordings,
        )
    key = bundle_key(client_id, request_id)
    with tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES) as spool:
        info = bundle.write_bundle(spool, body, audio=audio)
        s3.upload_fileobj(
            spool,
            bucket,
            key,
            ExtraArgs={
                "ContentType": "application/zip",
                "Metadata": {"sha256": info.sha256, "batch": batch.batch_id},
                **encryption_args(),
            },
        )
    url = presign(s3, bucket, key, lifetime)
    expires_at = (now + lifetime).isoformat()
    put_json(
        s3,
        bucket,
        link_key(client_id, request_id),
        {
            "request_id": request_id,
            "client_id": client_id,
            "url": url,
            "expires_at": expires_at,
            "sha256": info.sha256,
            "rule": "R12",
        },
    )
    counts: dict[str, int] = {}
    for src in body["sources"]:
        counts[src["source"]] = len(src["records"])
    receipt = {
        "request_id": request_id,
        "client_id": client_id,
        "type": "access",
        "jurisdiction": req["jurisdiction"],
        "look_back": req.get("look_back"),
        "received_at": req["received_at"],
        "response_due": req.get("response_due"),
        "delivered_at": now.isoformat(),
        "batch_id": batch.batch_id,
        "window": {"since": req["since"], "until": req["until"]},
        "bundle": {
            "key": key,
            "sha256": info.sha256,
            "bytes": info.size,
            "files": len(info.files) + 1,
            "encryption": encryption_args()["ServerSideEncryption"],
            "link": link_key(client_id, request_id),
            "link_expires_at": expires_at,
        },
        "counts": counts,
        "categories": [c["category"] for c in body["categories"]],
        "withheld": sorted({w["field"] for w in body["withheld"]}),
        "recordings": {
            "rows": len(body["recordings"]),
            "audio_included": sum(1 for a in body["recordings"] if a["file"]),
        },
        "not_searched": [n["store"] for n in body["not_searched"]],
        "scope": body["scope"]["level"],  # R5: "categories" = the categories page only
        "repeat": req["repeat"],
        **(request_record_fields(row) if row is not None else {}),  # R1, R5, R24; R7 links
        "rules": ["R7", "R8", "R9", "R10", "R12", "R13", "R15"]
        + (["G2"] if req["jurisdiction"] == "gdpr" else []),
    }
    if batch.categories_only(ref):
        receipt["rules"] = ["R5", *receipt["rules"]]
    rkey = receipt_key(client_id, request_id)
    put_json(s3, bucket, rkey, receipt)
    entry = ledger.Entry(
        "access_delivered",
        keyed_hash(hash_key, "request", f"{client_id}\x1f{request_id}\x1faccess"),
        {
            "batch": batch.batch_id,
            "receipt": rkey,
            "bundle_sha256": info.sha256,
            "counts": counts,
            "withheld_fields": len(receipt["withheld"]),
            "repeat_flagged": bool(req["repeat"]["flagged"]),
            "link_expires_at": expires_at,
            "rules": receipt["rules"],
        },
        f"access:{batch.batch_id}:{ref}",
    )
    return Delivered(ref, receipt, entry)


def _recordings(
    dm: DataMap, store_clients: Mapping[str, Any], records: list[dict[str, Any]], include: bool
) -> tuple[dict[tuple[str, str], dict[str, Any]], list[bundle.Audio]]:
    """Which recordings go into the bundle, under names we assign (never the stored key)."""
    stores = {
        f"{s.system}.{s.table}": (name, s)
        for name, s in dm.stores.items()
        if isinstance(s, RecordingStore)
    }
    status: dict[tuple[str, str], dict[str, Any]] = {}
    audio: list[bundle.Audio] = []
    rows = sorted(
        (r for r in records if r["source"] in stores),
        key=lambda r: (r["source"], str(r["record"])),
    )
    for rec in rows:
        ident = (rec["source"], str(rec["record"]))
        obj = rec.get("object")
        if not include or not obj:
            status[ident] = {"file": None, "status": "not_requested" if obj else "no_audio"}
            continue
        name, store = stores[rec["source"]]
        client = store_clients[name]
        try:
            client.head_object(Bucket=store.bucket, Key=obj)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in {"404", "NoSuchKey", "NotFound"}:
                status[ident] = {"file": None, "status": "missing"}
                continue
            raise
        member = bundle.recording_name(len(audio) + 1, obj)
        status[ident] = {"file": member, "status": "included"}
        audio.append(
            bundle.Audio(
                member,
                lambda c=client, b=store.bucket, k=obj: c.get_object(Bucket=b, Key=k)["Body"],
            )
        )
    return status, audio


def _forget(s3: Any, bucket: str, batch: AccessBatch, rows: dict[int, state.RequestRow]) -> None:
    """After delivery only keyed hashes remain: the accepted documents, the batch's targets and
    its parts (which hold identities and data) are deleted (R20's minimal record)."""
    accepted = [rows[int(ref)].source for ref in batch.refs]
    delete_many(s3, bucket, [k for k in accepted if k.startswith("accepted/")])
    parts = [o["Key"] for o in list_keys(s3, bucket, gather.parts_prefix(batch.batch_id))]
    delete_many(s3, bucket, parts)
    s3.delete_object(Bucket=bucket, Key=targets_key(batch.batch_id))


def receipt(s3: Any, bucket: str, client_id: object, request_id: str) -> dict[str, Any]:
    """A delivered request's receipt (for staff tools and tests)."""
    key = receipt_key(str(client_id), request_id)
    body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    return json.loads(body)
