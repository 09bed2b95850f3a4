"""The staff request page (issue 16 deliverable 2, issue 18 item 3), through the api-server's own
app and real DAG runs (dag.test) on a seeded world (SQLite, moto S3):

- behind Airflow's login: anonymous calls get 401, a viewer 403, and neither writes or starts
  anything;
- a staff entry is validated by the inbox's own code (reason codes shown, nothing written on a
  refusal), written to the inbox, and its DAG is triggered with only `{"request_ref": ...}`;
- the run takes the document from the inbox and answers the request (access: a bundle;
  deletion: a dry run first, then erased); entering the same request twice writes it once;
- a run whose conf names an identity, or a reference to nothing, stops with the field named.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from . import staff_desk

pytestmark = pytest.mark.slow


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    """SQLite only: the page's logic is backend-neutral, the DAG runs are tested on both."""
    return f"sqlite:///{tmp_path / 'crm.db'}"


@pytest.fixture
def desk(stack):
    return staff_desk.open_desk()


def _fields(person: dict, request_id: str, **over) -> dict:
    received = (datetime.now(UTC) - timedelta(days=1)).isoformat()
    return {
        "type": "access",
        "request_id": request_id,
        "received_at": received,
        "verification_method": "email_link",
        "verified_by": "staff-7",
        **person,
        **over,
    }


def _inbox(stack) -> dict[str, bytes]:
    listing = stack.s3.list_objects_v2(Bucket=stack.bucket, Prefix="inbox/").get("Contents", [])
    return {
        o["Key"]: stack.s3.get_object(Bucket=stack.bucket, Key=o["Key"])["Body"].read()
        for o in listing
    }


def _contacts_with(stack, email: str) -> int:
    engine = sa.create_engine(stack.db_url)
    with engine.connect() as c:
        n = c.execute(sa.text("select count(*) from contacts where email = :e"), {"e": email})
        left = int(n.scalar() or 0)
    engine.dispose()
    return left


def _runs(dag_id: str) -> int:
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session

    with create_session() as session:
        return len(session.scalars(sa.select(DagRun.run_id).where(DagRun.dag_id == dag_id)).all())


def test_the_page_needs_airflows_login_and_the_right_to_trigger(stack, desk):
    person = staff_desk.consumer(stack.db_url)
    before = _runs("access_reports")
    assert desk.page(role=None).status_code == 401
    assert desk.enter(_fields(person, "ANON-1"), role=None).status_code == 401
    assert desk.http.get(staff_desk.PAGE, cookies={"_token": "forged"}).status_code == 403
    assert desk.page(role="viewer").status_code == 403
    assert desk.enter(_fields(person, "VIEW-1"), role="viewer").status_code == 403
    assert _inbox(stack) == {} and _runs("access_reports") == before
    page = desk.page()
    assert page.status_code == 200
    assert "name='email'" in page.text and "action='requests'" in page.text  # relative URLs
    cross = desk.http.post(
        staff_desk.PAGE,
        data=_fields(person, "CSRF-1"),
        headers={**desk.headers("user"), "Origin": "http://evil.example"},
    )
    assert cross.status_code == 403 and _inbox(stack) == {}
    plugins = desk.http.get("/api/v2/plugins", headers=desk.headers("admin")).json()["plugins"]
    (plugin,) = [p for p in plugins if p["name"] == "compliance_desk"]
    assert plugin["fastapi_apps"][0]["url_prefix"] == "/compliance"
    (nav,) = plugin["external_views"]
    assert nav["nav_top_level"] is True and nav["url_route"] == "compliance"
    assert (nav["name"], nav["href"], nav["destination"]) == (
        "Compliance",
        "compliance/dashboard",
        "nav",
    )


def test_refusals_show_reason_codes_and_write_nothing(stack, desk):
    person = staff_desk.consumer(stack.db_url)
    cases = {
        "unknown_client": _fields({**person, "client_id": "987654"}, "BAD-1"),
        "malformed_email": _fields({**person, "email": "not-an-address"}, "BAD-2"),
        "not_verified": _fields(person, "BAD-3", verification_method=""),
        "received_in_future": _fields(
            person, "BAD-4", received_at=(datetime.now(UTC) + timedelta(days=3)).isoformat()
        ),
        "missing_field": _fields(person, ""),
        "unknown_type": _fields(person, "BAD-5", type="erase-everything"),
    }
    before = _runs("access_reports") + _runs("deletion_requests")
    for reason, fields in cases.items():
        answer = desk.enter(fields)
        assert answer.status_code == 400, (reason, answer.text[:300])
        assert f"<code>{reason}</code>" in answer.text, (reason, answer.text[:600])
    assert _inbox(stack) == {}
    assert _runs("access_reports") + _runs("deletion_requests") == before


def test_staff_entry_reaches_the_run_by_reference_only(stack, desk):
    person = staff_desk.consumer(stack.db_url)
    fields = _fields(person, "STAFF-ACC-1")
    answer = desk.enter(fields)
    assert answer.status_code == 200, answer.text[:600]
    dag_id, run_id = staff_desk.run_id_of(answer.text)
    ref = f"{person['client_id']}/STAFF-ACC-1"
    assert dag_id == "access_reports"
    conf = staff_desk.triggered_conf(dag_id, run_id)
    assert conf == {"request_ref": ref}  # the whole conf: no identity, no other field
    ((key, body),) = _inbox(stack).items()
    assert (
        key.startswith("inbox/ui/") and json.loads(body)["identities"]["email"] == person["email"]
    )

    again = desk.enter(fields)  # a double submit: written once
    assert again.status_code == 200 and "already waiting" in again.text
    assert len(_inbox(stack)) == 1
    changed = desk.enter({**fields, "email": "other@example.com"})
    assert changed.status_code == 400 and "<code>duplicate</code>" in changed.text

    run = stack.run_dag(dag_id, conf)
    assert run.state == "success"
    assert _inbox(stack) == {}
    bundle = f"access/{person['client_id']}/STAFF-ACC-1/bundle.zip"
    assert stack.s3.list_objects_v2(Bucket=stack.bucket, Prefix=bundle)["KeyCount"] == 1
    assert desk.enter(fields).status_code == 400  # on record now


def test_a_staff_deletion_dry_runs_then_erases(stack, desk):
    person = staff_desk.consumer(stack.db_url, offset=1)
    fields = _fields(person, "STAFF-DEL-1", type="delete")
    answer = desk.enter(fields)
    assert answer.status_code == 200, answer.text[:600]
    dag_id, run_id = staff_desk.run_id_of(answer.text)
    conf = staff_desk.triggered_conf(dag_id, run_id)
    assert (dag_id, conf) == (
        "deletion_requests",
        {"request_ref": f"{person['client_id']}/STAFF-DEL-1"},
    )
    assert stack.run_dag(dag_id, conf).state == "success"  # a dry run: the document waits
    assert len(_inbox(stack)) == 1
    executed = desk.enter({**fields, "execute": "on"})  # the same request: not written twice
    _, run_id = staff_desk.run_id_of(executed.text)
    conf = staff_desk.triggered_conf(dag_id, run_id)
    assert conf == {"request_ref": f"{person['client_id']}/STAFF-DEL-1", "dry_run": False}
    assert stack.run_dag(dag_id, conf).state == "success"
    assert _inbox(stack) == {}
    assert _contacts_with(stack, person["email"]) == 0


def test_a_document_entered_before_the_digest_is_still_seen_waiting(stack, desk):
    """Upgrade path: `inbox.entry_key` gained a digest (2026-12-06), so a request entered
    before the upgrade waits under the old name. Entering it again must not write a second
    copy, a different document under its id is a duplicate (R22), and a run by reference
    finds it waiting (dry run) and then erases the consumer."""
    from compliance.requests import inbox

    person = staff_desk.consumer(stack.db_url, offset=4)
    fields = _fields(person, "STAFF-OLD-1", type="delete")
    answer = desk.enter(fields)
    assert answer.status_code == 200, staff_desk.refusals(answer.text)
    dag_id, run_id = staff_desk.run_id_of(answer.text)
    conf = staff_desk.triggered_conf(dag_id, run_id)
    ((key, body),) = _inbox(stack).items()
    old = inbox.legacy_entry_key("delete", person["client_id"], "STAFF-OLD-1")
    assert old != key
    stack.s3.put_object(Bucket=stack.bucket, Key=old, Body=body)  # as the old release wrote it
    stack.s3.delete_object(Bucket=stack.bucket, Key=key)

    again = desk.enter(fields)
    assert again.status_code == 200 and "already waiting" in again.text
    assert list(_inbox(stack)) == [old]
    changed = desk.enter({**fields, "email": "other@example.com"})
    assert changed.status_code == 400 and "<code>duplicate</code>" in changed.text

    assert stack.run_dag(dag_id, conf).state == "success"  # dry run: found waiting
    assert list(_inbox(stack)) == [old]
    executed = desk.enter({**fields, "execute": "on"})
    _, run_id = staff_desk.run_id_of(executed.text)
    assert stack.run_dag(dag_id, staff_desk.triggered_conf(dag_id, run_id)).state == "success"
    assert _inbox(stack) == {}
    assert _contacts_with(stack, person["email"]) == 0


@pytest.mark.parametrize(
    "conf",
    [
        {"request_ref": "6/NO-SUCH-REQUEST"},
        {"request_ref": "someone@example.com"},
        {"email": "someone@example.com"},
    ],
    ids=["ref-to-nothing", "not-a-ref", "identity-in-conf"],
)
def test_a_run_naming_no_entered_request_stops(stack, conf):
    """A reference to nothing fails the run at intake, naming the field; a value that is not a
    reference is refused by the form's pattern before a run exists (nothing kept)."""
    from airflow.dag_processing.dagbag import DagBag

    dag = DagBag(dag_folder=str(Path(__file__).parents[2] / "dags")).dags["access_reports"]
    for task in dag.tasks:
        task.retries = 0
    before = _runs("access_reports")
    try:
        run = dag.test(run_conf=conf)
    except Exception as exc:
        assert "request_ref" in str(exc), exc
        assert _runs("access_reports") == before  # refused before a run was created
        return
    assert run.state == "failed"
    assert "email" in conf or conf["request_ref"].startswith("6/")


def test_a_staff_portability_request_runs_in_the_access_dag(stack, desk):
    """G3: the page takes a portability request (GDPR) too; access_reports answers it."""
    person = staff_desk.consumer(stack.db_url, offset=3)
    fields = _fields(person, "STAFF-PORT-1", type="portability", jurisdiction="gdpr")
    answer = desk.enter(fields)
    assert answer.status_code == 200, staff_desk.refusals(answer.text)
    dag_id, run_id = staff_desk.run_id_of(answer.text)
    conf = staff_desk.triggered_conf(dag_id, run_id)
    assert (dag_id, conf) == (
        "access_reports",
        {"request_ref": f"{person['client_id']}/STAFF-PORT-1"},
    )
    assert stack.run_dag(dag_id, conf).state == "success"
    assert _inbox(stack) == {}
    ccpa = desk.enter(_fields(person, "STAFF-PORT-2", type="portability"))
    assert ccpa.status_code == 400 and "portability_needs_gdpr" in ccpa.text


def test_the_rest_api_refuses_a_run_conf_with_identities_before_storing_it(stack, desk):
    """Issue 16, deliverable 2: a hand-written REST trigger cannot put an identity in
    `dag_run.conf` (the api-server's guard answers 400 before Airflow creates the run), while a
    reference-only trigger of the same DAG goes through."""
    person = staff_desk.consumer(stack.db_url)
    url = "/api/v2/dags/access_reports/dagRuns"
    before = _runs("access_reports")
    for conf in (
        {"email": person["email"]},
        {"request_ref": "21/X-1", "note": f"for {person['email']}"},
        {"identities": {"phone": ["+15550100"]}},
    ):
        refused = desk.http.post(
            url, json={"logical_date": None, "conf": conf}, headers=desk.headers("admin")
        )
        assert refused.status_code == 400, refused.text
        problem = refused.json()
        assert refused.headers["content-type"] == "application/problem+json"
        assert problem["fields"] and all(f.startswith("conf.") for f in problem["fields"])
        assert person["email"] not in refused.text
    assert _runs("access_reports") == before
    ok = desk.http.post(
        url,
        json={"logical_date": None, "conf": {"request_ref": "21/GUARD-OK-1"}},
        headers=desk.headers("admin"),
    )
    assert ok.status_code == 200, ok.text
    assert _runs("access_reports") == before + 1
