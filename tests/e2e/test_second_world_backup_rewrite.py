"""`rewrite: true` on the second world's backups (issue 16 deliverable 9; R16.1, R18).

The second world (tests/second_world) has string tenants ("01" and "1" are two), UUID consumer
keys, a composite key and rows three relations below the consumer. Its map keeps
`rewrite: false`; here a copy says `rewrite: true` and the deletion job runs task for task
through `compliance.runtime.context()` (the DAG's own task functions). The verdict comes from the
world's ground truth (who owns each row), read with the `csv` module: the snapshots lose exactly
the erased persons' rows, every other record keeps its bytes, a twin in another tenant stays.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from tests.second_world import generate
from tests.second_world.requests import document, drop

REPO = Path(__file__).resolve().parents[2]
HERE = REPO / "tests" / "second_world"
WORKSPACE = "cj2-workspace"
NOW = datetime.now(UTC).replace(microsecond=0)

pytestmark = pytest.mark.slow


def _wipe(s3: Any, bucket: str) -> None:
    try:
        for page in s3.get_paginator("list_object_versions").paginate(Bucket=bucket):
            for item in page.get("Versions", []) + page.get("DeleteMarkers", []):
                s3.delete_object(Bucket=bucket, Key=item["Key"], VersionId=item["VersionId"])
        s3.delete_bucket(Bucket=bucket)
    except s3.exceptions.NoSuchBucket:
        pass


@pytest.fixture
def w2(tmp_path, s3, s3_endpoint, monkeypatch):
    from compliance import runtime

    text = (HERE / "datamap.yaml").read_text()
    head, tail = text.split("  crm2_backups:\n", 1)
    assert "    rewrite: false\n" in tail
    tail = tail.replace("    rewrite: false\n", "    rewrite: true\n", 1)
    datamap = tmp_path / "datamap.yaml"
    datamap.write_text(head + "  crm2_backups:\n" + tail)
    db_url, state_url = f"sqlite:///{tmp_path / 'crm2.db'}", f"sqlite:///{tmp_path / 'state.db'}"
    aws = {
        "conn_type": "aws",
        "login": "testing",
        "password": "testing",
        "extra": {"endpoint_url": s3_endpoint, "region_name": "us-east-1"},
    }
    env = {
        "AIRFLOW_CONN_CRM2_DB": json.dumps({"conn_type": "sqlite", "host": db_url[10:]}),
        "AIRFLOW_CONN_COMPLIANCE_DB": json.dumps({"conn_type": "sqlite", "host": state_url[10:]}),
        "AIRFLOW_CONN_AWS_DEFAULT": json.dumps(aws),
        "COMPLIANCE_WORKSPACE_BUCKET": WORKSPACE,
        "COMPLIANCE_HASH_KEY": "second-world-key",
        "COMPLIANCE_DATAMAP": str(datamap),
        "COMPLIANCE_RETENTION": str(HERE / "retention.yaml"),
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    for bucket in (generate.LOG_BUCKET, generate.BACKUP_BUCKET, WORKSPACE):
        _wipe(s3, bucket)
    runtime.sql_engine.cache_clear()
    runtime._schema_ready.clear()
    engine = sa.create_engine(db_url)
    world = generate.seed(engine, s3, NOW.date())
    engine.dispose()
    s3.create_bucket(Bucket=WORKSPACE)
    yield world, db_url
    runtime.sql_engine.cache_clear()
    runtime._schema_ready.clear()


def _run_deletion() -> dict[str, Any]:
    """dags/deletion_requests.py, task for task (a scheduled run: no form, no dry run)."""
    from compliance import runtime
    from compliance.jobs import deletion as job

    def ctx():
        return runtime.context(lambda: NOW)

    out: dict[str, Any] = {}
    intake = job.intake(ctx(), {}, dry_run=False)
    batch = job.plan(ctx(), intake, {})
    for system in batch["systems"]:
        job.erase_system(ctx(), batch, system)
    scrubbed = [job.scrub_logs(ctx(), batch, shard) for shard in batch["shards"]]
    for shard in batch["shards"]:
        job.verify_logs(ctx(), batch, shard)
    for store in batch["recordings"]:
        job.erase_recordings(ctx(), batch, store)
    for store in batch["backups"]:
        out[store] = job.tombstone_backups(ctx(), batch, store)
    job.notify_subprocessors(ctx(), batch)
    out["finalize"] = job.finalize(ctx(), batch, scrubbed)
    return out


def _snapshots(s3: Any) -> dict[str, bytes]:
    out = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=generate.BACKUP_BUCKET):
        for o in page.get("Contents", []):
            body = s3.get_object(Bucket=generate.BACKUP_BUCKET, Key=o["Key"])["Body"].read()
            out[o["Key"]] = gzip.decompress(body)
    return out


def _records(data: bytes) -> list[tuple[bytes, list[str]]]:
    lines = io.StringIO(data.decode("utf-8"), newline="").readlines()
    reader = csv.reader(iter(lines))
    out, consumed = [], 0
    for row in reader:
        out.append(("".join(lines[consumed : reader.line_num]).encode(), row))
        consumed = reader.line_num
    return out


def test_rewrite_removes_exactly_the_erased_persons_rows(w2, s3):
    world, db_url = w2
    twin, deep, uni = world.person("twin_01"), world.person("deep"), world.person("unicode")
    received = NOW - timedelta(days=1)
    docs = [
        document("DEL-TWIN", "01", "delete", received, email=twin.primary_email.upper()),
        document("DEL-DEEP", deep.org, "delete", received, email=deep.primary_email),
        document("DEL-UNI", uni.org, "delete", received, email=uni.primary_email),
    ]
    drop(s3, WORKSPACE, docs, "deletion")
    erased = {twin.uuid, deep.uuid, uni.uuid}
    before = _snapshots(s3)
    out = _run_deletion()
    assert out["finalize"]["completed"] == 3, out
    rewrite = out[generate.BACKUPS]["rewrite"]
    assert rewrite["rows_removed"] > 0 and rewrite["objects_rewritten"] > 0, rewrite

    pks = {t.name: [c.name for c in t.primary_key.columns] for t in _tables(db_url)}
    after = _snapshots(s3)
    assert after.keys() == before.keys()
    removed = 0
    depths = set()
    for key, data in sorted(before.items()):
        table = key.rsplit("/", 1)[1].removesuffix(".csv.gz")
        recs = _records(data)
        header = recs[0][1]
        kept = [recs[0][0]]
        for raw, fields in recs[1:]:
            row = dict(zip(header, fields, strict=True))
            truth = world.rows.get((table, tuple(row[c] for c in pks.get(table, []))))
            if truth is not None and truth.owner in erased:
                removed += 1
                depths.add(table)
            else:
                kept.append(raw)
        assert after[key] == b"".join(kept), key
    assert removed == rewrite["rows_removed"]
    assert len(depths) >= 3, depths  # the consumer table and rows below it
    versions = []
    for page in s3.get_paginator("list_object_versions").paginate(Bucket=generate.BACKUP_BUCKET):
        versions += [v for v in page.get("Versions", []) if not v["IsLatest"]]
    assert versions == []

    listing = sorted(after)
    again = _run_deletion()  # nothing open: nothing to rewrite
    assert again.get(generate.BACKUPS, {}).get("rewrite", {}).get("rows_removed", 0) == 0
    assert sorted(_snapshots(s3)) == listing and _snapshots(s3) == after


def _tables(db_url: str) -> list[sa.Table]:
    engine = sa.create_engine(db_url)
    md = sa.MetaData()
    md.reflect(engine)
    engine.dispose()
    return list(md.sorted_tables)
