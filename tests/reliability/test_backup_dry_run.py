"""The deletion dry run counts the backups and writes nothing there (issue 16; R16, R18, R19).

A dry run previews what `tombstone_backups` would do to each backup store: the tombstones it
would add and, with `rewrite: true`, the snapshot rows a rewrite would remove, per request and
per store (`erasure_preview.count_backups`, merged by `report`). Run task for task with the
harness (the DAG's own `compliance.jobs.deletion` functions, intake in dry-run mode), then:

- every bucket (every object version, byte for byte, delete markers included), every table of
  the CRM and of the state database is as before, the workspace too but for the dry run's own
  report and the run summary: no tombstone, no rewritten object, no state row, no inbox move;
- the report lists the store and the rows it would remove, and the real run that follows
  removes exactly those (the receipts' `counts[<store>]` equal the dry run's, per request) and
  adds exactly the tombstones the dry run announced.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from compliance.core.datamap.model import BackupStore

from . import harness as h
from .harness import BUCKET

pytestmark = pytest.mark.slow

OWN_OUTPUTS = ("deletion/dry-runs/", "summaries/")  # what a dry run is meant to write


class DryRunJob(h.DeletionJob):
    """The deletion DAG as a manual run with the form's default: dry run on."""

    def tasks(self, now, xcom) -> Iterator[h.Task]:
        from compliance.jobs import deletion as job

        ctx = self.w.context(now)
        tasks = super().tasks(now, xcom)
        name, _ = next(tasks)
        assert name == "intake"
        yield "intake", lambda: job.intake(ctx, self.params, dry_run=True)
        yield from tasks


@pytest.fixture(params=[True, False], ids=["rewrite", "tombstones-only"])
def backup_world(request, world, monkeypatch):
    """The harness world, its backup stores switched to `rewrite: true` (or left as the demo
    map has them, `rewrite: false`)."""
    rewrite = request.param
    stores = {
        n: s.model_copy(update={"rewrite": rewrite}) if isinstance(s, BackupStore) else s
        for n, s in world.dm.stores.items()
    }
    world.dm = world.dm.model_copy(update={"stores": stores})
    for key, value in world.env().items():
        monkeypatch.setenv(key, value)
    return world, rewrite


def _buckets(w) -> dict[str, Any]:
    """Every version of every object of every bucket: its bytes' digest, latest or not, and
    the delete markers; the workspace without the dry run's own outputs."""
    out: dict[str, Any] = {}
    for b in w.admin.list_buckets().get("Buckets", []):
        bucket = b["Name"]
        for page in w.admin.get_paginator("list_object_versions").paginate(Bucket=bucket):
            for v in page.get("Versions", []):
                if bucket == BUCKET and v["Key"].startswith(OWN_OUTPUTS):
                    continue
                body = w.admin.get_object(Bucket=bucket, Key=v["Key"], VersionId=v["VersionId"])
                digest = hashlib.sha256(body["Body"].read()).hexdigest()
                out[f"{bucket}/{v['Key']}@{v['VersionId']}"] = (digest, v["IsLatest"])
            for d in page.get("DeleteMarkers", []):
                out[f"{bucket}/{d['Key']}@{d['VersionId']}"] = ("delete marker", d["IsLatest"])
    return out


def _tables(url: str) -> dict[str, list[str]]:
    """Every row of every table (the state's cj_* tables included), sorted."""
    eng = sa.create_engine(url)
    md = sa.MetaData()
    md.reflect(eng)
    with eng.connect() as c:
        out = {
            t.name: sorted(repr(tuple(r)) for r in c.execute(sa.select(t)))
            for t in md.tables.values()
        }
    eng.dispose()
    return out


def _world(w) -> dict[str, Any]:
    return {"s3": _buckets(w), "crm": _tables(w.crm_url), "state": _tables(w.state_url)}


def _report(w) -> tuple[str, dict[str, Any]]:
    keys = [
        o["Key"]
        for page in w.admin.get_paginator("list_objects_v2").paginate(
            Bucket=BUCKET, Prefix="deletion/dry-runs/"
        )
        for o in page.get("Contents", [])
    ]
    (key,) = [k for k in keys if k.endswith("/report.json")]
    base = key.removesuffix("report.json")
    assert sorted(keys) == [base + "index.html", key], keys  # no draft, no backup part left
    return base, json.loads(w.admin.get_object(Bucket=BUCKET, Key=key)["Body"].read())


def test_dry_run_counts_backups_and_changes_nothing(backup_world):
    w, rewrite = backup_world
    (name,) = [n for n, s in w.dm.stores.items() if isinstance(s, BackupStore)][:1]
    w.reset()
    before = _world(w)
    run = h.execute(DryRunJob(w), h.T0)
    assert run.crashed_in is None, (run.crashed_in, run.error)
    assert run.xcom["plan"]["dry_run"] and name in run.xcom["plan"]["backups"]
    counted = run.xcom[f"tombstone_backups[{name}]"]

    after = _world(w)
    assert after["crm"] == before["crm"]
    assert after["state"] == before["state"]  # no tombstone, request, batch or line-count row
    assert after["s3"] == before["s3"]  # no rewritten object or version; inbox in place
    assert not after["state"]["cj_tombstones"] and not after["state"]["cj_batch_lines"]

    base, doc = _report(w)
    (entry,) = [b for b in doc["backups"] if b["store"] == name]
    assert entry["rewrite"] is rewrite
    assert entry["tombstones"] == counted["tombstones"] > 0
    assert "R18" in doc["rules"]
    per_request_stones = sum(
        e["tombstones"] for r in doc["requests"] for e in r.get("backups", []) if e["store"] == name
    )
    assert per_request_stones == entry["tombstones"]
    rows = {r["request_id"]: r["counts"].get(name, {}).get("rows", 0) for r in doc["requests"]}
    if rewrite:
        assert entry["rows_removed"] == counted["rows_removed"] > 0
        assert entry["objects_rewritten"] > 0 and entry["days"] > 0
        assert sum(rows.values()) == entry["rows_removed"]
    else:
        assert "rows_removed" not in entry and not any(rows.values())
    held = [r for r in doc["requests"] if r["action"] in ("defer", "wait")]
    assert all(not r.get("backups") for r in held)  # R19: a deferred request adds nothing
    html = w.admin.get_object(Bucket=BUCKET, Key=base + "index.html")["Body"].read().decode()
    assert "Backups (R18)" in html and name in html

    # The prediction holds: the real run removes those rows and adds those tombstones.
    real = h.execute(h.DeletionJob(w), h.T0 + timedelta(minutes=5))
    assert real.crashed_in is None, (real.crashed_in, real.error)
    done = real.xcom[f"tombstone_backups[{name}]"]
    assert done["tombstones"] == entry["tombstones"]
    if rewrite:
        assert done["rewrite"]["rows_removed"] == entry["rows_removed"]
        assert done["rewrite"]["objects_rewritten"] == entry["objects_rewritten"]
    by_id = {r["request_id"]: r for r in doc["requests"]}
    receipts = [
        json.loads(w.admin.get_object(Bucket=BUCKET, Key=o["Key"])["Body"].read())
        for page in w.admin.get_paginator("list_objects_v2").paginate(
            Bucket=BUCKET, Prefix="receipts/"
        )
        for o in page.get("Contents", [])
        if o["Key"].endswith(".delete.json")
    ]
    assert receipts
    for receipt in receipts:
        planned = by_id[receipt["request_id"]]
        assert planned["counts"].get(name) == receipt["counts"].get(name), receipt["request_id"]
