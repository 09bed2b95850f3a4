"""Contract end with `rewrite: true` on the second world's backups (G4 Art. 28(3)(g), R18).

The second world has string tenants ("01" and "1" are two), UUID consumer keys, a composite key
and rows three relations below the consumer; the dormant organisation's contract ended 400 days
ago. With the backup store switched to `rewrite: true` (the fixture of
test_second_world_backup_rewrite.py), the offboarding job functions run through
`compliance.runtime.context()`. The verdict comes from the world's ground truth (each row's
tenant), read with the `csv` module: the snapshots lose exactly the dormant organisation's
records, every other record keeps its bytes, no old version is left.
"""

from __future__ import annotations

import json

import pytest

from compliance import runtime
from compliance.jobs import offboarding as jobs
from compliance.offboarding import backups
from tests.e2e.test_second_world_backup_rewrite import (  # noqa: F401 (the w2 fixture)
    NOW,
    WORKSPACE,
    _records,
    _snapshots,
    _tables,
    w2,
)
from tests.second_world import generate

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("approvals_bypassed")]  # past the gate
DORMANT = generate.INACTIVE_TENANT


def test_the_dormant_organisation_leaves_the_snapshots(w2, s3):  # noqa: F811
    world, db_url = w2
    before = _snapshots(s3)
    ctx = runtime.context(lambda: NOW)
    planned = jobs.plan(ctx, {"dry_run": False}, scheduled=True)
    assert planned["clients"] == [DORMANT]
    assert jobs.execute(runtime.context(lambda: NOW), planned)["done"] == 1

    pks = {t.name: [c.name for c in t.primary_key.columns] for t in _tables(db_url)}
    after = _snapshots(s3)
    assert after.keys() == before.keys()
    removed, tables = 0, set()
    for key, data in sorted(before.items()):
        table = key.rsplit("/", 1)[1].removesuffix(".csv.gz")
        recs = _records(data)
        header = recs[0][1]
        kept = [recs[0][0]]
        for raw, fields in recs[1:]:
            row = dict(zip(header, fields, strict=True))
            truth = world.rows.get((table, tuple(row[c] for c in pks.get(table, []))))
            if truth is not None and truth.tenant == DORMANT:
                removed += 1
                tables.add(table)
            else:
                kept.append(raw)
        assert after[key] == b"".join(kept), key
    assert removed > 0 and len(tables) >= 3, tables  # the consumer table and rows below it
    old = [
        v
        for page in s3.get_paginator("list_object_versions").paginate(Bucket=generate.BACKUP_BUCKET)
        for v in page.get("Versions", [])
        if not v["IsLatest"]
    ]
    assert old == []
    receipt = json.loads(
        s3.get_object(Bucket=WORKSPACE, Key=f"receipts/offboarding/{DORMANT}/delete.json")[
            "Body"
        ].read()
    )
    done = receipt["deleted"]["backups"][generate.BACKUPS]
    assert done["rows_removed"] == removed and done["left"] == 0
    assert done["client_records_before"] == removed  # the check saw what the truth says


def test_the_check_counts_every_record_of_the_client_left_in_place(w2, s3):  # noqa: F811
    """Nothing rewritten: the independent check must find every one of the organisation's
    records (the world's ground truth), through the relations, as left."""
    world, db_url = w2
    pks = {t.name: [c.name for c in t.primary_key.columns] for t in _tables(db_url)}
    truth = 0
    for key, data in _snapshots(s3).items():
        table = key.rsplit("/", 1)[1].removesuffix(".csv.gz")
        recs = _records(data)
        for _, fields in recs[1:]:
            row = dict(zip(recs[0][1], fields, strict=True))
            found = world.rows.get((table, tuple(row[c] for c in pks.get(table, []))))
            truth += found is not None and found.tenant == DORMANT
    ctx = runtime.context(lambda: NOW)
    store = ctx.datamap.stores[generate.BACKUPS]
    system = ctx.datamap.systems[store.system]
    before = backups.client_records(ctx.store(generate.BACKUPS), store, system, DORMANT)
    assert truth > 0 and sum(map(len, before.values())) == truth
    assert backups.left_in_store(ctx, generate.BACKUPS, DORMANT, before) == truth
