"""S3 expiry on the moto server: day partitions, every version, Object Lock, holds, non-current.

The plan lists exactly what execution does; execution re-plans nothing here, it executes the
plan it is given (the sweep re-plans with the same inputs in the executing task).
"""

from __future__ import annotations

import gzip
import json
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest

from compliance.core.datamap.validate import load_datamap
from compliance.retention.objects import FILTERED_META, expire_store, plan_store
from compliance.retention.policy_file import load_policy

REPO = Path(__file__).resolve().parents[2]
DM = load_datamap(REPO / "config" / "datamap.yaml")
POLICY = load_policy(REPO / "config" / "retention.yaml", DM).policy
AS_OF = date(2026, 6, 15)
LOGS = DM.stores["app_logs"]  # cj-app-logs, app/dt=%Y-%m-%d/, 30 days in the demo policy
BACKUPS = DM.stores["crm_backups"]  # cj-crm-backups, crm/YYYY-MM-DD/, 35 days
RULE = POLICY.rule("app-logs")


def now() -> datetime:
    return datetime.now(UTC)


def log_key(days_ago: int, part: int = 0) -> str:
    day = AS_OF - timedelta(days=days_ago)
    return f"{LOGS.prefix}{day.strftime(LOGS.partition)}part-{part:05d}.jsonl.gz"


def lines(*clients: int) -> bytes:
    rows = [
        {"ts": "2026-05-01T10:00:00Z", "client_id": c, "email": f"x{c}@example.com"}
        for c in clients
    ]
    return gzip.compress("".join(json.dumps(r) + "\n" for r in rows).encode())


def versions(s3, bucket: str, prefix: str = "") -> list[tuple[str, str, bool]]:
    page = s3.list_object_versions(Bucket=bucket, Prefix=prefix)
    out = [(v["Key"], v["VersionId"], False) for v in page.get("Versions", [])]
    out += [(v["Key"], v["VersionId"], True) for v in page.get("DeleteMarkers", [])]
    return sorted(out)


def versioned(s3, bucket: str, lock: bool = False) -> None:
    if lock:
        s3.create_bucket(Bucket=bucket, ObjectLockEnabledForBucket=True)
    else:
        s3.create_bucket(Bucket=bucket)
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})


def plan_and_run(s3, store, rule=RULE, held=frozenset(), name="app_logs"):
    plan = plan_store(s3, name, store, rule, AS_OF, now(), set(held))
    done = expire_store(s3, store, plan)
    return plan, done


def test_old_partitions_lose_every_version_young_ones_stay(s3):
    versioned(s3, LOGS.bucket)
    s3.put_object(Bucket=LOGS.bucket, Key=log_key(40), Body=lines(1))
    s3.put_object(Bucket=LOGS.bucket, Key=log_key(40), Body=lines(1, 2))  # a second version
    s3.put_object(Bucket=LOGS.bucket, Key=log_key(31, 1), Body=lines(1))
    s3.delete_object(Bucket=LOGS.bucket, Key=log_key(31, 1))  # a delete marker hides it
    s3.put_object(Bucket=LOGS.bucket, Key=log_key(30), Body=lines(1))  # exactly 30 days: stays
    s3.put_object(Bucket=LOGS.bucket, Key=log_key(2), Body=lines(1))
    plan, done = plan_and_run(s3, LOGS)
    assert plan.counts()["partitions"] == 2
    assert plan.counts()["delete_versions"] == 4  # two versions, a version and its marker
    assert {k: done[k] for k in ("partitions", "delete_versions", "filter", "noncurrent")} == {
        k: plan.counts()[k] for k in ("partitions", "delete_versions", "filter", "noncurrent")
    }
    assert {k for k, _, _ in versions(s3, LOGS.bucket)} == {log_key(30), log_key(2)}
    again, _ = plan_and_run(s3, LOGS)
    assert again.counts()["delete_versions"] == 0


@pytest.fixture
def locked_store(s3):
    """The log store in a bucket with Object Lock; emptied afterwards (bypassing governance)."""
    store = LOGS.model_copy(update={"bucket": "cj-locked-logs"})
    versioned(s3, store.bucket, lock=True)
    yield store
    for key, vid, marker in versions(s3, store.bucket):
        if not marker:
            s3.put_object_legal_hold(
                Bucket=store.bucket, Key=key, VersionId=vid, LegalHold={"Status": "OFF"}
            )
        s3.delete_object(
            Bucket=store.bucket, Key=key, VersionId=vid, BypassGovernanceRetention=True
        )


def test_object_lock_and_s3_legal_holds_are_respected(s3, locked_store):
    bucket = locked_store.bucket
    until = now() + timedelta(days=30)
    retained, held, free = log_key(40, 0), log_key(40, 1), log_key(40, 2)
    s3.put_object(
        Bucket=bucket,
        Key=retained,
        Body=lines(1),
        ObjectLockMode="GOVERNANCE",
        ObjectLockRetainUntilDate=until,
    )
    s3.put_object(Bucket=bucket, Key=held, Body=lines(1), ObjectLockLegalHoldStatus="ON")
    s3.put_object(Bucket=bucket, Key=free, Body=lines(1))
    plan, done = plan_and_run(s3, locked_store)
    assert {k for k, _ in plan.locked} == {retained, held}
    assert plan.counts()["locked"] == 2
    assert [k for k, _ in plan.delete] == [free]
    assert done["delete_versions"] == 1
    assert {k for k, _, _ in versions(s3, bucket)} == {retained, held}
    # once the legal hold is lifted, the next sweep deletes that version
    vid = next(v for k, v, _ in versions(s3, bucket) if k == held)
    s3.put_object_legal_hold(Bucket=bucket, Key=held, VersionId=vid, LegalHold={"Status": "OFF"})
    plan, _ = plan_and_run(s3, locked_store)
    assert [k for k, _ in plan.delete] == [held] and [k for k, _ in plan.locked] == [retained]


def test_a_registry_hold_keeps_only_the_held_clients_lines(s3):
    versioned(s3, LOGS.bucket)
    s3.put_object(Bucket=LOGS.bucket, Key=log_key(40), Body=lines(1, 7, 2, 7))
    s3.put_object(Bucket=LOGS.bucket, Key=log_key(41), Body=lines(1, 2))  # nobody held in it
    plan, done = plan_and_run(s3, LOGS, held={7})
    assert plan.counts()["filter"] == 2 and plan.counts()["delete_versions"] == 0
    assert done["filter"] == 2 and done["lines_dropped"] == 4 and done["objects_emptied"] == 1
    left = versions(s3, LOGS.bucket)
    assert [k for k, _, _ in left] == [log_key(40)]  # the pre-filter version is gone as well
    obj = s3.get_object(Bucket=LOGS.bucket, Key=log_key(40))
    kept = [json.loads(x)["client_id"] for x in gzip.decompress(obj["Body"].read()).splitlines()]
    assert kept == [7, 7]
    assert obj["Metadata"] == {FILTERED_META: "1"} and obj["ServerSideEncryption"] == "AES256"
    # a rerun reads it again but writes nothing new
    plan, done = plan_and_run(s3, LOGS, held={7})
    assert done["lines_dropped"] == 0 and versions(s3, LOGS.bucket) == left
    # the hold ends: the partition goes entirely
    plan, done = plan_and_run(s3, LOGS)
    assert done["delete_versions"] == 1 and versions(s3, LOGS.bucket) == []


def test_a_crash_between_rewrite_and_cleanup_converges(s3):
    versioned(s3, LOGS.bucket)
    s3.put_object(Bucket=LOGS.bucket, Key=log_key(40), Body=lines(1, 7))
    # the state a crash right after the rewrite's PUT leaves: our version on top of the original
    s3.put_object(Bucket=LOGS.bucket, Key=log_key(40), Body=lines(7), Metadata={FILTERED_META: "1"})
    plan, _ = plan_and_run(s3, LOGS, held={7})
    assert len(plan.delete) == 1  # the pre-filter copy is recognised and deleted
    assert len(versions(s3, LOGS.bucket)) == 1


def test_backup_snapshots_expire_by_folder_date_unless_held(s3):
    versioned(s3, BACKUPS.bucket)
    old = (AS_OF - timedelta(days=36)).isoformat()
    young = (AS_OF - timedelta(days=35)).isoformat()
    for day in (old, young):
        for table in ("contacts", "leads"):
            s3.put_object(Bucket=BACKUPS.bucket, Key=f"crm/{day}/{table}.csv.gz", Body=b"x")
    s3.put_object(Bucket=BACKUPS.bucket, Key="crm/not-a-date/x.csv.gz", Body=b"x")
    rule = POLICY.rule("crm-backups")
    plan, done = plan_and_run(s3, BACKUPS, rule, held={3}, name="crm_backups")
    assert plan.held_partitions == [f"crm/{old}/"] and plan.held_versions == 2
    assert done["delete_versions"] == 0
    plan, done = plan_and_run(s3, BACKUPS, rule, name="crm_backups")
    assert plan.partitions == [f"crm/{old}/"] and done["delete_versions"] == 2
    keys = {k for k, _, _ in versions(s3, BACKUPS.bucket)}
    assert keys == {
        f"crm/{young}/contacts.csv.gz",
        f"crm/{young}/leads.csv.gz",
        "crm/not-a-date/x.csv.gz",
    }


def test_noncurrent_versions_and_orphan_markers(s3):
    versioned(s3, LOGS.bucket)
    key, gone = log_key(3), log_key(4)
    for body in (b"1", b"2", b"3"):
        s3.put_object(Bucket=LOGS.bucket, Key=key, Body=gzip.compress(body))
    s3.put_object(Bucket=LOGS.bucket, Key=gone, Body=gzip.compress(b"x"))
    s3.delete_object(Bucket=LOGS.bucket, Key=gone)
    # with the demo's 7 days nothing is old enough yet
    plan, _ = plan_and_run(s3, LOGS)
    assert plan.noncurrent == []
    time.sleep(1.1)  # S3 times have one-second resolution
    immediate = RULE.model_copy(update={"noncurrent": type(RULE.period).parse("0 days")})
    plan, done = plan_and_run(s3, LOGS, immediate)
    assert len(plan.noncurrent) == 4  # two old versions, the hidden version and its marker
    assert done["noncurrent"] == 4
    left = versions(s3, LOGS.bucket)
    assert [(k, marker) for k, _, marker in left] == [(key, False)]
    body = s3.get_object(Bucket=LOGS.bucket, Key=key)["Body"].read()
    assert gzip.decompress(body) == b"3"  # the current version is untouched


def test_noncurrent_versions_are_kept_while_a_hold_covers_the_store(s3):
    versioned(s3, LOGS.bucket)
    key = log_key(3)
    for body in (b"1", b"2"):
        s3.put_object(Bucket=LOGS.bucket, Key=key, Body=gzip.compress(body))
    time.sleep(1.1)
    immediate = RULE.model_copy(update={"noncurrent": type(RULE.period).parse("0 days")})
    plan, _ = plan_and_run(s3, LOGS, immediate, held={7})
    assert plan.noncurrent == [] and plan.held_versions == 1
    assert len(versions(s3, LOGS.bucket)) == 2


def test_a_missing_bucket_is_reported_not_fatal(s3):
    plan = plan_store(s3, "app_logs", LOGS, RULE, AS_OF, now(), set())
    assert plan.counts()["missing_bucket"] == 1 and plan.counts()["delete_versions"] == 0
