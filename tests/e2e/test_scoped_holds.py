"""Scoped legal holds end to end (issue 15 point 2; R16.2, R19, R21), SQLite and PostgreSQL.

One seeded world (its registry has a live consumer hold on `messages`, `legal_claims`: the one
`make demo` shows), real deletion_requests runs (dag.test()):

1. a deletion request for that consumer: the run erases everything of the request but the held
   messages and their attachments, which stay byte-identical; the consumer row stays with only its
   key, tenant and relation columns; the request is `partial` and its receipt names what was kept
   (tables, row counts) and why (exception code, scope), never an identity value;
2. a second run while the hold lasts changes nothing (the request waits);
3. the hold expires: the next run erases the rest, the request completes, and its final receipt
   links the earlier partial erasure. Before this change any hold deferred the whole request.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from compliance.core.datamap.validate import load_datamap
from compliance.core.settings import REPO_ROOT

from . import worldview

pytestmark = pytest.mark.slow

DM = load_datamap(REPO_ROOT / "config" / "datamap.yaml")
LOG_BUCKETS = {s.bucket for s in DM.stores.values() if s.kind == "log"}
OBJECT_BUCKETS = {DM.stores["call_audio"].bucket, DM.stores["crm_backups"].bucket}
NOW = datetime.now(UTC)


def _held_consumer(url: str) -> dict:
    """The world's live consumer hold on `messages` (generate._legal_holds), by plain SQL."""
    eng = sa.create_engine(url)
    with eng.connect() as c:
        hold_id, contact, client, email = c.execute(
            sa.text(
                "select h.hold_id, c.contact_id, c.client_id, c.email from legal_holds h "
                "join contacts c on c.contact_id = h.contact_id where h.scope = 'messages' "
                "and h.expires_at > :now and c.email is not null order by h.hold_id limit 1"
            ),
            {"now": NOW.replace(tzinfo=None)},
        ).one()
        people = set(
            c.execute(
                sa.text(
                    "select contact_id from contacts where client_id = :cl and lower(email) = :e "
                    "union select contact_id from contact_aliases where client_id = :cl "
                    "and lower(email) = :e"
                ),
                {"cl": client, "e": email.lower()},
            ).scalars()
        )
        messages = set(
            c.execute(
                sa.text("select message_id from messages where contact_id = :c"), {"c": contact}
            ).scalars()
        )
        attachments = set(
            c.execute(
                sa.text(
                    "select a.attachment_id from message_attachments a join messages m "
                    "on m.message_id = a.message_id where m.contact_id = :c"
                ),
                {"c": contact},
            ).scalars()
        )
    eng.dispose()
    assert messages, "the held consumer has messages"
    return {
        "hold_id": hold_id,
        "contact": contact,
        "client": client,
        "email": email,
        "people": people,
        "held": {("messages", (m,)) for m in messages}
        | {("message_attachments", (a,)) for a in attachments},
    }


def _doc(request_id: str, client_id: int, email: str) -> dict:
    received = (NOW - timedelta(days=3)).isoformat()
    return {
        "request_id": request_id,
        "client_id": client_id,
        "type": "delete",
        "identities": {"email": email},
        "received_at": received,
        "verification": {"method": "email_link", "verified_at": received, "verified_by": "desk"},
    }


def _status(stack, request_id: str) -> tuple[str, str | None]:
    eng = sa.create_engine(stack.state_url)
    with eng.connect() as c:
        row = c.execute(
            sa.text("select status, reason_code from cj_requests where request_id = :r"),
            {"r": request_id},
        ).one()
    eng.dispose()
    return tuple(row)


def _receipt(stack, client, request_id) -> dict:
    key = f"receipts/{client}/{request_id}.delete.json"
    return json.loads(stack.s3.get_object(Bucket=stack.bucket, Key=key)["Body"].read())


def _keys(stack, prefix: str) -> set[str]:
    page = stack.s3.list_objects_v2(Bucket=stack.bucket, Prefix=prefix)
    return {o["Key"] for o in page.get("Contents", [])}


def test_scoped_hold_partial_erasure_then_the_rest_when_it_ends(stack):
    t = _held_consumer(stack.db_url)
    stack.s3.put_object(
        Bucket=stack.bucket,
        Key=f"inbox/{t['client']}/scoped.json",
        Body=json.dumps(_doc("DEL-SCOPED", t["client"], t["email"].upper())).encode(),
    )
    before = worldview.take(stack.db_url, stack.s3, LOG_BUCKETS, OBJECT_BUCKETS)
    assert stack.run_dag("deletion_requests", {"dry_run": False}).state == "success"
    after = worldview.take(stack.db_url, stack.s3, LOG_BUCKETS, OBJECT_BUCKETS)

    # 1. held rows byte-identical; the consumer row kept as a skeleton; everything else erased
    for key in t["held"]:
        assert after.rows[key] == before.rows[key], key
    contact = ("contacts", (t["contact"],))
    assert contact in after.rows and after.rows[contact] != before.rows[contact]
    eng = sa.create_engine(stack.db_url)
    with eng.connect() as c:
        skeleton = (
            c.execute(sa.text("select * from contacts where contact_id = :c"), {"c": t["contact"]})
            .one()
            ._mapping
        )
        owned_left = {
            table: c.execute(
                sa.text(f"select count(*) from {table} where contact_id = :c"), {"c": t["contact"]}
            ).scalar()
            for table in (
                "contact_aliases",
                "leads",
                "email_events",
                "web_visits",
                "support_tickets",
            )
        }
    eng.dispose()
    assert skeleton["client_id"] == t["client"]
    for col in ("email", "phone", "first_name", "last_name", "external_id", "address_line"):
        assert skeleton[col] is None, col
    assert not any(owned_left.values()), owned_left
    others = t["people"] - {t["contact"]}
    assert not any(("contacts", (p,)) in after.rows for p in others)  # the rest: erased
    assert _status(stack, "DEL-SCOPED") == ("partial", "legal_claims")

    receipt = _receipt(stack, t["client"], "DEL-SCOPED")
    assert receipt["status"] == "partial" and receipt["completed_at"] is None
    (hold,) = receipt["legal_holds"]["holds"]
    assert hold["scope"] == "messages" and hold["exception"] == "legal_claims"
    assert hold["hold"] == "consumer" and hold["rule"] == "R19"
    kept = {k["table"]: k["rows"] for k in hold["kept"] if "table" in k}
    assert kept["messages"] == sum(1 for table, _ in t["held"] if table == "messages")
    assert [p["table"] for p in hold["parents"]] == ["contacts"]
    assert "R21" in receipt["legal_holds"]["rules"]
    blob = json.dumps(receipt).lower()
    assert t["email"].lower() not in blob  # names and counts only, never an identity
    assert _keys(stack, f"held/{t['client']}/")  # the memory of what is left, encrypted

    # 2. while the hold lasts, a run changes nothing
    assert stack.run_dag("deletion_requests", {"dry_run": False}).state == "success"
    again = worldview.take(stack.db_url, stack.s3, LOG_BUCKETS, OBJECT_BUCKETS)
    assert again.rows == after.rows and again.lines == after.lines
    assert _status(stack, "DEL-SCOPED")[0] == "partial"

    # 3. the hold expires: the rest is erased and the request completes
    eng = sa.create_engine(stack.db_url)
    with eng.begin() as c:
        c.execute(
            sa.text("update legal_holds set expires_at = :t where hold_id = :h"),
            {"t": (NOW - timedelta(days=1)).replace(tzinfo=None), "h": t["hold_id"]},
        )
    eng.dispose()
    assert stack.run_dag("deletion_requests", {"dry_run": False}).state == "success"
    final = worldview.take(stack.db_url, stack.s3, LOG_BUCKETS, OBJECT_BUCKETS)
    assert not (t["held"] & set(final.rows)) and contact not in final.rows
    assert _status(stack, "DEL-SCOPED") == ("completed", None)
    done = _receipt(stack, t["client"], "DEL-SCOPED")
    assert done["status"] == "completed" and "legal_holds" not in done
    assert done["counts"]["crm"]["messages"] == kept["messages"]
    assert done["earlier_partial_erasure"]["kept"][0]["exception"] == "legal_claims"
    assert not _keys(stack, f"held/{t['client']}/")  # R20: nothing of the person left behind
    untouched = {k for k in before.rows if k[0] == "legal_holds"}
    assert all(final.rows[k] == before.rows[k] for k in untouched if k[1] != (t["hold_id"],))
