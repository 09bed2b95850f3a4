"""Contract end (G4 Art. 28(3)(g), R27): the client_offboarding job on the tiny world.

The world's churned client's contract ended 180 days before the as-of date (`contract_ended_at`),
past the 30-day grace period. The job functions are the DAG's own (`compliance.jobs.offboarding`)
called with a `JobContext` on the world, as the crash harness does; the approval step is
Airflow's and is covered in tests/dags/test_client_offboarding.py.

What is proved here, each by a check that fails if the job misbehaves:
- a dry run counts and changes nothing (every row, object and version byte-identical);
- a deletion removes every row, log line, recording and workspace document of the client,
  tombstones its consumers so a restored backup is purged (R18), writes a receipt and a ledger
  entry with counts only, and leaves every other client's rows, log lines and objects
  byte-identical (compared before and after, table by table and line by line);
- a client under a legal hold is never touched (R19);
- a return export holds every mapped table of the client (CSV and JSON), its log lines, behind
  a link that expires within 7 days, and deletes nothing.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import zipfile
from datetime import datetime
from typing import Any

import pytest
import sqlalchemy as sa

from compliance.core import ledger
from compliance.core.datamap.model import LogStore, RecordingStore
from compliance.core.sqlmap import MappedSql, key_text
from compliance.jobs import offboarding as jobs
from compliance.offboarding import export, run, scope
from compliance.requests import state

from . import harness as h

pytestmark = pytest.mark.slow

NOW = h.T0


def _ended_client(world: h.World) -> str:
    eng = world.engine(world.crm_url)
    with eng.connect() as conn:
        ids = conn.execute(
            sa.text("select client_id from clients where contract_ended_at is not null")
        ).scalars()
        found = [key_text(i) for i in ids]
    assert len(found) == 1, "the tiny world has one churned client"
    return found[0]


def _plant(world: h.World, client: str) -> dict[str, Any]:
    """Lines of the client mixed with another client's in one log object, a recording object,
    and workspace documents filed under the client: every kind of store is exercised."""
    name, store = next((n, s) for n, s in world.dm.stores.items() if isinstance(s, LogStore))
    lines = [
        json.dumps({store.tenant_field: int(client), "ts": "2026-05-01T10:00:00Z", "n": i})
        if i % 2 == 0
        else json.dumps({store.tenant_field: 1, "ts": "2026-05-01T10:00:01Z", "n": i})
        for i in range(6)
    ]
    key = f"{store.prefix}{datetime(2026, 5, 1).strftime(store.partition)}offboarding-mix.jsonl.gz"
    body = ("\n".join(lines) + "\n").encode()
    world.admin.put_object(Bucket=store.bucket, Key=key, Body=gzip.compress(body))
    for doc in (f"access/{client}/R-1/bundle.zip", f"accepted/{client}/R-2.access.json"):
        world.admin.put_object(Bucket=h.BUCKET, Key=doc, Body=b"{}")
    return {"log_key": key, "log_store": store, "log_store_name": name, "other_lines": lines[1::2]}


def _rows(world: h.World) -> dict[str, list[tuple[str, tuple]]]:
    """Every row of every table of the CRM, each with its tenant (None: not a mapped table)."""
    eng = world.engine(world.crm_url)
    system = world.dm.systems["crm"]
    sql = MappedSql(eng, system)
    md = sa.MetaData()
    md.reflect(eng)
    out: dict[str, list[tuple[str, tuple]]] = {}
    with eng.connect() as conn:
        for name, table in sorted(md.tables.items()):
            if name in system.tables:
                owned = sql.owned(name)
                stmt = sa.select(owned.tenant, *owned.table.c).select_from(owned.from_clause)
                rows = [(key_text(r[0]), tuple(map(repr, r[1:]))) for r in conn.execute(stmt)]
            else:
                rows = [("", tuple(map(repr, r))) for r in conn.execute(sa.select(table))]
            out[name] = sorted(rows)
    return out


def _objects(world: h.World) -> dict[tuple[str, str], bytes]:
    """Every current object of every store bucket (not the workspace), decompressed."""
    out = {}
    buckets = {s.bucket for s in world.dm.stores.values()}
    for bucket in sorted(buckets):
        for obj in h.admin_client(world.s3_url).list_objects_v2(Bucket=bucket).get("Contents", []):
            body = world.admin.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
            out[(bucket, obj["Key"])] = (
                gzip.decompress(body) if obj["Key"].endswith(".gz") else body
            )
    return out


def _snapshot(world: h.World) -> dict[str, Any]:
    return {"rows": _rows(world), "objects": _objects(world)}


def _recording_keys(world: h.World, client: str) -> set[tuple[str, str]]:
    store = next(s for s in world.dm.stores.values() if isinstance(s, RecordingStore))
    system = world.dm.systems[store.system]
    keys = scope.recording_keys(world.engine(world.crm_url), system, store, client)
    return {(store.bucket, k) for k in keys}


def test_dry_run_counts_and_changes_nothing(world: h.World) -> None:
    world.reset()
    client = _ended_client(world)
    _plant(world, client)
    before = _snapshot(world)
    ctx = world.context(NOW)
    planned = jobs.plan(ctx, {}, scheduled=False)  # a manual run: dry by default
    assert planned["dry_run"] is True and planned["clients"] == [client]
    assert planned["totals"]["rows"] > 0 and planned["totals"]["log_lines"] >= 3
    assert planned["totals"]["workspace_objects"] == 2
    assert not jobs.needs_approval(planned)  # the approval and execution are skipped
    assert "| " + client + " |" in planned["summary_md"]
    with pytest.raises(run.Refused):
        jobs.execute(ctx, planned)
    assert _snapshot(world) == before
    report = json.loads(
        world.admin.get_object(Bucket=h.BUCKET, Key=planned["report_key"])["Body"].read()
    )
    assert report["report"][0]["tables"]["crm.contacts"] > 0
    # a scheduled run is never a dry run (R27: nothing is kept forever), whatever the form says
    assert jobs.options({"dry_run": True}, scheduled=True).dry_run is False


def test_delete_removes_the_client_everywhere_and_nothing_else(world: h.World) -> None:
    world.reset()
    client = _ended_client(world)
    planted = _plant(world, client)
    doomed_recordings = _recording_keys(world, client)
    before = _snapshot(world)
    ctx = world.context(NOW)
    planned = jobs.plan(ctx, {"dry_run": False}, scheduled=False)
    assert jobs.needs_approval(planned)
    consumers = planned["totals"]["rows"]
    result = jobs.execute(ctx, planned)
    assert result["done"] == 1 and result["skipped"] == {}

    after = _snapshot(world)
    # every other client's rows are byte-identical; the client has none left
    for table, rows in before["rows"].items():
        if table in world.dm.systems["crm"].tables:
            assert after["rows"][table] == [r for r in rows if r[0] != client], table
        else:
            assert after["rows"][table] == rows, table  # unmapped: clients, holds, campaigns
    # every object is identical, except the client's recordings (gone) and log objects, which
    # keep exactly the other clients' lines, byte for byte (the tenant read independently here)
    assert set(after["objects"]) == set(before["objects"]) - doomed_recordings
    log_stores = [st for st in world.dm.stores.values() if isinstance(st, LogStore)]
    for where, body in after["objects"].items():
        bucket, key = where
        store = next(
            (st for st in log_stores if st.bucket == bucket and key.startswith(st.prefix)), None
        )
        if store is None:
            assert body == before["objects"][where], where
            continue
        kept = [
            line
            for line in before["objects"][where].splitlines(keepends=True)
            if str(json.loads(line).get(store.tenant_field)) != client
        ]
        assert body == b"".join(kept), where
    mixed = (planted["log_store"].bucket, planted["log_key"])
    assert after["objects"][mixed] == ("\n".join(planted["other_lines"]) + "\n").encode()
    # workspace documents of the client are gone; the receipt and the report stay
    left = h.admin_client(world.s3_url).list_objects_v2(Bucket=h.BUCKET).get("Contents", [])
    keys = {o["Key"] for o in left}
    assert not any(k.startswith((f"access/{client}/", f"accepted/{client}/")) for k in keys)
    receipt = json.loads(
        world.admin.get_object(Bucket=h.BUCKET, Key=scope.receipt_key(client, "delete"))[
            "Body"
        ].read()
    )
    assert receipt["residue"] == 0 and sum(receipt["deleted"]["tables"].values()) == consumers
    assert receipt["deleted"]["log_lines"][planted["log_store_name"]] >= 3
    assert sum(receipt["deleted"]["log_lines"].values()) == planned["totals"]["log_lines"]
    # backups: one tombstone per consumer of the client (R18)
    stones = state.tombstone_hashes(ctx.state, "crm", client)
    n_consumers = sum(1 for r in before["rows"]["contacts"] if r[0] == client)
    assert len(stones) == n_consumers > 0
    # the ledger: one entry, counts and a keyed hash, chain intact
    entries = [e for e in ledger.entries(ctx.state) if e.kind == "client_offboarded"]
    assert len(entries) == 1 and entries[0].ref == run.client_ref(ctx, client)
    assert entries[0].payload["counts"]["rows"] == consumers
    assert ledger.verify(ctx.state, ctx.hash_key).ok
    # a retry of the same execution changes nothing: same receipt, no second ledger entry
    again = jobs.execute(world.context(NOW), planned)
    assert again["done"] == 0 and again["already_done"] == [client]
    assert [e for e in ledger.entries(ctx.state) if e.kind == "client_offboarded"] == entries
    # done: the next run finds nobody
    assert jobs.plan(world.context(NOW), {}, scheduled=True)["clients"] == []


def test_held_client_is_never_touched(world: h.World) -> None:
    world.reset()
    client = _ended_client(world)
    eng = world.engine(world.crm_url)
    reg = world.dm.systems["crm"].holds
    holds = sa.Table(reg.table, sa.MetaData(), autoload_with=eng)
    with eng.begin() as conn:
        conn.execute(
            sa.insert(holds).values(
                {
                    reg.client_column: int(client),
                    reg.consumer_column: None,
                    reg.scope_column: "all",
                    reg.reason_column: "litigation",
                    reg.exception_column: "legal_claims",
                    "created_at": NOW.replace(tzinfo=None),
                }
            )
        )
    before = _snapshot(world)
    ctx = world.context(NOW)
    planned = jobs.plan(ctx, {"dry_run": False}, scheduled=True)
    assert planned["clients"] == [] and planned["held"] == [client]
    assert not jobs.needs_approval(planned)
    assert _snapshot(world) == before


def test_return_export_holds_all_of_the_client(world: h.World) -> None:
    world.reset()
    client = _ended_client(world)
    _plant(world, client)
    before = _snapshot(world)
    ctx = world.context(NOW)
    planned = jobs.plan(ctx, {"dry_run": False, "action": "return", "link_expiry_days": 3}, False)
    result = jobs.execute(ctx, planned)
    assert result["done"] == 1
    assert _snapshot(world) == before  # a return deletes nothing
    key = export.export_key(client, planned["run_id"])
    head = world.admin.head_object(Bucket=h.BUCKET, Key=key)
    assert head.get("ServerSideEncryption") in ("AES256", "aws:kms")
    link = json.loads(
        world.admin.get_object(Bucket=h.BUCKET, Key=export.link_key(client, planned["run_id"]))[
            "Body"
        ].read()
    )
    assert "X-Amz-Expires=259200" in link["url"]
    body = world.admin.get_object(Bucket=h.BUCKET, Key=key)["Body"].read()
    with zipfile.ZipFile(io.BytesIO(body)) as zf:
        manifest = json.loads(zf.read("manifest.json"))
        counted = {f["file"]: f for f in manifest["files"]}
        for table, rows in before["rows"].items():
            if table not in world.dm.systems["crm"].tables:
                continue
            mine = [r for r in rows if r[0] == client]
            as_csv = list(csv.DictReader(io.StringIO(zf.read(f"tables/crm.{table}.csv").decode())))
            as_json = json.loads(zf.read(f"tables/crm.{table}.json"))
            assert (
                len(as_csv)
                == len(as_json)
                == len(mine)
                == counted[f"tables/crm.{table}.csv"]["rows"]
            )
        contacts = json.loads(zf.read("tables/crm.contacts.json"))
        assert contacts and {str(c["client_id"]) for c in contacts} == {client}
        log_file = next(n for n in zf.namelist() if n.startswith("logs/") and zf.read(n))
        assert len(zf.read(log_file).splitlines()) >= 3
    entries = [e for e in ledger.entries(ctx.state) if e.kind == "client_data_returned"]
    assert len(entries) == 1 and "url" not in json.dumps(entries[0].payload)


def test_restored_backup_comes_back_without_the_client(world: h.World, tmp_path) -> None:
    """R18: the backups keep their snapshots; the client's tombstones purge a restore."""
    from compliance.core.stores.sql import engine_from_url
    from compliance.deletion import backups
    from compliance_dev.world.schema import metadata

    world.reset()
    client = _ended_client(world)
    ctx = world.context(NOW)
    jobs.execute(ctx, jobs.plan(ctx, {"dry_run": False}, scheduled=False))
    name, store = next(
        (n, s) for n, s in world.dm.stores.items() if s.kind == "backup" and s.system == "crm"
    )
    day = backups.snapshot_days(world.admin, store)[-1]
    engine = engine_from_url(f"sqlite:///{tmp_path / 'restored.db'}")
    metadata.create_all(engine)
    report = backups.restore(world.admin, world.dm, name, day, engine, ctx.state, ctx.hash_key)
    assert report["erased_consumers"] > 0
    with engine.connect() as conn:
        mine = conn.execute(
            sa.text("select count(*) from contacts where client_id = :c"), {"c": int(client)}
        ).scalar()
        others = conn.execute(
            sa.text("select count(*) from contacts where client_id <> :c"), {"c": int(client)}
        ).scalar()
    assert mine == 0 and others > 0
