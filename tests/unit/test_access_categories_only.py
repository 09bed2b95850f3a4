"""R5 (issue 15): an access request the business verified only for categories is planned into the
batch, but nothing is resolved, gathered or scanned for it, and it widens no store pass.

From documents through intake (`inbox.ingest`) to the batch (`access.plan`) and a real
`gather_system` pass over the demo CRM schema: the full request of one consumer gets rows; the
categories-only request of the same consumer gets none, has no consumers or identities in the
batch targets, and a categories-only batch fans out over no system and no log day.
"""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from compliance.access import batch as access_batch
from compliance.access import gather
from compliance.core.context import JobContext, Workspace
from compliance.core.datamap.validate import load_datamap
from compliance.core.outputs import put_json
from compliance.core.settings import REPO_ROOT, Settings
from compliance.core.stores.sql import engine_from_url
from compliance.requests import batches, inbox, state
from compliance_dev.world import schema as w

DM = load_datamap(REPO_ROOT / "config" / "datamap.yaml")
NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
BUCKET = "cj-r5-test"
EMAIL, EXTERNAL = "cat.only@example.com", "CRM-CAT-1"


def _doc(request_id: str, level: str | None, **identities) -> dict:
    at = (NOW - timedelta(days=2)).isoformat()
    verification = {"method": "email_link", "verified_at": at, "verified_by": "portal"}
    if level:
        verification["level"] = level
    return {
        "request_id": request_id,
        "client_id": 1,
        "type": "access",
        "identities": identities,
        "received_at": at,
        "verification": verification,
    }


def _world(db_url: str) -> sa.Engine:
    crm = engine_from_url(db_url)
    w.metadata.create_all(crm)
    t0 = (NOW - timedelta(days=30)).replace(tzinfo=None)
    with crm.begin() as c:
        c.execute(
            sa.insert(w.clients),
            [
                {
                    "client_id": 1,
                    "name": "Dealer",
                    "industry": "auto_dealer",
                    "state": "CA",
                    "active": True,
                    "created_at": t0,
                }
            ],
        )
        c.execute(
            sa.insert(w.contacts),
            [
                {
                    "contact_id": 10,
                    "client_id": 1,
                    "email": EMAIL,
                    "phone": "+14155550100",
                    "external_id": EXTERNAL,
                    "first_name": "Cat",
                    "last_name": "Only",
                    "is_child": False,
                    "created_at": t0,
                    "updated_at": t0,
                }
            ],
        )
    return crm


def _accepted(db_url: str, s3, tmp_path) -> tuple[JobContext, sa.Engine]:
    """The tiny CRM, FULL-1 and CAT-1 accepted from the inbox, and a context over them."""
    crm = _world(db_url)
    state_engine = engine_from_url(f"sqlite:///{tmp_path / 'state.db'}")
    state.create_state_schema(state_engine)
    for bucket in {BUCKET, *(st.bucket for st in DM.stores.values() if hasattr(st, "bucket"))}:
        s3.create_bucket(Bucket=bucket)  # empty log stores: the full request has no log day
    docs = [
        _doc("FULL-1", None, email=EMAIL),
        _doc("CAT-1", "categories", contact_id=EXTERNAL),  # the same person, other identity
    ]
    s3.put_object(
        Bucket=BUCKET,
        Key="inbox/1/r.ndjson",
        Body="\n".join(json.dumps(d) for d in docs).encode(),
    )
    summary = inbox.ingest(s3, BUCKET, {"1": True}, state_engine, b"k", NOW)
    assert summary.accepted == 2, summary

    ctx = JobContext(
        settings=Settings.from_env({}),
        datamap=DM,
        datamap_hash="test-map",
        workspace=Workspace(s3, BUCKET),
        state=state_engine,
        engines={"crm": crm},
        stores=dict.fromkeys(DM.stores, s3),
        clock=lambda: NOW,
        run_day=NOW.date(),
    )
    return ctx, crm


def test_categories_only_request_is_never_resolved_or_gathered(db_url, s3, tmp_path):
    ctx, crm = _accepted(db_url, s3, tmp_path)
    out = access_batch.plan(ctx)
    assert out["requests"] == 2 and out["systems"] == ["crm"]
    batch = access_batch.load(ctx.workspace, out["batch_id"], ctx.datamap_hash)
    refs = {batch.requests[r]["request_id"]: r for r in batch.refs}
    full, cat = refs["FULL-1"], refs["CAT-1"]
    assert batch.requests[cat]["scope"] == "categories" and batch.categories_only(cat)
    assert batch.requests[full]["scope"] == "specific_pieces"
    # no identity of the categories-only request is in the targets, none resolved
    assert cat not in batch.given and cat not in batch.identities
    assert all(cat not in per_ref for per_ref in batch.consumers.values())
    assert batch.gather_refs == [full]
    assert batch.union_window() == batch.window(full)
    targets = batch.log_targets()._index["1"]  # the log scanner's own index
    assert {ref for table in targets.values() for refs in table.values() for ref in refs} == {full}

    # even if the targets named consumers for it, gather would read nothing for it
    batch.consumers["crm"][cat] = ["10"]
    put_json(s3, BUCKET, access_batch.targets_key(batch.batch_id), batch.__dict__)
    counts = gather.gather_system(ctx.workspace, DM, crm, batch.batch_id, "crm")
    parts = gather.read_parts(s3, BUCKET, batch.batch_id)
    assert counts["requests_with_rows"] == 1 and parts[full] and cat not in parts

    # a batch of categories-only requests reads no store at all
    only = access_batch.AccessBatch("acc-cat", NOW.isoformat(), requests={cat: batch.requests[cat]})
    assert access_batch.fanout(DM, only, ctx.stores) == {
        "batch_id": "acc-cat",
        "requests": 1,
        "systems": [],
        "shards": [],
        "backup_shards": [],
    }
    crm.dispose()
    ctx.state.dispose()


def test_a_planned_access_batch_is_not_resumed_under_another_map(db_url, s3, tmp_path):
    """The batch's targets carry the map's digest: a resumed plan under an edited map refuses
    (`MapChanged`), and the form's `replan` abandons it and plans the same requests afresh."""
    ctx, crm = _accepted(db_url, s3, tmp_path)
    first = access_batch.plan(ctx)["batch_id"]
    assert access_batch.plan(ctx)["batch_id"] == first  # resumed: still planned
    edited = replace(ctx, datamap_hash="edited-map")
    with pytest.raises(batches.MapChanged, match=first):
        access_batch.plan(edited)
    assert state.get_batch(ctx.state, first).status == "planned"  # nothing was given up
    later = replace(edited, clock=lambda: NOW + timedelta(minutes=5))
    out = access_batch.plan(later, replan=True)
    assert out["batch_id"] != first and out["requests"] == 2
    assert state.get_batch(ctx.state, first).status != "planned"
    assert access_batch.load(ctx.workspace, out["batch_id"], "edited-map").refs
    crm.dispose()
    ctx.state.dispose()
