"""The law holds past the first request (issue 15), end to end on SQLite and PostgreSQL.

One seeded world, real DAG runs (dag.test()), documents dropped in the S3 inbox:

1. a consumer is erased (deletion_requests); in the same intake an access request arrives that
   the business received 20 days before forwarding it (R1: the clock runs from its receipt);
2. the deadline watchdog, whose last check was yesterday (before the request reached us), runs
   once: the acknowledgement is already overdue and the FIRST run after intake alerts (R2, R3):
   intake stamps `accepted_at`, which makes the request new to the watchdog;
3. the client collects the consumer's data again (new CRM rows, a new log line) and forwards a
   new deletion for the same identities: it is a new request, not a `duplicate` (R16, R20; R7
   concerns right-to-know repeats), everything is erased again, and its receipt links the first
   request by its keyed ref (never an id of the person) and shows the stored records (R1, R5).
"""

from __future__ import annotations

import gzip
import json
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from compliance.core.datamap.validate import load_datamap
from compliance.core.settings import REPO_ROOT
from compliance.requests import request_records

from .test_alert_channels import channels, slack_server, smtp_server  # noqa: F401 (fixtures)

pytestmark = pytest.mark.slow

DM = load_datamap(REPO_ROOT / "config" / "datamap.yaml")
APP_LOGS = DM.stores["app_logs"]
HASH_KEY = b"e2e-test-key"  # tests/e2e/conftest.py


def _doc(request_id: str, client_id: str, type_: str, received: datetime, **identities) -> dict:
    return {
        "request_id": request_id,
        "client_id": client_id,
        "type": type_,
        "identities": identities,
        "received_at": received.isoformat(),
        "forwarded_at": (received + timedelta(hours=1)).isoformat(),
        "verification": {
            "method": "Account login",
            "verified_at": received.isoformat(),
            "verified_by": "Privacy desk, Jane Roe",
        },
    }


def _drop(stack, client_id: str, name: str, doc: dict) -> None:
    stack.s3.put_object(
        Bucket=stack.bucket, Key=f"inbox/{client_id}/{name}.json", Body=json.dumps(doc).encode()
    )


def _receipt(stack, client_id: str, request_id: str) -> dict:
    key = f"receipts/{client_id}/{request_id}.delete.json"
    return json.loads(stack.s3.get_object(Bucket=stack.bucket, Key=key)["Body"].read())


def _pick(db_url: str) -> tuple[tuple[str, str], tuple[str, str]]:
    """Two adults of active clients without any legal hold, each the only holder of its e-mail
    in its client: (client, email) of the one to erase, and of the one who asks to know."""
    eng = sa.create_engine(db_url)
    with eng.connect() as c:
        rows = c.execute(
            sa.text(
                "select c.client_id, lower(c.email) from contacts c "
                "join clients k on k.client_id = c.client_id "
                "where c.email is not null and c.is_child = false and k.active = true "
                "and not exists (select 1 from legal_holds h where h.client_id = c.client_id) "
                "and not exists (select 1 from contact_aliases a where a.contact_id = c.contact_id) "
                "and (select count(*) from contacts o where o.client_id = c.client_id "
                "     and lower(o.email) = lower(c.email)) = 1 "
                "order by c.contact_id limit 2"
            )
        ).all()
    eng.dispose()
    (c1, e1), (c2, e2) = rows
    return (str(c1), e1), (str(c2), e2)


def _collect_again(stack, client_id: str, email: str, now: datetime) -> str:
    """The client's systems gather the consumer's data again: a contact and a lead in the CRM,
    and a log line (beside another consumer's line, which must survive). Returns the log key."""
    eng = sa.create_engine(stack.db_url)
    with eng.begin() as c:
        contact = c.execute(sa.text("select max(contact_id) + 1 from contacts")).scalar_one()
        lead = c.execute(sa.text("select max(lead_id) + 1 from leads")).scalar_one()
        stamp = now.replace(tzinfo=None)
        c.execute(
            sa.text(
                "insert into contacts (contact_id, client_id, email, first_name, is_child, "
                "created_at, updated_at) values (:id, :cl, :e, 'Again', false, :t, :t)"
            ),
            {"id": contact, "cl": int(client_id), "e": email.title(), "t": stamp},
        )
        c.execute(
            sa.text(
                "insert into leads (lead_id, contact_id, client_id, source, created_at) "
                "values (:id, :c, :cl, 'web', :t)"
            ),
            {"id": lead, "c": contact, "cl": int(client_id), "t": stamp},
        )
    eng.dispose()
    key = f"{APP_LOGS.prefix}{now.strftime(APP_LOGS.partition)}part-09999.jsonl.gz"
    lines = [
        {"ts": now.isoformat(), "client_id": int(client_id), "email": email, "ip": "10.0.0.9"},
        {"ts": now.isoformat(), "client_id": int(client_id), "email": "someone-else@example.org"},
    ]
    body = "".join(json.dumps(line) + "\n" for line in lines).encode()
    stack.s3.put_object(Bucket=APP_LOGS.bucket, Key=key, Body=gzip.compress(body))
    return key


def _holders(stack, client_id: str, email: str) -> int:
    eng = sa.create_engine(stack.db_url)
    with eng.connect() as c:
        n = c.execute(
            sa.text("select count(*) from contacts where client_id = :cl and lower(email) = :e"),
            {"cl": int(client_id), "e": email},
        ).scalar_one()
    eng.dispose()
    return n


def test_late_forwarded_request_alerts_and_a_repeat_deletion_erases_again(stack, channels):  # noqa: F811
    now = datetime.now(UTC)
    (client, email), (asker_client, asker_email) = _pick(stack.db_url)

    # 1. the first deletion, and an access request received 20 days before it reached us
    _drop(
        stack,
        client,
        "first",
        _doc("REP-1", client, "delete", now - timedelta(days=3), email=email),
    )
    late = _doc("LATE-1", asker_client, "access", now - timedelta(days=20), email=asker_email)
    late["forwarded_at"] = (now - timedelta(days=1)).isoformat()
    _drop(stack, asker_client, "late", late)
    assert stack.run_dag("deletion_requests", {"dry_run": False}).state == "success"
    assert _holders(stack, client, email) == 0
    first = _receipt(stack, client, "REP-1")
    assert first["previous_requests"] == []
    record = first["request_record"]
    assert record["verification"]["method"] == "account_login"  # a code (R5)
    assert record["verification"]["verified_by_hash"] == request_records.verifier_hash(
        HASH_KEY, client, "Privacy desk, Jane Roe"
    )
    assert record["forwarded_at"] is not None and record["guardian_verification"] is None
    assert "Jane" not in json.dumps(first)

    # 2. the watchdog's first run after intake: the acknowledgement is already overdue (R2)
    conf = {
        "as_of": now.date().isoformat(),
        "last_check": (now - timedelta(days=1)).isoformat(),  # yesterday, before intake
    }
    assert stack.run_dag("deadline_watchdog", conf).state == "success"
    report = json.loads(
        stack.s3.get_object(Bucket=stack.bucket, Key=f"deadlines/{now.date()}/watchdog.json")[
            "Body"
        ].read()
    )
    assert [(a["request_id"], a["clock"], a["level"]) for a in report["alerts"]] == [
        ("LATE-1", "acknowledge", "overdue")
    ]
    (mail,) = [m for m in channels.emails() if "request deadlines" in m["Subject"]]
    assert "1 overdue, 0 near" in mail["Subject"]
    assert "LATE-1" in mail.get_body(("html", "plain")).get_content()

    # 3. data collected again; the business forwards a new deletion for the same person
    log_key = _collect_again(stack, client, email, now)
    assert _holders(stack, client, email) == 1
    _drop(
        stack,
        client,
        "again",
        _doc("REP-2", client, "delete", now - timedelta(hours=2), email=email),
    )
    assert stack.run_dag("deletion_requests", {"dry_run": False}).state == "success"
    intake = json.loads(
        stack.s3.get_object(Bucket=stack.bucket, Key="summaries/intake.json")["Body"].read()
    )
    assert (intake["accepted"], intake["by_reason"]) == (1, {})  # not a duplicate (R16, R20)
    assert _holders(stack, client, email) == 0
    log = gzip.decompress(
        stack.s3.get_object(Bucket=APP_LOGS.bucket, Key=log_key)["Body"].read()
    ).decode()
    assert email not in log.lower() and "someone-else@example.org" in log
    second = _receipt(stack, client, "REP-2")
    assert second["previous_requests"] == [
        request_records.request_ref(HASH_KEY, client, "REP-1", "delete")
    ]
    assert second["counts"]["crm"]["contacts"] == 1
    eng = sa.create_engine(stack.state_url)
    with eng.connect() as c:
        statuses = dict(c.execute(sa.text("select request_id, status from cj_requests")).all())
    eng.dispose()
    assert statuses == {"REP-1": "completed", "REP-2": "completed", "LATE-1": "open"}
