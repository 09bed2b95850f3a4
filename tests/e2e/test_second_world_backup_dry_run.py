"""The deletion dry run on the second world's `rewrite: true` backups (issue 16; R16, R18).

The second world (string tenants, UUID keys, rows three relations below the consumer), its
backup store switched to `rewrite: true` as in test_second_world_backup_rewrite.py, and the
deletion job run task for task as a dry run (`compliance.jobs.deletion`, intake in dry-run
mode). The world's ground truth (who owns each snapshot row, read with `csv`) says how many rows
each request would lose; the report must say the same per request, and nothing may change: every
object version of every bucket, every table of the CRM and of the state database.
"""

from __future__ import annotations

import hashlib
import json
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from tests.e2e import test_second_world_backup_rewrite as rewrite_test
from tests.e2e.test_second_world_backup_rewrite import (
    NOW,
    WORKSPACE,
    _records,
    _snapshots,
    _tables,
)
from tests.second_world import generate
from tests.second_world.requests import document, drop

pytestmark = pytest.mark.slow
OWN_OUTPUTS = ("deletion/dry-runs/", "summaries/")
w2 = rewrite_test.w2  # the second world with `rewrite: true` (a fixture)


def _dry_run() -> dict[str, Any]:
    """dags/deletion_requests.py, task for task, as a manual run with dry run on."""
    from compliance import runtime
    from compliance.jobs import deletion as job

    def ctx():
        return runtime.context(lambda: NOW)

    out: dict[str, Any] = {}
    intake = job.intake(ctx(), {}, dry_run=True)
    batch = out["plan"] = job.plan(ctx(), intake, {})
    assert batch["systems"] == [] and batch["recordings"] == []  # a dry run erases nothing
    scanned = [job.scrub_logs(ctx(), batch, shard) for shard in batch["shards"]]
    for store in batch["backups"]:
        out[store] = job.tombstone_backups(ctx(), batch, store)
    job.notify_subprocessors(ctx(), batch)
    out["finalize"] = job.finalize(ctx(), batch, scanned)
    return out


def _everything(s3: Any, db_url: str, state_url: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for b in s3.list_buckets().get("Buckets", []):
        bucket = b["Name"]
        for page in s3.get_paginator("list_object_versions").paginate(Bucket=bucket):
            for v in page.get("Versions", []):
                if bucket == WORKSPACE and v["Key"].startswith(OWN_OUTPUTS):
                    continue
                body = s3.get_object(Bucket=bucket, Key=v["Key"], VersionId=v["VersionId"])
                out[f"{bucket}/{v['Key']}@{v['VersionId']}"] = hashlib.sha256(
                    body["Body"].read()
                ).hexdigest()
            for d in page.get("DeleteMarkers", []):
                out[f"{bucket}/{d['Key']}@{d['VersionId']}"] = "delete marker"
    for url in (db_url, state_url):
        eng = sa.create_engine(url)
        md = sa.MetaData()
        md.reflect(eng)
        with eng.connect() as c:
            for t in md.tables.values():
                out[f"{url}:{t.name}"] = sorted(repr(tuple(r)) for r in c.execute(sa.select(t)))
        eng.dispose()
    return out


def test_dry_run_reports_each_requests_rows_and_changes_nothing(w2, s3, tmp_path):
    world, db_url = w2
    state_url = f"sqlite:///{tmp_path / 'state.db'}"
    twin, deep, uni = world.person("twin_01"), world.person("deep"), world.person("unicode")
    received = NOW - timedelta(days=1)
    people = {"DEL-TWIN": twin, "DEL-DEEP": deep, "DEL-UNI": uni}
    docs = [
        document("DEL-TWIN", "01", "delete", received, email=twin.primary_email.upper()),
        document("DEL-DEEP", deep.org, "delete", received, email=deep.primary_email),
        document("DEL-UNI", uni.org, "delete", received, email=uni.primary_email),
    ]
    drop(s3, WORKSPACE, docs, "deletion")

    pks = {t.name: [c.name for c in t.primary_key.columns] for t in _tables(db_url)}
    owner_of = {p.uuid: rid for rid, p in people.items()}
    truth: dict[str, int] = dict.fromkeys(people, 0)
    for key, data in sorted(_snapshots(s3).items()):
        table = key.rsplit("/", 1)[1].removesuffix(".csv.gz")
        recs = _records(data)
        header = recs[0][1]
        for _, fields in recs[1:]:
            row = dict(zip(header, fields, strict=True))
            found = world.rows.get((table, tuple(row[c] for c in pks.get(table, []))))
            if found is not None and found.owner in owner_of:
                truth[owner_of[found.owner]] += 1
    assert all(truth.values()), truth

    from compliance import runtime

    runtime.context(lambda: NOW)  # the state schema exists before the "before" picture
    before = _everything(s3, db_url, state_url)
    out = _dry_run()
    assert generate.BACKUPS in out["plan"]["backups"]
    assert _everything(s3, db_url, state_url) == before

    (key,) = [
        o["Key"]
        for o in s3.list_objects_v2(Bucket=WORKSPACE, Prefix="deletion/dry-runs/")["Contents"]
        if o["Key"].endswith("report.json")
    ]
    doc = json.loads(s3.get_object(Bucket=WORKSPACE, Key=key)["Body"].read())
    got = {
        r["request_id"]: r["counts"].get(generate.BACKUPS, {}).get("rows", 0)
        for r in doc["requests"]
    }
    assert got == truth  # per request, the twin in the other tenant ("1") not counted
    (entry,) = [b for b in doc["backups"] if b["store"] == generate.BACKUPS]
    assert entry["rewrite"] is True and entry["rows_removed"] == sum(truth.values())
    assert out[generate.BACKUPS]["rows_removed"] == sum(truth.values())
    assert entry["tombstones"] > 0
