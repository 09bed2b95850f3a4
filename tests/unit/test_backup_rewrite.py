"""Backup snapshot rewrite (`rewrite: true`, issue 16 deliverable 9; R16.1, R18) on one
hand-made snapshot in a versioned moto bucket: rows of the consumers (and of their children,
found through the relations) are removed, every other record keeps its bytes (quoted newlines,
CRLF and odd quoting included), old versions are deleted, a rerun changes nothing, a dry run
writes nothing, and the independent oracle agrees (and catches an old version left behind).

The expectations are written out by hand here, not computed with the rewrite's code.
"""

from __future__ import annotations

import gzip
import io

import pytest

from compliance.core import csv_records as snapshot_records
from compliance.core.datamap.model import BackupStore, DataMap, IdentityType
from compliance.deletion import backup_rewrite, snapshot_owners
from compliance.deletion.residue_oracle import Verdict
from compliance.deletion.residue_oracle.backup_search import verify_backup_store
from compliance.requests.resolve import Subject

BUCKET = "cj-test-backups"

MAP = {
    "version": 1,
    "systems": {
        "crm": {
            "connection": "crm_db",
            "kind": "sql",
            "consumer_table": "people",
            "tables": {
                "people": {
                    "primary_key": "pid",
                    "tenant_column": "tenant",
                    "erase": "delete",
                    "columns": {
                        "email": {"categories": ["identifiers"], "identity": "email"},
                        "note": {"categories": ["customer_records"]},
                    },
                },
                "notes": {
                    "primary_key": "nid",
                    "relation": {"column": "pid", "references": "people.pid"},
                    "erase": "delete",
                    "columns": {"body": {"categories": ["customer_records"]}},
                },
                "files": {
                    "primary_key": "fid",
                    "relation": {"column": "nid", "references": "notes.nid"},
                    "erase": "keep",
                    "exception": "legal_obligation",
                    "reason": "test",
                    "columns": {"name": {"categories": ["customer_records"]}},
                },
            },
        }
    },
    "stores": {
        "snaps": {
            "kind": "backup",
            "bucket": BUCKET,
            "prefix": "crm/",
            "system": "crm",
            "rewrite": True,
        }
    },
}

PEOPLE = (
    b"pid,tenant,email,note\n"
    b'1,10,keep@example.com,"line one\nline two ""quoted"""\n'
    b"2,10,gone@example.com,bye\r\n"
    b'3,11,gone@example.com,"a twin at another tenant"\n'
    b'4,10,,"multi\n\nline, with comma"\n'
)
PEOPLE_AFTER = (
    b"pid,tenant,email,note\n"
    b'1,10,keep@example.com,"line one\nline two ""quoted"""\n'
    b'3,11,gone@example.com,"a twin at another tenant"\n'
    b'4,10,,"multi\n\nline, with comma"\n'
)
NOTES = b'nid,pid,body\n7,2,"gone\'s note\nsecond line"\n8,1,kept\n9,2,x\n'
NOTES_AFTER = b"nid,pid,body\n8,1,kept\n"
FILES = b"fid,nid,name\n100,7,a.pdf\n101,8,b.pdf\n102,9,c.pdf"  # no final newline
FILES_AFTER = b"fid,nid,name\n101,8,b.pdf\n"


def _map() -> DataMap:
    return DataMap.model_validate(MAP)


@pytest.fixture
def bucket(s3):
    s3.create_bucket(Bucket=BUCKET)
    s3.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
    for day in ("2026-11-19", "2026-11-20"):
        for name, body in (("people", PEOPLE), ("notes", NOTES), ("files", FILES)):
            s3.put_object(Bucket=BUCKET, Key=f"crm/{day}/{name}.csv.gz", Body=gzip.compress(body))
    s3.put_object(Bucket=BUCKET, Key="crm/2026-11-20/unmapped.csv.gz", Body=gzip.compress(b"x\n"))
    return s3


def _body(s3, key: str) -> bytes:
    return gzip.decompress(s3.get_object(Bucket=BUCKET, Key=key)["Body"].read())


def _versions(s3) -> list[tuple[str, bool]]:
    out = []
    for page in s3.get_paginator("list_object_versions").paginate(Bucket=BUCKET):
        out += [(v["Key"], v["IsLatest"]) for v in page.get("Versions", [])]
    return sorted(out)


class _Targets:
    """What the oracle reads of a batch: request 1 of tenant 10 asked by e-mail."""

    def __init__(self) -> None:
        self.requests = {"1": {"client_id": "10"}}
        self.consumers = {"crm": {"1": ["2"]}}
        self.given = {"1": {"email": ["gone@example.com"]}}
        self.identities = {"1": {"email": ["gone@example.com"], "record_id": ["2"]}}
        self.partial: dict[str, str] = {}

    def active_refs(self) -> list[str]:
        return ["1"]


def test_records_keep_quoted_newlines_and_every_byte():
    data = PEOPLE + b"5,10,x,no newline at the end"
    assert b"".join(snapshot_records.records(data)) == data
    assert len(list(snapshot_records.records(data))) == 6  # header + 5 records


@pytest.mark.parametrize("block", [1, 2, 3, 7, 64, 1 << 22])
def test_streamed_records_cut_blocks_only_between_records(tmp_path, monkeypatch, block):
    """A snapshot is streamed a block at a time (gigabytes are never held whole): whatever
    the block size, even one that ends inside a quoted newline or a doubled quote, the records
    and their bytes are those of the whole file (the rewrite drops records by number)."""
    data = PEOPLE + b'6,10,"say ""hi""\n\nthere",x\r\n' + b"5,10,x,no newline at the end"
    path = tmp_path / "people.csv.gz"
    path.write_bytes(gzip.compress(data))
    monkeypatch.setattr(snapshot_records, "BLOCK", block)
    streamed = list(snapshot_records.streamed_records(path))
    assert b"".join(streamed) == data
    assert len(streamed) == 7  # header + 6 records, the quoted newlines inside theirs
    assert streamed[-2] == b'6,10,"say ""hi""\n\nthere",x\r\n'


@pytest.mark.parametrize("block", [1, 2, 3, 7, 64, 1 << 22])
def test_copy_without_drops_exactly_the_named_records(tmp_path, monkeypatch, block):
    """The rewrite copies kept records in slices, a block at a time: whatever the block size,
    the output is the input without exactly the records at the dropped offsets (oracle: the
    records listed one by one), and an offset past the end is an error, not a silent copy."""
    data = PEOPLE + b'6,10,"say ""hi""\n\nthere",x\r\n' + b"5,10,x,no newline at the end"
    path = tmp_path / "people.csv.gz"
    path.write_bytes(gzip.compress(data))
    monkeypatch.setattr(snapshot_records, "BLOCK", block)
    listed = list(snapshot_records.offsets(path))
    for drop in ({0}, {listed[2][0], listed[5][0]}, {at for at, _ in listed[1:]}, set()):
        out = io.BytesIO()
        assert snapshot_records.copy_without(path, drop, out) == len(drop)
        assert out.getvalue() == b"".join(r for at, r in listed if at not in drop)
    with pytest.raises(ValueError, match="past its end"):
        snapshot_records.copy_without(path, {len(data)}, io.BytesIO())


def test_rewrite_removes_rows_keeps_bytes_and_old_versions(bucket):
    s3, dm = bucket, _map()
    store, system = dm.stores["snaps"], dm.systems["crm"]
    assert isinstance(store, BackupStore)
    scope = backup_rewrite.Scope(
        {"2": "1"}, [Subject("1", "10", ((IdentityType.email, "gone@example.com"),))]
    )
    before = _versions(s3)
    dry = backup_rewrite.count_store(s3, store, system, scope)
    assert (dry.objects, dry.rows) == (6, 10) and _versions(s3) == before  # read only

    recorded: dict[str, dict[str, int]] = {}
    done = backup_rewrite.rewrite_store(
        s3,
        store,
        system,
        scope,
        batch_id="del-x",
        before_replace=lambda k, c: recorded.update({k: c}),
    )
    assert (done.objects, done.rows, done.versions_deleted) == (6, 10, 6)
    for day in ("2026-11-19", "2026-11-20"):
        assert _body(s3, f"crm/{day}/people.csv.gz") == PEOPLE_AFTER
        assert _body(s3, f"crm/{day}/notes.csv.gz") == NOTES_AFTER
        # the last record had no newline and is removed; the kept ones are as they were
        assert _body(s3, f"crm/{day}/files.csv.gz") == FILES_AFTER
        assert recorded[f"crm/{day}/notes.csv.gz"] == {"1": 2}
    assert all(latest for _, latest in _versions(s3))  # no old version left
    assert (
        backup_rewrite.replaced_versions(s3, BUCKET, "crm/2026-11-20/people.csv.gz", "del-x") == 1
    )

    after = _versions(s3)
    again = backup_rewrite.rewrite_store(s3, store, system, scope, batch_id="del-x")
    assert (again.objects, again.rows, again.versions_deleted) == (0, 0, 0)
    assert _versions(s3) == after

    verdict = Verdict()
    verify_backup_store(s3, "snaps", store, system, "crm", _Targets(), verdict)
    assert verdict.clean, verdict.describe()
    assert verdict.backups["snaps"]["days"] == 2


def test_oracle_finds_rows_and_old_versions_left(bucket):
    s3, dm = bucket, _map()
    store, system = dm.stores["snaps"], dm.systems["crm"]
    verdict = Verdict()
    verify_backup_store(s3, "snaps", store, system, "crm", _Targets(), verdict)
    assert not verdict.clean
    assert any("people.csv.gz" in k for k in verdict.residue)
    assert any("notes.csv.gz" in k for k in verdict.residue)  # the consumer's key, any table
    # rewritten, but an old version kept: residue in every version
    s3.put_object(
        Bucket=BUCKET, Key="crm/2026-11-19/people.csv.gz", Body=gzip.compress(PEOPLE_AFTER)
    )
    verdict = Verdict()
    verify_backup_store(s3, "snaps", store, system, "crm", _Targets(), verdict)
    assert "snaps:crm/2026-11-19/people.csv.gz (old version)" in verdict.residue


@pytest.mark.parametrize(
    "scope",
    [
        backup_rewrite.Scope({"2": "1"}, []),
        # consumer 5 is gone from the live CRM: only its e-mail in the snapshot finds it
        backup_rewrite.Scope({}, [Subject("1", "10", ((IdentityType.email, "ZOË@example.com"),))]),
        backup_rewrite.Scope(
            {"2": "1", "1": "2"}, [Subject("3", "11", ((IdentityType.email, "gone@example.com"),))]
        ),
    ],
)
def test_the_subset_loads_find_the_rows_the_whole_day_finds(tmp_path, monkeypatch, scope):
    """Issue 19: the rewrite loads only the rows its scope can own (`core.snapshot_subset`),
    naming them by byte offset. Oracle: the same day loaded whole (no subset plan) must give
    the same doomed records, read back by their offsets, with non-ASCII text before them."""
    system = _map().systems["crm"]
    people = PEOPLE + '5,10,zoë@example.com,"Zoë\'s\nnote"\n6,10,x@example.com,İstanbul\n'.encode()
    notes = NOTES + b"10,5,hers\n11,6,not hers\n"
    objects = {}
    for name, body in (("people", people), ("notes", notes), ("files", FILES + b"\n103,10,d\n")):
        path = tmp_path / f"{name}.csv.gz"
        path.write_bytes(gzip.compress(body))
        objects[name] = backup_rewrite._Object(f"crm/d/{name}.csv.gz", name, path, {})

    def doomed(whole: bool) -> dict[str, dict[int, str]]:
        if whole:
            monkeypatch.setattr(snapshot_owners, "subset_plan", lambda _system: None)
        engine = backup_rewrite.sa.create_engine(f"sqlite:///{tmp_path / f'{whole}.db'}")
        snapshot_owners.load_day(engine, {t: o.path for t, o in objects.items()}, system, scope)
        counts = {
            t: engine.connect().exec_driver_sql(f"SELECT count(*) FROM {t}").scalar()
            for t in objects
        }
        found = snapshot_owners.doomed_rows(engine, system, scope, set(objects))
        engine.dispose()
        return found, counts

    subset, loaded = doomed(False)
    whole, everything = doomed(True)
    assert subset == whole and any(subset.values())
    assert sum(loaded.values()) < sum(everything.values())  # the subset really is smaller
    for table, rows in whole.items():
        data = gzip.decompress(objects[table].path.read_bytes())
        kept = list(snapshot_records.offsets(objects[table].path))
        assert {at for at, _ in kept if at >= 0} >= set(rows)
        for at, record in kept:
            if at in rows:
                assert data[data.index(b"\n") + 1 + at :].startswith(record)
