"""deletion_requests end to end (R16-R21): real DAG runs on SQLite and PostgreSQL with moto S3.

The expected effect is computed independently of the code under test (plain SQL and json over
the seeded world), then compared with what the DAG did; everything else must be byte-identical.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from compliance.core.datamap.validate import load_datamap
from compliance.core.settings import REPO_ROOT

from . import worldview

DM = load_datamap(REPO_ROOT / "config" / "datamap.yaml")
LOG_BUCKETS = {s.bucket for s in DM.stores.values() if s.kind == "log"}
AUDIO_BUCKET = DM.stores["call_audio"].bucket
BACKUP_BUCKET = DM.stores["crm_backups"].bucket
NOW = datetime.now(UTC)


def _doc(request_id: str, client_id: int, **identities) -> dict:
    received = (NOW - timedelta(days=3)).isoformat()
    return {
        "request_id": request_id,
        "client_id": client_id,
        "type": "delete",
        "identities": identities,
        "received_at": received,
        "verification": {
            "method": "account_login",
            "verified_at": received,
            "verified_by": "staff-7",
        },
    }


def _pick_targets(url: str) -> dict:
    """Choose consumers that exercise the hard cases, from the seeded world."""
    eng = sa.create_engine(url)
    with eng.connect() as c:
        multi_tenant = c.execute(
            sa.text(
                "select lower(email) from contacts where email is not null and is_child = false "
                "group by lower(email) having count(distinct client_id) > 1 order by 1 limit 1"
            )
        ).scalar_one()
        mt_client = c.execute(
            sa.text("select min(client_id) from contacts where lower(email) = :e"),
            {"e": multi_tenant},
        ).scalar_one()
        aliased = c.execute(
            sa.text(
                "select c.client_id, c.phone from contacts c join contact_aliases a "
                "on a.contact_id = c.contact_id join clients k on k.client_id = c.client_id "
                "where c.phone is not null and k.active = true and c.client_id <> :mt "
                "and not exists (select 1 from legal_holds h where h.client_id = c.client_id) "
                "order by c.contact_id limit 1"
            ),
            {"mt": mt_client},
        ).one()
        held = c.execute(
            sa.text(
                "select h.client_id, c.external_id from legal_holds h join contacts c "
                "on c.contact_id = h.contact_id where h.expires_at is null or h.expires_at > :now "
                "order by h.hold_id limit 1"
            ),
            {"now": NOW.replace(tzinfo=None)},
        ).first()
    eng.dispose()
    return {"multi_tenant": (mt_client, multi_tenant), "aliased": tuple(aliased), "held": held}


def _expected(url: str, client_id: int, where: str, params: dict) -> dict:
    """Consumers, their identities and owned row keys, by hand-written SQL (independent)."""
    eng = sa.create_engine(url)
    with eng.connect() as c:
        ids = set(
            c.execute(
                sa.text(
                    f"select contact_id from contacts where client_id = :cl and ({where}) union "
                    f"select a.contact_id from contact_aliases a where a.client_id = :cl and ({where.replace('email', 'a.email').replace('phone', 'a.phone')})"
                ),
                {"cl": client_id, **params},
            ).scalars()
        )
        if not ids:
            return {"ids": set(), "emails": set(), "phones": set(), "external": set()}
        inlist = ",".join(str(i) for i in ids)
        emails = {
            e.lower()
            for (e,) in c.execute(
                sa.text(
                    f"select email from contacts where contact_id in ({inlist}) and email is not null union "
                    f"select email from contact_aliases where contact_id in ({inlist}) and email is not null"
                )
            )
        }
        phones = set(
            c.execute(
                sa.text(
                    f"select phone from contacts where contact_id in ({inlist}) and phone is not null union "
                    f"select phone from contact_aliases where contact_id in ({inlist}) and phone is not null union "
                    f"select caller_phone from call_recordings where contact_id in ({inlist}) and caller_phone is not null"
                )
            ).scalars()
        )
        external = set(
            c.execute(
                sa.text(
                    f"select external_id from contacts where contact_id in ({inlist}) and external_id is not null"
                )
            ).scalars()
        )
        keys = set(
            c.execute(
                sa.text(f"select s3_key from call_recordings where contact_id in ({inlist})")
            ).scalars()
        )
        owned = set()
        for table, pk in [
            ("contacts", "contact_id"),
            ("contact_aliases", "alias_id"),
            ("leads", "lead_id"),
            ("messages", "message_id"),
            ("email_events", "event_id"),
            ("web_visits", "visit_id"),
            ("call_recordings", "recording_id"),
            ("portal_accounts", "account_id"),
            ("support_tickets", "ticket_id"),
        ]:
            col = "contact_id"
            owned |= {
                (table, (r,))
                for r in c.execute(
                    sa.text(f"select {pk} from {table} where {col} in ({inlist})")
                ).scalars()
            }
        owned |= {
            ("message_attachments", (r,))
            for r in c.execute(
                sa.text(
                    f"select a.attachment_id from message_attachments a join messages m on m.message_id = a.message_id where m.contact_id in ({inlist})"
                )
            ).scalars()
        }
        owned |= {
            ("ticket_comments", (r,))
            for r in c.execute(
                sa.text(
                    f"select t.comment_id from ticket_comments t join support_tickets s on s.ticket_id = t.ticket_id where s.contact_id in ({inlist})"
                )
            ).scalars()
        }
        masked = {
            ("payments", (r,))
            for r in c.execute(
                sa.text(f"select payment_id from payments where contact_id in ({inlist})")
            ).scalars()
        }
    eng.dispose()
    return {
        "client": client_id,
        "ids": ids,
        "emails": emails,
        "phones": phones,
        "external": external,
        "audio": keys,
        "owned": owned,
        "masked": masked,
    }


def _line_matches(line: bytes, exp: dict) -> bool:
    rec = json.loads(line)
    tenant = rec.get("client_id", rec.get("tenant"))
    if str(tenant) != str(exp["client"]):
        return False
    email = rec.get("email") or rec.get("rcpt") or ""
    return (
        (isinstance(email, str) and email.lower() in exp["emails"])
        or rec.get("phone") in exp["phones"]
        or str(rec.get("contact_id")) in {str(i) for i in exp["ids"]}
    )


@pytest.fixture
def requests_dropped(stack):
    t = _pick_targets(stack.db_url)
    mt_client, mt_email = t["multi_tenant"]
    al_client, al_phone = t["aliased"]
    expected = [
        _expected(stack.db_url, mt_client, "lower(email) = :e", {"e": mt_email}),
        _expected(stack.db_url, al_client, "phone = :p", {"p": al_phone}),
    ]
    batch = [
        _doc("DEL-1", mt_client, email=mt_email.upper()),  # case-insensitive e-mail
        _doc("DEL-2", al_client, phone=al_phone),
    ]
    stack.s3.put_object(
        Bucket=stack.bucket,
        Key=f"inbox/{mt_client}/batch.ndjson",
        Body="\n".join(json.dumps(d) for d in batch[:1]).encode(),
    )
    stack.s3.put_object(
        Bucket=stack.bucket, Key=f"inbox/{al_client}/one.json", Body=json.dumps(batch[1]).encode()
    )
    bad = _doc("BAD-1", mt_client, email="nobody@example.com")
    del bad["verification"]
    stack.s3.put_object(
        Bucket=stack.bucket, Key=f"inbox/{mt_client}/bad.json", Body=json.dumps(bad).encode()
    )
    stack.s3.put_object(
        Bucket=stack.bucket, Key=f"inbox/{mt_client}/garbage.json", Body=b"{not json"
    )
    held = None
    if t["held"] is not None:
        held = t["held"]
        stack.s3.put_object(
            Bucket=stack.bucket,
            Key=f"inbox/{held[0]}/held.json",
            Body=json.dumps(_doc("DEL-HELD", held[0], contact_id=held[1])).encode(),
        )
    return expected, held


def test_deletion_batch_erases_exactly_the_targets(stack, requests_dropped, esp_webhook):
    expected, held = requests_dropped
    before = worldview.take(stack.db_url, stack.s3, LOG_BUCKETS, {AUDIO_BUCKET, BACKUP_BUCKET})
    run = stack.run_dag("deletion_requests", {"dry_run": False})
    assert run.state == "success"
    after = worldview.take(stack.db_url, stack.s3, LOG_BUCKETS, {AUDIO_BUCKET, BACKUP_BUCKET})

    # CRM: exactly the targets' rows are gone, their payments masked, all else byte-identical
    owned = set().union(*(e["owned"] for e in expected))
    masked = set().union(*(e["masked"] for e in expected))
    assert owned, "the chosen targets own rows"
    gone = {k for k in before.rows if k not in after.rows}
    changed = {k for k in before.rows if k in after.rows and before.rows[k] != after.rows[k]}
    assert gone == owned
    assert changed == masked
    assert not (set(after.rows) - set(before.rows))

    # Logs: the targets' lines (own tenant only) are gone; every other line is byte-identical
    touched = 0
    for (bucket, key), lines in before.lines.items():
        store = next(s for s in DM.stores.values() if s.kind == "log" and key.startswith(s.prefix))
        want = []
        for ln in lines:
            if not any(_line_matches(ln, e) for e in expected):
                want.append(ln)  # byte-identical
                continue
            touched += 1
            if store.erase == "redact":  # personal fields blanked, line kept
                rec = json.loads(ln)
                want.append({k: "[redacted]" if k in store.fields else v for k, v in rec.items()})
        got = [
            json.loads(ln) if isinstance(w, dict) else ln
            for ln, w in zip(after.lines[(bucket, key)], want, strict=False)
        ]
        assert len(after.lines[(bucket, key)]) == len(want) and got == want, key
    assert touched > 0

    # Recordings: the targets' audio is gone (all versions); other objects untouched
    audio = set().union(*(e["audio"] for e in expected))
    assert {k for (b, k) in before.objects if b == AUDIO_BUCKET} - {
        k for (b, k) in after.objects if b == AUDIO_BUCKET
    } == audio
    for key in audio:
        versions = stack.s3.list_object_versions(Bucket=AUDIO_BUCKET, Prefix=key)
        assert not versions.get("Versions") and not versions.get("DeleteMarkers")
    assert {k: v for k, v in before.objects.items() if k[0] == BACKUP_BUCKET} == {
        k: v for k, v in after.objects.items() if k[0] == BACKUP_BUCKET
    }  # rewrite: false

    # Receipts, rejections, ledger
    receipts = {
        o["Key"]
        for o in stack.s3.list_objects_v2(Bucket=stack.bucket, Prefix="receipts/").get(
            "Contents", []
        )
    }
    assert {k.rsplit("/", 1)[1] for k in receipts} == {"DEL-1.delete.json", "DEL-2.delete.json"}
    for key in receipts:
        receipt = json.loads(stack.s3.get_object(Bucket=stack.bucket, Key=key)["Body"].read())
        assert receipt["verification"]["statement"].startswith("every system re-checked")
        assert receipt["counts"]["crm"]["contacts"] >= 1
    rejected = [
        o["Key"]
        for o in stack.s3.list_objects_v2(Bucket=stack.bucket, Prefix="rejected/").get(
            "Contents", []
        )
    ]
    reasons = [
        json.loads(stack.s3.get_object(Bucket=stack.bucket, Key=k)["Body"].read())
        for k in rejected
        if k.endswith(".reasons.json")
    ]
    assert sorted(r[0]["reason"] for r in reasons) == ["invalid_json", "not_verified"]
    assert not stack.s3.list_objects_v2(Bucket=stack.bucket, Prefix="inbox/").get("Contents")

    from compliance.core import ledger

    state = sa.create_engine(stack.state_url)
    assert ledger.verify(state, b"e2e-test-key").ok
    with state.connect() as c:
        statuses = dict(c.execute(sa.text("select request_id, status from cj_requests")).all())
    state.dispose()
    assert statuses["DEL-1"] == statuses["DEL-2"] == "completed"
    if held is not None:
        assert statuses["DEL-HELD"] == "deferred"

    # Nothing leaks: no target identity in receipts, ledger or XComs
    secrets = set().union(*(e["emails"] | e["phones"] for e in expected))
    blobs = [
        stack.s3.get_object(Bucket=stack.bucket, Key=k)["Body"].read().decode() for k in receipts
    ]
    with sa.create_engine(stack.state_url).connect() as c:
        blobs += [
            json.dumps(list(r), default=str)
            for r in c.execute(sa.text("select payload, ref from cj_ledger")).all()
        ]
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        blobs += [
            str(x.value) for x in session.query(XComModel).filter(XComModel.run_id == run.run_id)
        ]
    for blob in blobs:
        low = blob.lower()
        assert not any(s.lower() in low for s in secrets)

    # Sub-processors were told (R16.3): the ESP's webhook got one notice per request, acknowledged
    assert len(esp_webhook) == 2 and all(n["type"] == "deletion" for n in esp_webhook)
    with sa.create_engine(stack.state_url).connect() as c:
        notices = dict(
            c.execute(
                sa.text("select subprocessor || ':' || status, count(*) from cj_notices group by 1")
            ).all()
        )
    assert notices.get("esp_mailer:acknowledged") == 2 and notices.get("transcription:sent") == 2
    assert notices.get("payment_gateway:not_configured") == 2

    # A second run changes nothing
    again = stack.run_dag("deletion_requests", {"dry_run": False})
    assert again.state == "success"
    final = worldview.take(stack.db_url, stack.s3, LOG_BUCKETS, {AUDIO_BUCKET, BACKUP_BUCKET})
    assert (
        final.rows == after.rows and final.lines == after.lines and final.objects == after.objects
    )


def test_backup_restore_reapplies_deletions(stack, requests_dropped, tmp_path):
    """R18: a snapshot taken before the erasure, restored, comes back without the targets."""
    from compliance.core.stores.sql import engine_from_url
    from compliance.deletion import backups

    expected, _ = requests_dropped
    run = stack.run_dag("deletion_requests", {"dry_run": False})
    assert run.state == "success"
    day = sorted(
        {
            k.split("/")[1]
            for (b, k) in worldview.take(stack.db_url, stack.s3, set(), {BACKUP_BUCKET}).objects
        }
    )[-1]
    target = f"sqlite:///{tmp_path / 'restored.db'}"
    engine = engine_from_url(target)
    from compliance_dev.world.schema import metadata

    metadata.create_all(engine)  # a restore goes into a database that has the CRM's schema
    report = backups.restore(
        stack.s3, DM, "crm_backups", day, engine, engine_from_url(stack.state_url), b"e2e-test-key"
    )
    assert report["erased_consumers"] >= sum(len(e["ids"]) for e in expected)
    with engine.connect() as c:
        left = c.execute(
            sa.text(
                "select count(*) from contacts where contact_id in ({})".format(
                    ",".join(str(i) for e in expected for i in e["ids"])
                )
            )
        ).scalar()
        total = c.execute(sa.text("select count(*) from contacts")).scalar()
    assert left == 0 and total > 0


def _workspace(stack) -> dict[str, str]:
    """Every workspace object but the dry run's own outputs, by ETag."""
    pages = stack.s3.get_paginator("list_objects_v2").paginate(Bucket=stack.bucket)
    return {
        o["Key"]: o["ETag"]
        for page in pages
        for o in page.get("Contents", [])
        if not o["Key"].startswith(("summaries/", "deletion/dry-runs/"))
    }


def test_dry_run_changes_nothing_and_predicts_the_receipts(stack, requests_dropped, esp_webhook):
    """Issue 7: a manual run defaults to a dry run. It moves no inbox document, writes no state
    row, erases nothing and sends nothing; its report names every request the real run then
    completes (or defers, R19) with exactly the counts the receipts then give, and every
    document the real run refuses."""
    expected, held = requests_dropped
    buckets = (LOG_BUCKETS, {AUDIO_BUCKET, BACKUP_BUCKET})
    world = worldview.take(stack.db_url, stack.s3, *buckets)
    workspace, state_rows = _workspace(stack), worldview.db_rows(stack.state_url)
    notices = len(esp_webhook)
    # (a staff entry is refused on the staff page itself, before the inbox: test_staff_entry.py)
    assert stack.run_dag("deletion_requests", {}).state == "success"  # dry_run: default

    assert worldview.take(stack.db_url, stack.s3, *buckets) == world
    assert _workspace(stack) == workspace  # inbox untouched, no accepted/, no batches/ left
    assert worldview.db_rows(stack.state_url) == state_rows  # no request, batch or ledger row
    assert len(esp_webhook) == notices  # no sub-processor told anything
    (key,) = [
        o["Key"]
        for o in stack.s3.list_objects_v2(Bucket=stack.bucket, Prefix="deletion/dry-runs/")[
            "Contents"
        ]
        if o["Key"].endswith("report.json")
    ]
    report = json.loads(stack.s3.get_object(Bucket=stack.bucket, Key=key)["Body"].read())
    html = stack.s3.get_object(Bucket=stack.bucket, Key=key.replace("report.json", "index.html"))
    assert b"DEL-1" in html["Body"].read()
    by_id = {r["request_id"]: r for r in report["requests"]}
    assert {r["source"] for r in by_id.values()} == {"new"}
    assert {r["request_id"] for r in report["rejections"]} >= {"BAD-1"}

    assert stack.run_dag("deletion_requests", {"dry_run": False}).state == "success"
    for request_id, planned in by_id.items():
        if planned["action"] == "defer":
            assert held is not None and request_id == "DEL-HELD"
            continue
        client = planned["client_id"]
        receipt = json.loads(
            stack.s3.get_object(
                Bucket=stack.bucket, Key=f"receipts/{client}/{request_id}.delete.json"
            )["Body"].read()
        )
        assert planned["counts"] == receipt["counts"], request_id
    assert {r for r, p in by_id.items() if p["action"] == "erase"} == {"DEL-1", "DEL-2"}
    for request_id, exp in zip(("DEL-1", "DEL-2"), expected, strict=True):  # independent SQL
        contacts = sum(1 for table, _ in exp["owned"] if table == "contacts")
        assert by_id[request_id]["counts"]["crm"]["contacts"] == contacts
    assert sum(n.get("lines", 0) for r in by_id.values() for n in r["counts"].values()) > 0
