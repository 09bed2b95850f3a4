"""Which workspace objects the desk lists and opens (issue 18, item 2): receipts and reports,
newest first, read through the api-server behind Airflow's login, never through a public or
presigned S3 link.

Why a whitelist of areas (`compliance.core.workspace_layout`): the same bucket holds the inbox,
accepted documents, batch targets and access bundles, all full of identities. The viewer opens
only keys that an area without personal data claims (receipts, dry runs, summaries, retention,
inventory, statistics, deadline and offboarding reports), plus an access bundle for a role that
may see identities (each such opening is ledgered by the caller). A key must be a plain key:
no `..` or `.` segment, no empty segment, no leading slash, no backslash or control character,
so a crafted key cannot name another area's object even where a pattern would let it through.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from compliance.core import workspace_layout as layout
from compliance.core.context import JobContext

RECEIPT_AREAS = ("receipts",)
REPORT_AREAS = (
    "dry_runs",
    "summaries",
    "retention_reports",
    "inventory",
    "stats",
    "deadlines",
    "offboarding_reports",
)
IDENTITY_AREAS = ("bundles",)  # only the bundle itself, never its download link (a bearer URL)
SCAN_CAP = 5000  # keys listed per area at most before sorting (a page of S3 holds 1000)
_BAD = re.compile(r"[\x00-\x1f\x7f\\]")
MEDIA = {
    ".json": "application/json",
    ".csv": "text/csv; charset=utf-8",
    ".txt": "text/plain; charset=utf-8",
    ".md": "text/plain; charset=utf-8",
    ".html": "text/html; charset=utf-8",
    ".zip": "application/zip",
}


class Refused(ValueError):
    """The key is not one the desk opens (another area, or not a plain key)."""


@dataclass(frozen=True)
class Listed:
    key: str
    area: str
    size: int
    modified: datetime


def area_for(key: str, identities: bool = False) -> str:
    """The area name of a key the desk may open; raises `Refused` otherwise. `identities`: the
    caller's role may see identities (an access bundle then opens too)."""
    if not key or len(key) > 1024 or _BAD.search(key) or key.startswith("/"):
        raise Refused("not a plain workspace key")
    if any(part in ("", ".", "..") for part in key.split("/")):
        raise Refused("not a plain workspace key")
    area = layout.area_of(key)
    allowed = RECEIPT_AREAS + REPORT_AREAS + (IDENTITY_AREAS if identities else ())
    if area is None or area.name not in allowed:
        raise Refused("not a receipt or a report")
    if area.name == "bundles" and not key.endswith("/" + layout.BUNDLE):
        raise Refused("only the bundle itself opens here")
    return area.name


def media_type(key: str) -> str:
    for suffix, media in MEDIA.items():
        if key.endswith(suffix):
            return media
    return "application/octet-stream"


def _listing(s3: Any, bucket: str, prefix: str, cap: int) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    kwargs: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix}
    while len(out) < cap:
        page = s3.list_objects_v2(**kwargs)
        out += page.get("Contents", [])
        if not page.get("IsTruncated"):
            break
        kwargs["ContinuationToken"] = page["NextContinuationToken"]
    return out[:cap]


def recent(ctx: JobContext, limit: int = 20, scan: int = SCAN_CAP) -> dict[str, list[Listed]]:
    """The newest receipts and the newest reports (each list capped at `limit`). Keys no
    listed area claims exactly are left out (the prefix alone is not enough)."""
    ws = ctx.workspace
    out: dict[str, list[Listed]] = {}
    for label, names in (("receipts", RECEIPT_AREAS), ("reports", REPORT_AREAS)):
        found: list[Listed] = []
        for prefix in sorted({layout.BY_NAME[n].prefix for n in names}):
            for obj in _listing(ws.s3, ws.bucket, prefix, scan):
                area = layout.area_of(obj["Key"])
                if area is not None and area.name in names:
                    found.append(
                        Listed(obj["Key"], area.name, int(obj["Size"]), obj["LastModified"])
                    )
        found.sort(key=lambda o: (o.modified, o.key), reverse=True)
        out[label] = found[:limit]
    return out


def receipts_of(ctx: JobContext, client_id: str, request_id: str) -> list[str]:
    """The receipt keys of one request (any type), as the runs wrote them."""
    ws = ctx.workspace
    prefix = f"{layout.RECEIPTS}{client_id}/{request_id}."
    return sorted(o["Key"] for o in _listing(ws.s3, ws.bucket, prefix, 100))


def open_object(ctx: JobContext, key: str) -> tuple[Any, int] | None:
    """The object's streaming body and its length, or None when it does not exist."""
    ws = ctx.workspace
    try:
        obj = ws.s3.get_object(Bucket=ws.bucket, Key=key)
    except ws.s3.exceptions.NoSuchKey:
        return None
    return obj["Body"], int(obj.get("ContentLength", 0))
