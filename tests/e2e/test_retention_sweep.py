"""The retention_sweep DAG end to end: real Airflow runs (dag.test), both SQL backends, moto S3.

The seeded world (tests/e2e/conftest.py, as of 2026-11-20) has three years of history, children,
a client-wide litigation hold, a live consumer hold and an expired one. On top of it this test
plants log partitions and a backup snapshot older than the policy's periods, and request records
on both sides of 24 months (R22). Then: a dry run changes nothing and predicts exactly what the
real run does; after the real run, old data is gone, young and held data stays, minors went first.
"""

from __future__ import annotations

import gzip
import hashlib
import json
from datetime import date, datetime, timedelta

import pytest
import sqlalchemy as sa

from compliance.core.datamap.validate import load_datamap
from compliance.retention.policy_file import load_policy

from .conftest import AS_OF, REPO

DATAMAP = load_datamap(REPO / "config" / "datamap.yaml")
POLICY = load_policy(REPO / "config" / "retention.yaml", DATAMAP).policy
MIDNIGHT = datetime.combine(AS_OF, datetime.min.time())


@pytest.fixture
def world(stack):
    """The stack plus planted old objects and request records (in the state database)."""
    engine = sa.create_engine(stack.db_url)
    state = sa.create_engine(stack.state_url)
    _plant_requests(state)
    _plant_objects(stack.s3, engine)
    yield stack, engine, state
    engine.dispose()
    state.dispose()


def _plant_requests(engine):
    from compliance.requests.state import create_state_schema, insert_requests

    create_state_schema(engine)
    rows = []
    for n, (months, status) in enumerate(
        [(37, "completed"), (37, "rejected"), (23, "completed"), (37, "open"), (12, "completed")]
    ):
        received = MIDNIGHT - timedelta(days=int(months * 30.5))
        rows.append(
            {
                "client_id": 1,
                "request_id": f"req-{n}",
                "type": "delete",
                "jurisdiction": "ccpa",
                "status": status,
                "reason_code": "unverified" if status == "rejected" else None,
                "received_at": received,
                "source": "ui",
            }
        )
    insert_requests(engine, rows)
    with engine.begin() as conn:  # completed requests were answered a week after receipt
        conn.execute(
            sa.text(
                "update cj_requests set completed_at = received_at + interval '7 days' "
                "where status = 'completed'"
                if engine.dialect.name == "postgresql"
                else "update cj_requests set completed_at = datetime(received_at, '+7 days') "
                "where status = 'completed'"
            )
        )


def _lines(engine, n_clients=3):
    with engine.connect() as conn:
        clients = [r[0] for r in conn.execute(sa.text("select client_id from clients order by 1"))]
        held = conn.execute(
            sa.text("select client_id from legal_holds where contact_id is null")
        ).scalars()
        held = set(held)
    picks = [c for c in clients if c not in held][:n_clients]
    return picks, sorted(held)


def _plant_objects(s3, engine):
    """Two old app-log days (lines of a held and of unheld clients) and an old backup day."""
    picks, held = _lines(engine)
    store = DATAMAP.stores["app_logs"]
    for days in (60, 45):
        day = AS_OF - timedelta(days=days)
        lines = [{"ts": f"{day}T10:00:00Z", "client_id": c, "msg": "login"} for c in picks + held]
        body = gzip.compress("".join(json.dumps(x) + "\n" for x in lines).encode())
        key = f"{store.prefix}{day.strftime(store.partition)}part-00000.jsonl.gz"
        s3.put_object(Bucket=store.bucket, Key=key, Body=body)
    backups = DATAMAP.stores["crm_backups"]
    old = (AS_OF - timedelta(days=60)).isoformat()
    s3.put_object(Bucket=backups.bucket, Key=f"{backups.prefix}{old}/contacts.csv.gz", Body=b"x")


def _checksums(engine) -> dict[str, str]:
    """A digest of every row of every table: equal digests, unchanged data."""
    out = {}
    insp = sa.inspect(engine)
    with engine.connect() as conn:
        for name in sorted(insp.get_table_names()):
            if name.startswith("cj_ledger"):
                continue
            table = sa.Table(name, sa.MetaData(), autoload_with=conn)
            order = [c for c in table.primary_key.columns] or list(table.columns)
            digest = hashlib.sha256()
            for row in conn.execute(sa.select(table).order_by(*order)):
                digest.update(repr(tuple(row)).encode())
            out[name] = digest.hexdigest()
    return out


def _objects(s3) -> set[tuple[str, str, str]]:
    out = set()
    for store in DATAMAP.stores.values():
        pages = s3.get_paginator("list_object_versions").paginate(Bucket=store.bucket)
        for page in pages:
            for v in page.get("Versions", []) + page.get("DeleteMarkers", []):
                out.add((store.bucket, v["Key"], v["VersionId"]))
    return out


def _report(stack, run) -> dict:
    summary = json.loads(
        stack.s3.get_object(Bucket=stack.bucket, Key="summaries/retention_sweep.json")[
            "Body"
        ].read()
    )
    key = summary["json"].removeprefix(f"s3://{stack.bucket}/")
    report = json.loads(stack.s3.get_object(Bucket=stack.bucket, Key=key)["Body"].read())
    assert report["run"] in key
    return report


def _count(engine, sql: str) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.text(sql)).scalar() or 0)


def test_dry_run_predicts_the_real_run_which_converges(world):
    stack, engine, state = world
    cutoff_visits = POLICY.rule("web-visits").period.cutoff(AS_OF)
    before = _checksums(engine), _checksums(state)
    objects_before = _objects(stack.s3)
    children_old = _count(
        engine,
        "select count(*) from contacts where is_child = true and created_at < "
        f"'{POLICY.rule('children').period.cutoff(AS_OF)}'",
    )
    assert children_old > 0, "the seeded world should have a child older than the period"

    dry = stack.run_dag("retention_sweep", {"as_of": AS_OF.isoformat()})  # dry run by default
    assert dry.state == "success"
    planned = _report(stack, dry)
    assert planned["dry_run"] is True
    assert (_checksums(engine), _checksums(state)) == before, "a dry run must change nothing"
    assert _objects(stack.s3) == objects_before
    by_rule = {r["rule"]: r for r in planned["rules"]}
    assert next(r["wave"] for r in planned["rules"]) == "minors"  # R26: children go first
    assert by_rule["children"]["planned"]["consumers"]["expire"] == children_old
    assert by_rule["web-visits"]["planned"]["web_visits"]["delete"] > 0
    assert by_rule["web-visits"]["planned"]["web_visits"]["held"] > 0  # the litigation hold
    assert by_rule["request-log"]["planned"]["cj_requests"]["delete"] == 2
    app = by_rule["app-logs"]["planned"]["store:app_logs"]
    assert app["partitions"] == 2 and app["filter"] == 2  # a held client's lines are in them
    assert by_rule["crm-backups"]["planned"]["store:crm_backups"]["held_partitions"] == 1

    real = stack.run_dag("retention_sweep", {"as_of": AS_OF.isoformat(), "dry_run": False})
    assert real.state == "success"
    done = _report(stack, real)
    assert done["dry_run"] is False
    assert done["mismatches"] == 0, [r["mismatches"] for r in done["rules"]]
    for rule in done["rules"]:  # the real counts are exactly the dry run's prediction
        assert rule["planned"] == by_rule[rule["rule"]]["planned"], rule["rule"]

    # older than the period: gone (except held); younger: stays
    held_clients = [
        r[0]
        for r in engine.connect().execute(
            sa.text("select client_id from legal_holds where contact_id is null")
        )
    ]
    assert held_clients
    held_list = ",".join(map(str, held_clients))
    old_unheld = _count(
        engine,
        f"select count(*) from web_visits where visited_at < '{cutoff_visits}' "
        f"and client_id not in ({held_list}) and contact_id not in (select contact_id "
        "from legal_holds where contact_id is not null and (expires_at is null "
        f"or expires_at > '{MIDNIGHT}'))",
    )
    assert old_unheld == 0
    assert _count(engine, f"select count(*) from web_visits where visited_at >= '{cutoff_visits}'")
    assert _count(
        engine,
        f"select count(*) from web_visits where visited_at < '{cutoff_visits}' "
        f"and client_id in ({held_list})",
    ), "held data stays"
    assert (
        _count(
            engine,
            "select count(*) from contacts where is_child = true "
            f"and created_at < '{POLICY.rule('children').period.cutoff(AS_OF)}'",
        )
        == 0
    )
    # R22: request records younger than 24 months, and open ones, stay
    assert _count(state, "select count(*) from cj_requests") == 3
    assert _count(state, "select count(*) from cj_requests where status = 'open'") == 1
    # the aggregate replaced the old e-mail events, row for row
    aggregated = by_rule["email-events"]["planned"]["email_events"]["aggregate"]
    assert _count(engine, "select sum(row_count) from cj_retention_aggregates") == aggregated
    # log lines of unheld clients are gone from the old partitions; the held clients' stay
    log_held = set(
        engine.connect()
        .execute(
            sa.text(
                "select client_id from legal_holds where scope in ('all', 'app_logs') "
                f"and (expires_at is null or expires_at > '{MIDNIGHT}')"
            )
        )
        .scalars()
    )
    assert set(held_clients) < log_held
    store = DATAMAP.stores["app_logs"]
    for days in (60, 45):
        key = f"{store.prefix}{(AS_OF - timedelta(days=days)).strftime(store.partition)}part-00000.jsonl.gz"
        versions = stack.s3.list_object_versions(Bucket=store.bucket, Prefix=key)
        assert len(versions.get("Versions", [])) == 1  # the pre-filter copy is gone too
        body = gzip.decompress(stack.s3.get_object(Bucket=store.bucket, Key=key)["Body"].read())
        clients = {json.loads(line)["client_id"] for line in body.splitlines()}
        assert clients == log_held  # a consumer hold keeps its client's lines (a superset)

    # the audit ledger has the sweep, with counts only
    from compliance.core.ledger import entries

    sweeps = entries(state, kind="retention_sweep")
    assert len(sweeps) == 1 and sweeps[0].payload["mismatches"] == 0
    assert "@" not in json.dumps(sweeps[0].payload)

    # a rerun converges: nothing left to do, nothing changed in the CRM
    after = _checksums(engine)
    again = stack.run_dag("retention_sweep", {"as_of": AS_OF.isoformat(), "dry_run": False})
    assert again.state == "success"
    rerun = _report(stack, again)
    for rule in rerun["rules"]:
        for target, counts in rule["done"].items():
            if not target.startswith("store:"):
                assert not any(v for k, v in counts.items() if k != "held"), (rule["rule"], target)
    assert {k: v for k, v in _checksums(engine).items()} == after


def test_subset_of_rules_and_as_of_from_the_form(world):
    stack, engine, _ = world
    visits = _count(engine, "select count(*) from web_visits")
    leads = _count(engine, "select count(*) from leads")
    as_of = (AS_OF - timedelta(days=200)).isoformat()
    run = stack.run_dag(
        "retention_sweep", {"dry_run": False, "rules": ["web-visits"], "as_of": as_of}
    )
    assert run.state == "success"
    report = _report(stack, run)
    assert [r["rule"] for r in report["rules"]] == ["web-visits"]
    assert report["as_of"] == as_of
    gone = report["rules"][0]["done"]["web_visits"]["delete"]
    assert gone > 0
    assert _count(engine, "select count(*) from web_visits") == visits - gone
    assert _count(engine, "select count(*) from leads") == leads  # other rules did not run


def test_future_as_of_and_unknown_rule_fail_without_changes(world):
    stack, engine, _ = world
    before = _checksums(engine)
    future = (date.today() + timedelta(days=30)).isoformat()
    assert stack.run_dag("retention_sweep", {"dry_run": False, "as_of": future}).state == "failed"
    bad = stack.run_dag("retention_sweep", {"dry_run": False, "rules": ["no-such-rule"]})
    assert bad.state == "failed"
    assert _checksums(engine) == before
