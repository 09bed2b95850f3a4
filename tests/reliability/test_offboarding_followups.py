"""Contract end, beyond the CRM: sub-processors told and `rewrite: true` backups cleaned.

On the tiny world with the DAG's own job functions (`compliance.jobs.offboarding`), as in
test_offboarding.py. What is proved, each by a check that fails if the job misbehaves:

- the ended client's sub-processors each get one contract-end notice through the notice outbox
  (G4 Art. 28(4), R16.3): the ESP's webhook receives it (no consumer identity in it), SNS is
  sent, e-mail waits `not_configured`; the receipt lists them; a retry queues nothing twice;
  the request-log row the notices hang on is left out of the R23 metrics;
- with `rewrite: true`, every snapshot loses exactly the client's records (ownership written by
  hand for the demo schema here, plain `csv`), every other record is byte-identical, no old
  version is left, and the residue oracle (`residue_oracle.backup_search`, no shared code with
  the rewrite) finds none of the client's consumers in any snapshot.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
from datetime import UTC, datetime
from types import SimpleNamespace

import pytest
import sqlalchemy as sa

from compliance.core.datamap.model import BackupStore
from compliance.core.sqlmap import key_text
from compliance.deletion import outbox
from compliance.deletion.residue_oracle.backup_search import verify_backup_store
from compliance.deletion.residue_oracle.values import Verdict
from compliance.deletion.subprocessors import Senders
from compliance.jobs import offboarding as jobs
from compliance.offboarding import notify, scope
from compliance.requests import state
from compliance.stats.config import Ccpa
from compliance.stats.metrics import ccpa_metrics, load_requests

from . import harness as h

pytestmark = pytest.mark.slow

NOW = h.T0


def _ended_client(world: h.World) -> str:
    with world.engine(world.crm_url).connect() as conn:
        ids = conn.execute(
            sa.text("select client_id from clients where contract_ended_at is not null")
        ).scalars()
        found = [key_text(i) for i in ids]
    assert len(found) == 1
    return found[0]


def test_subprocessors_get_one_contract_end_notice_each(world: h.World) -> None:
    world.reset()
    client = _ended_client(world)
    ctx = world.context(NOW)
    planned = jobs.plan(ctx, {"dry_run": False}, scheduled=False)
    result = jobs.execute(ctx, planned)
    assert result["done"] == 1

    receipt = json.loads(
        world.admin.get_object(Bucket=h.BUCKET, Key=scope.receipt_key(client, "delete"))[
            "Body"
        ].read()
    )
    names = sorted(sp.name for sp in world.dm.subprocessors)
    assert [n["name"] for n in receipt["subprocessors"]] == names
    # the ESP's webhook got exactly one notice, client-level: no identity, its categories
    got = [b for b in world.esp_received if b.get("type") == notify.NOTICE_TYPE]
    assert len(got) == 1, world.esp_received
    esp = next(sp for sp in world.dm.subprocessors if sp.channel == "webhook")
    assert got[0]["client_id"] == client and got[0]["identities"] == {}
    assert got[0]["categories"] == [c.value for c in esp.categories]
    assert "G4 Art. 28(3)(g)" in got[0]["rules"]
    # the outbox tracks each: acknowledged (webhook), sent (SNS), waiting (e-mail, no SMTP here)
    pk = notify._request_pk(ctx, client)
    rows = state.notices_of(ctx.state, [pk])[pk]
    assert sorted(rows) == names
    by_channel = {r.channel: r.status for r in rows.values()}
    assert by_channel == {"webhook": "acknowledged", "sns": "sent", "email": "not_configured"}
    assert result["notices"]["acknowledged"] == 1
    # a retry of the same execution (receipt there) and the outbox's next pass add no notice
    assert jobs.execute(world.context(NOW), planned)["already_done"] == [client]
    notify.queue_notices(ctx, client)
    assert sorted(state.notices_of(ctx.state, [pk])[pk]) == names
    assert len([b for b in world.esp_received if b.get("type") == notify.NOTICE_TYPE]) == 1
    # what is still open is retried by the outbox, like a deletion request's notices
    later = outbox.deliver(
        world.admin,
        h.BUCKET,
        world.dm,
        ctx.state,
        ctx.hash_key,
        datetime(2026, 12, 1, tzinfo=UTC),
        Senders.of(ctx),
    )
    assert later == {"sent": 1, "not_configured": 1}  # SNS again (no ack), e-mail waits
    # the row is not a consumer request: the R23 metrics do not count it
    requests = load_requests(ctx.state)
    assert requests is not None and (requests["type"] == notify.REQUEST_TYPE).sum() == 1
    metrics, _ = ccpa_metrics(requests, NOW.year, NOW, Ccpa())
    assert notify.REQUEST_TYPE not in set(metrics["request_type"])


@pytest.fixture
def rewrite_world(world, monkeypatch):
    stores = {
        n: s.model_copy(update={"rewrite": True}) if isinstance(s, BackupStore) else s
        for n, s in world.dm.stores.items()
    }
    world.dm = world.dm.model_copy(update={"stores": stores})
    for key, value in world.env().items():
        monkeypatch.setenv(key, value)
    return world


def _objects(world: h.World, bucket: str) -> dict[str, bytes]:
    out = {}
    for page in world.admin.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for o in page.get("Contents", []):
            body = world.admin.get_object(Bucket=bucket, Key=o["Key"])["Body"].read()
            out[o["Key"]] = gzip.decompress(body)
    return out


def _records(data: bytes) -> list[tuple[bytes, list[str]]]:
    """(raw bytes, fields) per record, header first (a quoted newline spans two lines)."""
    lines = io.StringIO(data.decode("utf-8"), newline="").readlines()
    reader = csv.reader(iter(lines))
    out, consumed = [], 0
    for row in reader:
        out.append(("".join(lines[consumed : reader.line_num]).encode(), row))
        consumed = reader.line_num
    return out


PARENTS = {"message_attachments": ("messages", "message_id"), "ticket_comments": ("support_tickets", "ticket_id")}  # fmt: skip


def test_rewrite_backups_lose_the_client_and_keep_every_other_byte(rewrite_world) -> None:
    w = rewrite_world
    w.reset()
    client = _ended_client(w)
    name, store = next((n, s) for n, s in w.dm.stores.items() if isinstance(s, BackupStore))
    with w.engine(w.crm_url).connect() as conn:
        consumers = {
            str(c)
            for c in conn.execute(
                sa.text("select contact_id from contacts where client_id = :c"), {"c": int(client)}
            ).scalars()
        }
    before = _objects(w, store.bucket)
    ctx = w.context(NOW)
    planned = jobs.plan(ctx, {"dry_run": False}, scheduled=False)
    result = jobs.execute(ctx, planned)
    assert result["done"] == 1
    after = _objects(w, store.bucket)
    assert after.keys() == before.keys()

    mapped = w.dm.systems["crm"].tables
    removed = 0
    for day in sorted({k.rsplit("/", 1)[0] for k in before}):
        # the client's parent keys of the day, from the snapshot itself (hand-written ownership)
        mine: dict[str, set[str]] = {"messages": set(), "support_tickets": set()}
        for parent, key_col in PARENTS.values():
            recs = _records(before.get(f"{day}/{parent}.csv.gz", b""))
            for _, fields in recs[1:]:
                row = dict(zip(recs[0][1], fields, strict=True))
                if row["client_id"] == client:
                    mine[parent].add(row[key_col])
        for key in sorted(k for k in before if k.startswith(day + "/")):
            table = key.rsplit("/", 1)[1].removesuffix(".csv.gz")
            if table not in mapped:
                assert after[key] == before[key], key  # unmapped (the registry): untouched
                continue
            recs = _records(before[key])
            kept = [recs[0][0]]
            for raw, fields in recs[1:]:
                row = dict(zip(recs[0][1], fields, strict=True))
                if table in PARENTS:
                    parent, col = PARENTS[table]
                    owned = row[col] in mine[parent]
                else:
                    owned = row["client_id"] == client
                if owned:
                    removed += 1
                else:
                    kept.append(raw)
            assert after[key] == b"".join(kept), key
    assert removed > 0
    versions = [
        v
        for page in w.admin.get_paginator("list_object_versions").paginate(Bucket=store.bucket)
        for v in page.get("Versions", []) + page.get("DeleteMarkers", [])
    ]
    assert all(v.get("IsLatest") for v in versions)  # no old version keeps the client's rows

    receipt = json.loads(
        w.admin.get_object(Bucket=h.BUCKET, Key=scope.receipt_key(client, "delete"))["Body"].read()
    )
    done = receipt["deleted"]["backups"][name]
    assert done["rows_removed"] == removed == done["client_records_before"]
    assert done["left"] == 0 and "rewritten" in receipt["backups"]

    # the residue oracle, with the client's consumers as the erased keys: none in any snapshot
    targets = SimpleNamespace(
        requests={"c": {"client_id": client}},
        consumers={"crm": {"c": sorted(consumers)}},
        given={},
        identities={},
        active_refs=lambda: ["c"],
    )
    verdict = Verdict()
    verify_backup_store(w.admin, name, store, w.dm.systems["crm"], "crm", targets, verdict)
    assert verdict.backups[name]["days"] > 0 and verdict.clean, verdict.describe()

    # a retry of the approved execution (the receipt is there) rewrites nothing
    assert jobs.execute(w.context(NOW), planned)["already_done"] == [client]
    assert _objects(w, store.bucket) == after


def test_a_rewrite_that_leaves_the_client_fails_the_step(rewrite_world, monkeypatch) -> None:
    """The check after the rewrite is its own: a rewrite that removes nothing is caught."""
    from compliance.deletion import backup_rewrite

    w = rewrite_world
    w.reset()
    client = _ended_client(w)
    monkeypatch.setattr(
        backup_rewrite, "rewrite_store", lambda *a, **k: backup_rewrite.StoreResult()
    )
    ctx = w.context(NOW)
    with pytest.raises(RuntimeError, match=r"backups\.crm_backups"):
        jobs.execute(ctx, jobs.plan(ctx, {"dry_run": False}, scheduled=False))
    assert not scope.exists(ctx, scope.receipt_key(client, "delete"))  # not done: rerun converges
