"""The signed client API (issue 18, item 1) through the api-server's own app (`create_app`, the
plugins mounted by Airflow itself) on a seeded world (SQLite, moto S3), with the credential in
an Airflow connection (`AIRFLOW_CONN_COMPLIANCE_API_<KEY>`):

- a signed round trip: POST -> `received`; the inbox intake -> `acknowledged`; the access DAG
  answers it -> `completed`, and the result route gives the receipt and a fresh link;
- unsigned, badly signed, stale, replayed and unknown-key calls get 401; another tenant's
  request 403; an invalid document 400 with the intake's reason codes; a repeat 200 with
  nothing written twice; another document under the same id 409; a burst 429;
- every error is `application/problem+json` and names no identity.
"""

from __future__ import annotations

import json
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from compliance.desk import signing

from . import staff_desk

pytestmark = pytest.mark.slow

BASE = "/compliance/api/v1"
SECRET = "acme-shared-secret-0123456789"


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    """SQLite only: the API's logic is backend-neutral (api_calls runs on PostgreSQL in
    tests/unit/test_desk_signing.py); the DAG runs are tested on both elsewhere."""
    return f"sqlite:///{tmp_path / 'crm.db'}"


class Client:
    """A business calling the API the way docs/api.md tells it to."""

    def __init__(self, http: Any, key: str, secret: str = SECRET) -> None:
        self.http, self.key, self.secret = http, key, secret.encode()
        self.sent: list[Any] = []

    def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        headers: dict[str, str] | None = None,
        now: float | None = None,
        sign_path: str | None = None,
        sign_body: bytes | None = None,
    ) -> Any:
        raw = b"" if body is None else json.dumps(body).encode()
        signed = signing.sign(
            self.secret,
            self.key,
            method,
            sign_path or BASE + path,
            raw if sign_body is None else sign_body,
            now=now,
        )
        answer = self.http.request(
            method,
            BASE + path,
            content=raw,
            headers={"Content-Type": "application/json", **signed, **(headers or {})},
        )
        self.sent.append(answer)
        return answer


def _credential(monkeypatch, key: str, client_ids: list[str], rate: int = 1000) -> None:
    conn = {
        "conn_type": "generic",
        "password": SECRET,
        "extra": {"client_ids": client_ids, "rate_limit_per_minute": rate},
    }
    monkeypatch.setenv(f"AIRFLOW_CONN_COMPLIANCE_API_{key.upper()}", json.dumps(conn))


@pytest.fixture
def person(stack) -> dict:
    return staff_desk.consumer(stack.db_url)


@pytest.fixture
def api(stack, person, monkeypatch) -> Client:
    _credential(monkeypatch, "acme", [person["client_id"]])
    return Client(staff_desk.open_desk().http, "acme")


def _doc(person: dict, request_id: str, **over: Any) -> dict:
    received = (datetime.now(UTC) - timedelta(days=1)).isoformat()
    return {
        "request_id": request_id,
        "client_id": person["client_id"],
        "type": "access",
        "identities": {"email": person["email"]},
        "received_at": received,
        "jurisdiction": "ccpa",
        "verification": {
            "method": "email_link",
            "verified_at": received,
            "verified_by": "agent-7",
        },
        **over,
    }


def _inbox(stack) -> dict[str, bytes]:
    listing = stack.s3.list_objects_v2(Bucket=stack.bucket, Prefix="inbox/").get("Contents", [])
    return {
        o["Key"]: stack.s3.get_object(Bucket=stack.bucket, Key=o["Key"])["Body"].read()
        for o in listing
    }


def _problem(answer: Any, status: int, reason: str) -> dict:
    assert answer.status_code == status, answer.text[:500]
    assert answer.headers["content-type"] == "application/problem+json"
    problem = answer.json()
    assert problem["reason"] == reason, problem
    assert problem["status"] == status and problem["type"].endswith(reason)
    assert problem["title"] and problem["detail"]
    return problem


def _no_identity(answers: list[Any], person: dict) -> None:
    for answer in answers:
        for value in (person["email"], person["phone"], person["contact_id"]):
            assert str(value) not in answer.text, (answer.status_code, answer.text[:300])


def test_a_signed_round_trip_received_acknowledged_completed(stack, api, person):
    from compliance import runtime
    from compliance.jobs import intake

    doc = _doc(person, "API-ACC-1")
    answer = api.call("POST", "/requests", doc)
    assert answer.status_code == 202, answer.text[:500]
    view = answer.json()
    assert (view["status"], view["request_id"], view["client_id"], view["type"]) == (
        "received",
        "API-ACC-1",
        person["client_id"],
        "access",
    )
    ((key, body),) = _inbox(stack).items()  # the same inbox document a drop would be
    assert key.startswith("inbox/ui/") and json.loads(body) == doc
    # the credential acts for one tenant: client_id may be left out of the query
    assert api.call("GET", "/requests/API-ACC-1").json()["status"] == "received"
    path = f"/requests/API-ACC-1?client_id={person['client_id']}"
    assert api.call("GET", path).json()["status"] == "received"
    _problem(api.call("GET", "/requests/API-ACC-1/result"), 409, "not_completed")
    _problem(api.call("GET", "/requests/NO-SUCH-1"), 404, "not_found")

    intake.intake(runtime.context(), {}, "access")  # the DAGs' first task: the inbox taken in
    seen = api.call("GET", "/requests/API-ACC-1").json()
    assert seen["status"] == "acknowledged" and seen["response_due"], seen
    assert _inbox(stack) == {}

    run = stack.run_dag("access_reports", {"request_ref": f"{person['client_id']}/API-ACC-1"})
    assert run.state == "success"
    done = api.call("GET", "/requests/API-ACC-1").json()
    assert done["status"] == "completed" and done["completed_at"], done
    result = api.call("GET", "/requests/API-ACC-1/result")
    assert result.status_code == 200, result.text[:500]
    got = result.json()
    assert got["request"]["status"] == "completed" and got["receipt"]["type"] == "access"
    assert got["receipt"]["request_id"] == "API-ACC-1"
    with urllib.request.urlopen(got["link"]["url"], timeout=10) as bundle:  # no S3 credentials
        assert bundle.read(2) == b"PK"
    assert datetime.fromisoformat(got["link"]["expires_at"]) <= datetime.now(UTC) + timedelta(
        days=1, minutes=1
    )
    assert person["email"] not in result.text  # a receipt holds no identity (R22)
    _no_identity(api.sent, person)


def test_unsigned_badly_signed_stale_replayed_and_unknown_calls_get_401(stack, api, person):
    doc = _doc(person, "API-SIG-1")
    raw = json.dumps(doc).encode()
    bare = api.http.post(BASE + "/requests", content=raw)
    _problem(bare, 401, "missing_signature")
    answers = [bare]
    cases = {
        "bad_signature": dict(sign_body=b'{"request_id": "other"}'),
        "stale_timestamp": dict(now=time.time() - signing.WINDOW_SECONDS - 60),
    }
    for reason, kw in cases.items():
        answers.append(api.call("POST", "/requests", doc, **kw))
        _problem(answers[-1], 401, reason)
    # signed for another path (the query is covered too)
    answers.append(api.call("GET", "/requests/API-SIG-1?client_id=x", sign_path="/other"))
    _problem(answers[-1], 401, "bad_signature")
    stranger = Client(api.http, "nobody")
    answers.append(stranger.call("POST", "/requests", doc))
    _problem(answers[-1], 401, "unknown_client")
    # the same signed call twice: the second is a replay
    headers = signing.sign(SECRET.encode(), "acme", "GET", BASE + "/requests/NOPE-1")
    first = api.http.get(BASE + "/requests/NOPE-1", headers=headers)
    _problem(first, 404, "not_found")
    again = api.http.get(BASE + "/requests/NOPE-1", headers=headers)
    _problem(again, 401, "replayed")
    answers += [first, again]
    assert _inbox(stack) == {}
    _no_identity(answers, person)


def test_another_tenants_request_is_403(stack, api, person):
    other = staff_desk.consumer(stack.db_url, offset=40)
    assert other["client_id"] != person["client_id"]
    post = api.call("POST", "/requests", _doc(other, "API-OTHER-1"))
    _problem(post, 403, "wrong_client")
    get = api.call("GET", f"/requests/API-OTHER-1?client_id={other['client_id']}")
    _problem(get, 403, "wrong_client")
    result = api.call("GET", f"/requests/API-OTHER-1/result?client_id={other['client_id']}")
    _problem(result, 403, "wrong_client")
    assert _inbox(stack) == {}
    _no_identity(api.sent, other)


def test_an_invalid_document_gets_400_with_the_intakes_reason_codes(stack, api, person):
    cases = {
        "malformed_email": _doc(person, "API-BAD-1", identities={"email": "not-an-address"}),
        "not_verified": _doc(person, "API-BAD-2", verification={"method": None}),
        "received_in_future": _doc(
            person, "API-BAD-3", received_at=(datetime.now(UTC) + timedelta(days=3)).isoformat()
        ),
        "unknown_type": _doc(person, "API-BAD-4", type="erase-everything"),
        "missing_field": {k: v for k, v in _doc(person, "").items()},
    }
    for reason, doc in cases.items():
        problem = _problem(api.call("POST", "/requests", doc), 400, "invalid_document")
        assert reason in {e["reason"] for e in problem["errors"]}, (reason, problem)
        assert all("field" in e for e in problem["errors"])
    _problem(
        api.http.post(
            BASE + "/requests",
            content=b"{not json",
            headers=signing.sign(SECRET.encode(), "acme", "POST", BASE + "/requests", b"{not json"),
        ),
        400,
        "invalid_document",
    )
    assert _inbox(stack) == {}
    _no_identity(api.sent, person)


def test_a_repeat_is_idempotent_and_a_conflicting_one_409(stack, api, person):
    doc = _doc(person, "API-IDEM-1")
    assert api.call("POST", "/requests", doc).status_code == 202
    again = api.call("POST", "/requests", doc)
    assert again.status_code == 200 and again.json()["status"] == "received"
    assert len(_inbox(stack)) == 1
    changed = api.call("POST", "/requests", {**doc, "identities": {"email": "x@example.com"}})
    _problem(changed, 409, "duplicate")
    assert json.loads(next(iter(_inbox(stack).values()))) == doc  # not overwritten

    batch = {
        "requests": [
            _doc(person, "API-BATCH-1", type="delete"),
            _doc(person, "API-BATCH-2", identities={"email": "nope"}),
            doc,
            {**doc, "jurisdiction": "gdpr"},
        ]
    }
    answer = api.call("POST", "/requests", batch)
    assert answer.status_code == 207, answer.text[:500]
    results = answer.json()["results"]
    assert [r["status"] for r in results] == [202, 400, 200, 409]
    assert results[0]["request"]["status"] == "received"
    assert results[1]["problem"]["errors"][0]["reason"] == "malformed_email"
    assert len(_inbox(stack)) == 2
    # the batch's repeat gives the same answer again, nothing written twice
    assert [r["status"] for r in api.call("POST", "/requests", batch).json()["results"]] == [
        200,
        400,
        200,
        409,
    ]
    assert len(_inbox(stack)) == 2
    _no_identity(api.sent, person)


def test_a_burst_over_the_clients_rate_gets_429(stack, person, monkeypatch):
    _credential(monkeypatch, "small", [person["client_id"]], rate=3)
    api = Client(staff_desk.open_desk().http, "small")
    codes = [api.call("GET", f"/requests/R-{i}").status_code for i in range(3)]
    assert codes == [404, 404, 404]
    limited = api.call("GET", "/requests/R-4")
    _problem(limited, 429, "rate_limited")
    assert 1 <= int(limited.headers["Retry-After"]) <= 60


def test_the_openapi_schema_documents_the_signed_routes(stack, api):
    answer = api.http.get(BASE + "/openapi.json")
    assert answer.status_code == 200
    schema = answer.json()
    assert {"/requests", "/requests/{request_id}", "/requests/{request_id}/result"} <= set(
        schema["paths"]
    )
    post = schema["paths"]["/requests"]["post"]
    headers = {p["name"] for p in post["parameters"] if p["in"] == "header"}
    assert set(signing.HEADERS) <= headers
    assert {"202", "200", "207", "400", "401", "403", "409", "429"} <= set(post["responses"])
    assert "reason" in schema["components"]["schemas"]["Problem"]["required"]
    assert "signed" in schema["components"]["securitySchemes"]


def test_a_completed_deletions_result_is_its_receipt(stack, api, person):
    """No S3 for the client: the erasure's receipt comes back through the API (R22), no link."""
    doc = _doc(person, "API-DEL-1", type="delete")
    assert api.call("POST", "/requests", doc).status_code == 202
    ref = f"{person['client_id']}/API-DEL-1"
    assert stack.run_dag("deletion_requests", {"request_ref": ref, "dry_run": False}).state == (
        "success"
    )
    assert api.call("GET", "/requests/API-DEL-1").json()["status"] == "completed"
    result = api.call("GET", "/requests/API-DEL-1/result")
    assert result.status_code == 200, result.text[:500]
    got = result.json()
    assert got["receipt"]["request_id"] == "API-DEL-1" and "link" not in got
    assert got["request"]["type"] == "delete"
    _no_identity(api.sent, person)
