"""Expiring the jobs' own copies: areas of the workspace bucket (R27, issue 16).

A workspace rule (`workspace: rejected`, docs/retention.md) names an area of
`core.workspace_layout`. Its sweep, like a store rule's, is planned by listing and carried out
from that plan (`plan_area` then `expire_area`, with the same inputs), so the dry run says
exactly what goes:

- an object older than the period goes, **every version** of it (the workspace bucket may be
  versioned; a plain DELETE would leave the data behind a marker). Age counts from the object's
  write time, or for access bundles from their download link's expiry (`link.json`'s
  `expires_at`; without one, the longest lifetime a link can have after the bundle was written),
  and a bundle's folder (bundle, link, anything delivered beside them) goes together;
- versions left behind a delete marker (a job deleted the object in a versioned bucket) go at
  once, whatever their age: they are copies nobody can reach but S3;
- live work stays, whatever its age: an accepted document or a held memory whose request is
  still open, deferred or partial; a planned batch's targets and parts; a notice not yet final.
  What is live is read from the state database once per plan.

Idempotent: a rerun lists again and finds nothing old left. Only keys and counts leave this
module, never object contents. `workspace_rule_issues` is the policy check of such a rule
(`policy_checks` calls it).
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from botocore.exceptions import ClientError
from sqlalchemy import Engine

from compliance.core import checkpoints, workspace_layout
from compliance.core.stores.s3 import delete_versions
from compliance.core.workspace_layout import Area
from compliance.deletion.outbox.parties import OPEN as OPEN_NOTICES
from compliance.retention.policy import Action, Rule

log = logging.getLogger(__name__)

ACTIONABLE = ("open", "deferred", "partial")  # a request still being worked on
Version = tuple[str, str]


@dataclass
class AreaPlan:
    """What one workspace rule will delete: (key, version) pairs, so execution is exactly this."""

    area: str
    bucket: str
    cutoff: str  # objects aged before this moment (naive UTC) are expired
    expired: list[str] = field(default_factory=list)  # keys (current objects) that expire
    delete: list[Version] = field(default_factory=list)  # every version of them
    leftovers: list[Version] = field(default_factory=list)  # versions behind delete markers
    live: int = 0  # current objects kept because their request, batch or notice is live
    young: int = 0  # current objects inside their period
    missing: bool = False

    def counts(self) -> dict[str, int]:
        """Like a table rule's: what goes, and what is kept (`held`: live work); a rerun's
        counts are all zero but `held`."""
        out = {
            "objects": len(self.expired),
            "delete_versions": len(self.delete),
            "leftover_versions": len(self.leftovers),
            "held": self.live,
        }
        if self.missing:
            out["missing_bucket"] = 1
        return out


def workspace_rule_issues(loc: str, rule: Rule) -> Iterator[tuple[str, str, str]]:
    """A workspace rule names a registered area, deletes, and counts from what the area ages by
    (bundles: their download link's expiry, so the period is the grace after it)."""
    name = f"rule {rule.id!r}"
    area = workspace_layout.BY_NAME.get(rule.workspace or "")
    if area is None:
        known = ", ".join(a.name for a in workspace_layout.AREAS)
        yield (
            f"{loc}.workspace",
            "target",
            f"{name}: {rule.workspace!r} is not an area of the workspace bucket (areas: {known})",
        )
        return
    if rule.action is not Action.delete:
        yield (f"{loc}.action", "action", f"{name}: workspace objects can only be deleted")
    if rule.overrides:
        yield (
            f"{loc}.overrides",
            "action",
            f"{name}: per-client overrides do not apply to workspace areas",
        )
    if area.live == "always":
        yield (
            f"{loc}.workspace",
            "action",
            f"{name}: {area.name!r} is live work that its job empties on every run, so no period "
            "can expire it: exempt it with that reason instead",
        )
    if rule.after is not None and rule.after != area.ages_by:
        yield (
            f"{loc}.after",
            "action",
            f"{name}: {area.name!r} objects are aged by {area.ages_by!r}, not {rule.after!r}"
            + (
                " (a bundle stays until its download link expires, R12; the period is the grace "
                "after that)"
                if area.ages_by == "link_expiry"
                else ""
            ),
        )


def live_keys(state: Engine | None) -> dict[str, set[str]]:
    """From the state DB: what each `live` kind keeps (keys, batch ids, notice keys)."""
    out: dict[str, set[str]] = {"request": set(), "batch": set(), "notice": set()}
    if state is None:
        return out
    inspector = sa.inspect(state)
    from compliance.requests.state import cj_batches, cj_notices, cj_requests

    with state.connect() as conn:
        if inspector.has_table("cj_requests"):
            t = cj_requests
            q = sa.select(t.c.client_id, t.c.request_id, t.c.source).where(
                t.c.status.in_(ACTIONABLE)
            )
            for client, request_id, source in conn.execute(q):
                out["request"].add(str(source))
                out["request"].add(workspace_layout.held_key(str(client), request_id))
        if inspector.has_table("cj_batches"):
            q = sa.select(cj_batches.c.batch_id).where(cj_batches.c.status == "planned")
            out["batch"] = {str(b) for b in conn.execute(q).scalars()}
        if inspector.has_table("cj_notices"):
            n = cj_notices
            q = sa.select(n.c.request_pk, n.c.subprocessor).where(n.c.status.in_(OPEN_NOTICES))
            out["notice"] = {workspace_layout.notice_key(pk, name) for pk, name in conn.execute(q)}
    return out


def _is_live(area: Area, key: str, live: dict[str, set[str]]) -> bool:
    if area.live == "always":
        return True
    if area.live == "batch":
        batch_id = key[len(workspace_layout.BATCHES) :].split("/", 1)[0]
        return batch_id in live["batch"]
    if area.live in ("request", "notice"):
        return key in live[area.live]
    return False


def plan_area(
    s3: Any,
    bucket: str,
    area: Area,
    rule: Rule,
    as_of: date,
    live: dict[str, set[str]],
) -> AreaPlan:
    """List the expired objects of one area (reads only)."""
    cutoff = rule.period.cutoff(as_of)
    plan = AreaPlan(area.name, bucket, cutoff.isoformat())
    try:
        versions = list(_versions(s3, bucket, area.prefix))
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in {"404", "NoSuchBucket"}:
            plan.missing = True
            return plan
        raise
    by_key: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for item in versions:
        if area.matches(item["Key"]):
            by_key[item["Key"]].append(item)
    units: dict[str, list[str]] = defaultdict(list)
    for key, items in sorted(by_key.items()):
        latest = max(items, key=lambda i: (i["IsLatest"], i["LastModified"]))
        if latest["marker"]:  # deleted by its job: what is behind the marker goes now
            plan.leftovers += [(i["Key"], i["VersionId"]) for i in items]
        else:
            units[area.unit(key)].append(key)
    for unit, keys in sorted(units.items()):
        if any(_is_live(area, k, live) for k in keys):
            plan.live += len(keys)
            continue
        if _aged(s3, bucket, area, unit, keys, by_key) < cutoff:
            plan.expired += keys
            plan.delete += [(i["Key"], i["VersionId"]) for k in keys for i in by_key[k]]
        else:
            plan.young += len(keys)
    return plan


def expire_area(s3: Any, plan: AreaPlan) -> dict[str, int]:
    """Carry out `plan`; returns what was done (the plan's count keys)."""
    done = plan.counts()
    done["delete_versions"] = delete_versions(s3, plan.bucket, plan.delete)
    checkpoints.reached("retention.after_workspace_expired", area=plan.area)
    done["leftover_versions"] = delete_versions(s3, plan.bucket, plan.leftovers)
    log.info(
        "workspace %s: %d object(s) expired (%d version(s)), %d leftover version(s) deleted",
        plan.area,
        len(plan.expired),
        done["delete_versions"],
        done["leftover_versions"],
    )
    return done


def _aged(
    s3: Any,
    bucket: str,
    area: Area,
    unit: str,
    keys: list[str],
    by_key: dict[str, list[dict[str, Any]]],
) -> datetime:
    """The moment a unit's period counts from (naive UTC): its newest write, or its link's
    expiry for bundles."""
    written = max(_naive(i["LastModified"]) for k in keys for i in by_key[k] if i["IsLatest"])
    if area.ages_by != "link_expiry":
        return written
    # `link.json` (bundles, exports) or `<name>.link.json` (a portability export beside them):
    # the folder goes once the last of its links has expired
    expiries = []
    for link in (k for k in keys if k.endswith(workspace_layout.LINK)):
        try:
            doc = json.loads(s3.get_object(Bucket=bucket, Key=link)["Body"].read())
            expiries.append(_naive(datetime.fromisoformat(str(doc["expires_at"]))))
        except (ValueError, KeyError, TypeError):
            expiries.append(written + timedelta(days=workspace_layout.LINK_MAX_DAYS))
    if expiries:
        return max(expiries)
    return written + timedelta(days=workspace_layout.LINK_MAX_DAYS)  # the longest a link lives


def _naive(moment: datetime) -> datetime:
    if moment.tzinfo is None:
        return moment
    return moment.astimezone(UTC).replace(tzinfo=None)


def _versions(s3: Any, bucket: str, prefix: str):
    """Every version and delete marker under `prefix` (also in an unversioned bucket, where
    each object is one version, `null`)."""
    for page in s3.get_paginator("list_object_versions").paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Versions", []):
            yield {**item, "marker": False}
        for item in page.get("DeleteMarkers", []):
            yield {**item, "marker": True}
