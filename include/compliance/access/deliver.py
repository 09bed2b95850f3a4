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
from compliance.core import ledger, workspace_layout
from compliance.core.context import JobContext
from compliance.core.datamap.model import DataMap, RecordingStore
from compliance.core.hashing import keyed_hash
from compliance.core.outputs import THREADS, delete_many, encryption_args, put_json, put_summary
from compliance.core.stores.s3 import list_keys
from compliance.core.workspace_layout import ACCESS, RECEIPTS
from compliance.requests import state
from compliance.requests.request_records import receipt_fields as request_record_fields

log = logging.getLogger(__name__)

DEFAULT_LINK_DAYS = 7
MAX_LINK_DAYS = 7  # SigV4 presigned URLs cannot outlive 7 days; R12 asks for expiring links
SPOOL_BYTES = 32 << 20
PORTABILITY = "portability"  # G3: request type delivered by `access.portability`


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
    return workspace_layout.bundle_key(client_id, request_id)


def link_key(client_id: str, request_id: str) -> str:
    return workspace_layout.link_key(client_id, request_id)


def receipt_key(client_id: str, request_id: str) -> str:
    return workspace_layout.receipt_key(client_id, request_id, "access")


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
    # portability requests (G3) are delivered by `access.portability`, before this runs
    pending = [
        ref
        for ref in batch.refs
        if rows[int(ref)].status != "completed" and rows[int(ref)].type != PORTABILITY
    ]
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
    # a portability request whose transfer failed stays open with its document (G3)
    _forget(s3, bucket, batch, {k: r for k, r in rows.items() if not _transfer_pending(r)})
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
        recordings, audio = _recordings(
            dm,
            store_clients,
            records,
            batch.include_audio,
            limit=run.ctx.settings.access_audio_link_bytes,
            link=lambda member, client, src_bucket, obj: _audio_link(
                run, client_id, request_id, member, client, src_bucket, obj
            ),
        )
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
            "audio_linked": sum(1 for a in body["recordings"] if a["status"] == "linked"),
            "audio_left_out": sum(1 for a in body["recordings"] if a["status"] == "not_requested"),
        },
        "not_searched": [n["store"] for n in body["not_searched"]],
        "scope": body["scope"]["level"],  # R5: "categories" = the categories page only
        "repeat": req["repeat"],
        **(request_record_fields(row) if row is not None else {}),  # R1, R5, R24; R7 links
        # R14: the parts withheld or denied, by kind (counts and types only; the bundle says why)
        "partial_denial": [d["part"] for d in body["partial_denial"]],
        "withheld_in_text": {f["type"]: f["values"] for f in body["withheld_in_text"]},
        "rules": ["R7", "R8", "R9", "R10", "R12", "R13", "R14", "R15"]
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


def audio_key(client_id: str, request_id: str, member: str) -> str:
    """A recording too large for the zip, beside the bundle: the request's folder, whose
    retention rule removes it with the bundle (`workspace_layout`)."""
    return f"{workspace_layout.bundle_prefix(client_id, request_id)}{member}"


def _audio_link(
    run: _Delivery,
    client_id: str,
    request_id: str,
    member: str,
    client: Any,
    src_bucket: str,
    obj: str,
) -> dict[str, Any]:
    """Copy one large recording next to the bundle (encrypted, streamed) and presign it with
    the bundle's lifetime (R12): the consumer downloads it separately, the zip stays small."""
    s3, bucket = run.ctx.workspace.s3, run.ctx.workspace.bucket
    key = audio_key(client_id, request_id, member)
    body = client.get_object(Bucket=src_bucket, Key=obj)["Body"]
    s3.upload_fileobj(body, bucket, key, ExtraArgs={**encryption_args()})
    return {
        "link": presign(s3, bucket, key, run.lifetime),
        "link_expires_at": (run.now + run.lifetime).isoformat(),
    }


def _recordings(
    dm: DataMap,
    store_clients: Mapping[str, Any],
    records: list[dict[str, Any]],
    include: bool,
    *,
    limit: int | None = None,
    link: Any = None,
) -> tuple[dict[tuple[str, str], dict[str, Any]], list[bundle.Audio]]:
    """Which recordings go into the bundle, under names we assign (never the stored key).

    R8: the audio is a specific piece, so it is included unless the run opts out
    (`not_requested`, which the report's R14 section states). A file above `limit` bytes is
    not put in the zip: `link(member, client, bucket, key)` copies it beside the bundle and
    returns its expiring link (`linked`). The voiceprint column stays withheld (R10)."""
    stores = {
        f"{s.system}.{s.table}": (name, s)
        for name, s in dm.stores.items()
        if isinstance(s, RecordingStore)
    }
    status: dict[tuple[str, str], dict[str, Any]] = {}
    audio: list[bundle.Audio] = []
    number = 0  # linked and included recordings share one numbering
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
            head = client.head_object(Bucket=store.bucket, Key=obj)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in {"404", "NoSuchKey", "NotFound"}:
                status[ident] = {"file": None, "status": "missing"}
                continue
            raise
        size = int(head.get("ContentLength") or 0)
        number += 1
        member = bundle.recording_name(number, obj)
        if limit is not None and link is not None and size > limit:
            status[ident] = {
                "file": None,
                "status": "linked",
                "bytes": size,
                **link(member, client, store.bucket, obj),
            }
            continue
        status[ident] = {"file": member, "status": "included", "bytes": size}
        audio.append(
            bundle.Audio(
                member,
                lambda c=client, b=store.bucket, k=obj: c.get_object(Bucket=b, Key=k)["Body"],
            )
        )
    return status, audio


def _transfer_pending(row: state.RequestRow) -> bool:
    """A portability request not delivered (its transfer failed): planned again, so its
    accepted document must stay (G3)."""
    return row.type == PORTABILITY and row.status != "completed"


def _forget(s3: Any, bucket: str, batch: AccessBatch, rows: dict[int, state.RequestRow]) -> None:
    """After delivery only keyed hashes remain: the accepted documents, the batch's targets and
    its parts (which hold identities and data) are deleted (R20's minimal record)."""
    accepted = [rows[int(ref)].source for ref in batch.refs if int(ref) in rows]
    delete_many(s3, bucket, [k for k in accepted if k.startswith("accepted/")])
    parts = [o["Key"] for o in list_keys(s3, bucket, gather.parts_prefix(batch.batch_id))]
    delete_many(s3, bucket, parts)
    s3.delete_object(Bucket=bucket, Key=targets_key(batch.batch_id))


def receipt(s3: Any, bucket: str, client_id: object, request_id: str) -> dict[str, Any]:
    """A delivered request's receipt (for staff tools and tests)."""
    key = receipt_key(str(client_id), request_id)
    body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    return json.loads(body)
