"""The data_inventory DAG end to end: real Airflow run, real SQL backend, moto S3."""

from __future__ import annotations

import json

import sqlalchemy as sa


def _report(stack, day):
    key = f"inventory/{day}/inventory.json"
    return json.loads(stack.s3.get_object(Bucket=stack.bucket, Key=key)["Body"].read())


def test_inventory_matches_seeded_world(stack):
    run = stack.run_dag("data_inventory")
    assert run.state == "success"
    day = run.run_after.date().isoformat()
    report = _report(stack, day)
    assert report["problems"] == 0
    crm = next(s for s in report["systems"] if s["name"] == "crm")
    engine = sa.create_engine(stack.db_url)
    with engine.connect() as conn:
        contacts = conn.execute(sa.text("select count(*) from contacts")).scalar()
        per_client = dict(
            conn.execute(
                sa.text("select client_id, count(*) from contacts group by client_id")
            ).all()
        )
    engine.dispose()
    assert crm["tables"]["contacts"] == contacts
    # contacts carry identifiers: that category's count per client includes every contact row
    ident = {
        r["client_id"]: r["records"]
        for r in crm["per_client_category"]
        if r["category"] == "identifiers"
    }
    for client, n in per_client.items():
        assert ident[client] >= n
    stores = {s["name"]: s for s in report["stores"]}
    assert stores["app_logs"]["objects"] > 0 and stores["app_logs"]["partitions"] > 0
    assert stores["crm_backups"]["partitions"] > 0
    html = stack.s3.get_object(Bucket=stack.bucket, Key=f"inventory/{day}/inventory.html")
    assert b"Data inventory" in html["Body"].read()
    assert html["ServerSideEncryption"] == "AES256"


def test_inventory_flags_drift_and_fails_on_missing_column(stack):
    engine = sa.create_engine(stack.db_url)
    with engine.begin() as conn:
        conn.execute(sa.text("alter table leads add column owner_email varchar(200)"))
        conn.execute(sa.text("create table partner_referrals (id integer, referrer_phone text)"))
        conn.execute(sa.text("alter table web_visits rename column referrer to referer"))
    engine.dispose()
    run = stack.run_dag("data_inventory", retries=0)
    assert run.state == "failed"  # a mapped column vanished: someone must look
    report = _report(stack, run.run_after.date().isoformat())
    crm = next(s for s in report["systems"] if s["name"] == "crm")
    drift = {(d["where"], d["kind"]) for d in crm["drift"]}
    assert ("crm.leads.owner_email", "unmapped-column") in drift
    assert ("crm.partner_referrals", "unmapped-table") in drift
    problems = {(p["where"], p["kind"]) for p in crm["problems"]}
    assert ("systems.crm.tables.web_visits.columns.referrer", "live-missing-column") in problems
