"""`rewrite: true` on the demo world's backup store (issue 16 deliverable 9; R16.1, R18).

The demo map keeps `rewrite: false`; here the world's map is the demo map with the backup store
switched to `rewrite: true`, and the deletion job runs task for task (the harness, the same
`compliance.jobs.deletion` functions the DAG calls). Checked with code that shares nothing with
the rewrite (plain `csv` and SQL on the pristine CRM):

- after the run, no snapshot holds a row of an erased consumer (contacts deleted from the CRM),
  in any table, attachments (through messages) and ticket comments (through tickets) included;
- every other record of every snapshot object is byte-identical: the decompressed object after
  equals the object before minus the removed records, in order;
- no non-current version is left in the backup bucket; the receipts say what was rewritten;
- a rerun changes nothing; a crash after a rewritten object's PUT (old versions still there)
  or after its clean-up resumes and converges on the clean run's world and receipts.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
from datetime import timedelta

import pytest
import sqlalchemy as sa

from compliance.core.datamap.model import BackupStore

from . import harness as h
from .harness import BUCKET, fault

pytestmark = pytest.mark.slow


@pytest.fixture
def rewrite_world(world, monkeypatch):
    """The harness world with every backup store of the demo map switched to rewrite: true."""
    stores = {
        n: s.model_copy(update={"rewrite": True}) if isinstance(s, BackupStore) else s
        for n, s in world.dm.stores.items()
    }
    world.dm = world.dm.model_copy(update={"stores": stores})
    for key, value in world.env().items():
        monkeypatch.setenv(key, value)
    return world


def _backups(world) -> tuple[str, str]:
    (name, store), *_ = [(n, s) for n, s in world.dm.stores.items() if isinstance(s, BackupStore)]
    return name, store.bucket


def _objects(world, bucket: str) -> dict[str, bytes]:
    out = {}
    for page in world.admin.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for o in page.get("Contents", []):
            body = world.admin.get_object(Bucket=bucket, Key=o["Key"])["Body"].read()
            out[o["Key"]] = gzip.decompress(body)
    return out


def _versions(world, bucket: str) -> list[tuple[str, str, bool]]:
    out = []
    for page in world.admin.get_paginator("list_object_versions").paginate(Bucket=bucket):
        out += [(v["Key"], v["VersionId"], v["IsLatest"]) for v in page.get("Versions", [])]
        out += [(d["Key"], d["VersionId"], False) for d in page.get("DeleteMarkers", [])]
    return sorted(out)


def _records(data: bytes) -> list[tuple[bytes, list[str]]]:
    """(raw bytes, fields) per record, header first: the csv module reads the lines, and its
    `line_num` says how many lines each record took (a quoted newline makes two)."""
    lines = io.StringIO(data.decode("utf-8"), newline="").readlines()
    reader = csv.reader(iter(lines))
    out, consumed = [], 0
    for row in reader:
        raw = "".join(lines[consumed : reader.line_num])
        consumed = reader.line_num
        out.append((raw.encode(), row))
    return out


def _erased_contacts(world) -> set[str]:
    """Contacts the run deleted from the CRM (pristine minus after): plain SQL."""

    def ids(url: str) -> set[str]:
        eng = sa.create_engine(url)
        with eng.connect() as c:
            got = {str(r[0]) for r in c.execute(sa.text("select contact_id from contacts"))}
        eng.dispose()
        return got

    return ids(f"sqlite:///{world.pristine.crm_file}") - ids(world.crm_url)


def _owned(table: str, row: dict[str, str], erased: dict[str, set[str]]) -> bool:
    """Hand-written ownership for the demo schema (docs/data-map.md's example)."""
    if table == "contacts":
        return row["contact_id"] in erased["contacts"]
    if table == "message_attachments":
        return row["message_id"] in erased["messages"]
    if table == "ticket_comments":
        return row["ticket_id"] in erased["support_tickets"]
    return row.get("contact_id", "") in erased["contacts"]


def test_rewrite_removes_the_rows_keeps_every_other_byte_and_old_versions(rewrite_world):
    w = rewrite_world
    name, bucket = _backups(w)
    w.reset()
    before = _objects(w, bucket)
    assert not any(not latest for _, _, latest in _versions(w, bucket))
    job = h.DeletionJob(w)
    run = h.execute(job, h.T0)
    assert run.crashed_in is None, (run.crashed_in, run.error)
    tomb = run.xcom[f"tombstone_backups[{name}]"]
    assert tomb["rewrite"]["rows_removed"] > 0, tomb

    contacts = _erased_contacts(w)
    assert contacts
    after = _objects(w, bucket)
    assert after.keys() == before.keys()
    removed: dict[str, int] = {}
    for day in sorted({k.rsplit("/", 1)[0] for k in before}):
        # parents first, so the children's owners are known from the same snapshot
        erased = {"contacts": contacts, "messages": set(), "support_tickets": set()}
        for parent, key_col in (("messages", "message_id"), ("support_tickets", "ticket_id")):
            recs = _records(before.get(f"{day}/{parent}.csv.gz", b""))
            if recs:
                header = recs[0][1]
                for _, fields in recs[1:]:
                    row = dict(zip(header, fields, strict=True))
                    if row["contact_id"] in contacts:
                        erased[parent].add(row[key_col])
        for key in sorted(k for k in before if k.startswith(day + "/")):
            table = key.rsplit("/", 1)[1].removesuffix(".csv.gz")
            if table not in w.dm.systems["crm"].tables:
                assert after[key] == before[key], key  # an unmapped table is not touched
                continue
            recs = _records(before[key])
            header = recs[0][1]
            kept = [recs[0][0]]
            for raw, fields in recs[1:]:
                row = dict(zip(header, fields, strict=True))
                if _owned(table, row, erased):
                    removed[table] = removed.get(table, 0) + 1
                else:
                    kept.append(raw)
            assert after[key] == b"".join(kept), key
    assert removed.get("contacts") and removed.get("messages"), removed
    assert removed.get("message_attachments") or removed.get("ticket_comments"), removed
    assert sum(removed.values()) == tomb["rewrite"]["rows_removed"]
    assert all(latest for _, _, latest in _versions(w, bucket))  # old versions deleted

    receipts = [
        json.loads(w.admin.get_object(Bucket=BUCKET, Key=k)["Body"].read())
        for page in w.admin.get_paginator("list_objects_v2").paginate(
            Bucket=BUCKET, Prefix="receipts/"
        )
        for k in [o["Key"] for o in page.get("Contents", [])]
        if k.endswith(".delete.json")
    ]
    facts = [e for r in receipts for e in r["backups"] if e["store"] == name]
    assert sum(e["rows_removed"] for e in facts) == sum(removed.values())
    assert all(e["rewritten"] for e in facts)
    assert sum(e["snapshot_objects_rewritten"] for e in facts) > 0
    assert all(
        e["old_versions_deleted"] == e["snapshot_objects_rewritten"] for e in facts
    )  # one version each in the pristine world
    searched = [
        s
        for r in receipts
        for s in r["verification"]["independent"]["searched"]
        if s.get("store") == name
    ]
    assert searched and all("rewritten snapshots" in s["method"] for s in searched)

    listing = _versions(w, bucket)
    again = h.execute(job, h.T0 + timedelta(hours=1))
    assert again.crashed_in is None, again.error
    assert _versions(w, bucket) == listing  # a rerun finds nothing and writes nothing


@pytest.mark.parametrize(
    ("point", "mode"),
    [
        (fault("backups.after_put"), "new_run"),
        (fault("backups.after_put"), "retry"),
        (fault("backups.after_object"), "new_run"),
        (fault("backups.tombstoned"), "retry"),  # tombstones written, nothing rewritten yet
    ],
    ids=str,
)
def test_crash_in_the_rewrite_resumes(rewrite_world, point, mode):
    job = h.DeletionJob(rewrite_world)
    clean = h.scenario(job, None)
    assert not clean.errors, clean.errors
    crashed = h.scenario(job, point, mode)
    assert crashed.crashed_in and crashed.crashed_in.startswith("tombstone_backups[")
    assert not crashed.errors, crashed.errors
    assert h.diff(clean.snapshot["stores"], crashed.snapshot["stores"]) == []
    assert h.diff(clean.snapshot["crm"], crashed.snapshot["crm"]) == []
    assert h.diff(job.records(clean.snapshot), job.records(crashed.snapshot)) == []


def test_old_versions_left_behind_fail_the_run_loudly(rewrite_world, monkeypatch):
    """If the old versions survive (a bucket policy that ignores deletes, say), the independent
    search finds the rows in them: finalize fails, no receipt, the requests stay open."""
    from compliance.deletion import backup_rewrite

    w = rewrite_world
    name, _ = _backups(w)
    w.reset()
    monkeypatch.setattr(backup_rewrite, "delete_versions", lambda s3, bucket, versions: 0)
    run = h.execute(h.DeletionJob(w), h.T0)
    assert run.crashed_in == "finalize", (run.crashed_in, run.error)
    assert "ErasureIncomplete" in run.error and f"{name}:" in run.error, run.error
    assert "(old version)" in run.error
    pages = w.admin.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix="receipts/")
    assert not [o for p in pages for o in p.get("Contents", [])]
    eng = sa.create_engine(w.state_url)
    with eng.connect() as c:
        statuses = {r[0] for r in c.execute(sa.text("select status from cj_requests"))}
    eng.dispose()
    assert "completed" not in statuses, statuses
