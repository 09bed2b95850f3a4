"""Issue 14, "Done when": an identity the eraser cannot see makes `finalize` fail, no receipt.

Through the real deletion path (dag.test() on SQLite and PostgreSQL, moto S3): a consumer's
e-mail is planted where the data map does not point, once in a log line at an unmapped nested
path of their own tenant, once in the text of another consumer's support ticket (a mapped table,
a row the eraser rightly keeps). The eraser erases what it can see; the independent oracle
(`compliance.deletion.residue_oracle`, R16.1) still finds the value, so the run fails, the request stays
open, no receipt is written, and neither the error, the ledger, the XComs nor the alerts carry
the identity. Once the planted copies are removed (the operator's fix), a rerun completes the
request with a receipt that says what was verified and how (R16.1, R16.2, R18, R19).
"""

from __future__ import annotations

import gzip
import json
import logging
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from compliance import runtime
from compliance.deletion import finalize as finalize_step

from .test_alert_channels import _bag_dag, slack_server, smtp_server  # noqa: F401
from .test_alert_channels import channels as channels

NOW = datetime.now(UTC)
LOG_BUCKET = "cj-app-logs"


def _target(db_url: str) -> tuple[int, str, int]:
    """A tenant's adult consumer with an e-mail, no legal hold, and another consumer's ticket
    in the same tenant to plant the e-mail in."""
    eng = sa.create_engine(db_url)
    with eng.connect() as c:
        client_id, email, contact_id = c.execute(
            sa.text(
                "select c.client_id, c.email, c.contact_id from contacts c "
                "join clients k on k.client_id = c.client_id "
                "where c.email is not null and c.is_child = false and k.active = true "
                "and not exists (select 1 from legal_holds h where h.client_id = c.client_id) "
                "and exists (select 1 from support_tickets t where t.client_id = c.client_id "
                "and t.contact_id <> c.contact_id) order by c.contact_id limit 1"
            )
        ).one()
        ticket = c.execute(
            sa.text(
                "select min(ticket_id) from support_tickets where client_id = :cl "
                "and contact_id <> :me"
            ),
            {"cl": client_id, "me": contact_id},
        ).scalar_one()
    eng.dispose()
    return client_id, email, ticket


def _doc(client_id: int, email: str) -> dict:
    received = (NOW - timedelta(days=2)).isoformat()
    return {
        "request_id": "DEL-ORACLE-1",
        "client_id": client_id,
        "type": "delete",
        "identities": {"email": email},
        "received_at": received,
        "verification": {"method": "account_login", "verified_at": received, "verified_by": "s7"},
    }


def _keys(s3, bucket: str, prefix: str) -> list[str]:
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return [o["Key"] for page in pages for o in page.get("Contents", [])]


def test_an_identity_the_eraser_cannot_see_fails_finalize_without_a_receipt(
    stack, channels, caplog
):
    client_id, email, ticket = _target(stack.db_url)
    stack.s3.put_object(
        Bucket=stack.bucket,
        Key=f"inbox/{client_id}/oracle.json",
        Body=json.dumps(_doc(client_id, email)).encode(),
    )
    # 1. a log line of the consumer's tenant, the e-mail at a path the data map does not name
    day = _keys(stack.s3, LOG_BUCKET, "app/")[0].rsplit("/", 1)[0]
    planted_log = f"{day}/planted-by-test.json.gz"
    line = {"ts": NOW.isoformat(), "client_id": client_id, "meta": {"note": f"write to {email}"}}
    stack.s3.put_object(
        Bucket=LOG_BUCKET, Key=planted_log, Body=gzip.compress(json.dumps(line).encode())
    )
    # 2. another consumer's ticket quoting the e-mail (in upper case): the eraser keeps that row
    crm = sa.create_engine(stack.db_url)
    with crm.begin() as c:
        original = c.execute(
            sa.text("select body from support_tickets where ticket_id = :t"), {"t": ticket}
        ).scalar_one()
        c.execute(
            sa.text("update support_tickets set body = :b where ticket_id = :t"),
            {"b": f"{original} -- my friend is {email.upper()}", "t": ticket},
        )

    caplog.set_level(logging.INFO)
    run = _bag_dag("deletion_requests", retries=0).test(run_conf={"dry_run": False})
    assert run.state == "failed"
    finalize = [ti for ti in run.get_task_instances() if ti.task_id == "finalize"]
    assert [ti.state for ti in finalize] == ["failed"]
    verified = [ti for ti in run.get_task_instances() if ti.task_id == "verify_logs"]
    assert verified and all(ti.state == "success" for ti in verified)

    # The error names the places and counts, never the value (finalize again, in-process).
    state = sa.create_engine(stack.state_url)
    with state.connect() as c:
        batch_id = c.execute(
            sa.text("select batch_id from cj_requests where request_id = 'DEL-ORACLE-1'")
        ).scalar_one()
    with pytest.raises(finalize_step.ErasureIncomplete) as failed:
        finalize_step.finalize(runtime.context(), batch_id, [])
    error = str(failed.value)
    assert "the independent check found residue" in error
    assert f"app_logs:{planted_log} (1)" in error and "crm:support_tickets.body (1)" in error

    # The request stays open, no receipt, no completion in the ledger.
    with state.connect() as c:
        status = c.execute(
            sa.text("select status from cj_requests where request_id = 'DEL-ORACLE-1'")
        ).scalar_one()
        ledger = [
            json.dumps(list(r), default=str)
            for r in c.execute(sa.text("select kind, payload, ref from cj_ledger")).all()
        ]
    assert status == "open"
    assert _keys(stack.s3, stack.bucket, "receipts/") == []
    assert not any("erasure_completed" in row for row in ledger)

    # No identity anywhere it must not be: logs, ledger, XComs, alerts.
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        xcoms = [
            str(x.value) for x in session.query(XComModel).filter(XComModel.run_id == run.run_id)
        ]
    local = email.lower().split("@")[0]
    blobs = [*ledger, *xcoms, channels.everything(), error]
    blobs += [r.getMessage() for r in caplog.records]
    for blob in blobs:
        assert email.lower() not in blob.lower()
        assert f"{local}@" not in blob.lower()
    assert "finalize failed" in channels.everything()

    # The operator removes the planted copies; the next run resumes the batch and completes it.
    stack.s3.delete_object(Bucket=LOG_BUCKET, Key=planted_log)
    for version in stack.s3.list_object_versions(Bucket=LOG_BUCKET, Prefix=planted_log).get(
        "Versions", []
    ) + stack.s3.list_object_versions(Bucket=LOG_BUCKET, Prefix=planted_log).get(
        "DeleteMarkers", []
    ):
        stack.s3.delete_object(Bucket=LOG_BUCKET, Key=planted_log, VersionId=version["VersionId"])
    with crm.begin() as c:
        c.execute(
            sa.text("update support_tickets set body = :b where ticket_id = :t"),
            {"b": original, "t": ticket},
        )
    crm.dispose()
    again = _bag_dag("deletion_requests", retries=0).test(run_conf={"dry_run": False})
    assert again.state == "success"
    (key,) = _keys(stack.s3, stack.bucket, "receipts/")
    receipt = json.loads(stack.s3.get_object(Bucket=stack.bucket, Key=key)["Body"].read())
    verification = receipt["verification"]
    assert verification["statement"] == "every system re-checked: zero residue"
    searched = {
        s.get("store") or s.get("system"): s for s in verification["independent"]["searched"]
    }
    assert "raw-byte search" in searched["app_logs"]["method"]
    assert searched["app_logs"]["objects"] > 0 and searched["mail_logs"]["versions"] > 0
    assert "text columns of" in searched["crm"]["method"] and searched["crm"]["tables"] >= 10
    assert {"table": "payments", "column": "amount_cents", "exception": "transaction",
            "why": "erase: keep", "rule": "R19"} in searched["crm"]["skipped"]  # fmt: skip
    assert searched["crm_backups"]["rule"] == "R18"
    assert verification["independent"]["values"]["email"] >= 1
    assert email.lower() not in json.dumps(receipt).lower()
    assert _keys(stack.s3, stack.bucket, "batches/") == []  # targets and verdicts cleaned up
    with state.connect() as c:
        status = c.execute(
            sa.text("select status from cj_requests where request_id = 'DEL-ORACLE-1'")
        ).scalar_one()
    state.dispose()
    assert status == "completed"
