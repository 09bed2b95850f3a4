"""Four-eyes approval of destructive runs, through real Airflow (issue 18 item 4; docs/approvals.md).

The DAGs run in `dag.test()` (this thread); a helper thread waits for the approval step to park
in AWAITING_INPUT and answers it the way staff do: over HTTP to the api-server's own app
(`create_app`, our plugins and root middleware mounted by Airflow) with tokens signed by its
auth manager, or through the scheduler's own timeout sweep. `dag.test()` records
`triggering_user_name="dag_test"`, so `dag_test` is the trigger's own user here.

The suite turns the manual-run and retention-rules triggers off (tests/conftest.py); each test
here turns on what it checks.
"""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import sqlalchemy as sa

from tests.e2e import hitl
from tests.e2e.hitl import Key

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
TRIGGER = "dag_test"  # who dag.test() says triggered the run
HASH_KEY = b"e2e-test-key"  # tests/e2e/conftest.py


@pytest.fixture
def db_url(sqlite_url: str) -> str:
    """The rules are not backend-specific (the ledger's SQL is tested on both elsewhere)."""
    return sqlite_url


@pytest.fixture
def desk():
    from tests.e2e.staff_desk import open_desk

    return open_desk()


@pytest.fixture
def sent(monkeypatch) -> list[Any]:
    """Alerts as the staff channels would receive them."""
    from compliance.core import alerts

    got: list[alerts.Alert] = []
    monkeypatch.setenv("COMPLIANCE_ALERT_SLACK_CONN", "slack_alerts")
    monkeypatch.setattr(
        alerts, "dispatch", lambda alert, settings, senders, *a, **k: got.append(alert) or ["x"]
    )
    return got


def _token(name: str, role: str = "op") -> str:
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser

    return get_auth_manager().generate_jwt(SimpleAuthManagerUser(username=name, role=role))


def _url(key: Key) -> str:
    dag_id, run_id, task_id, map_index = key
    return (
        f"/api/v2/dags/{dag_id}/dagRuns/{quote(run_id, safe='')}/taskInstances/"
        f"{task_id}/{map_index}/hitlDetails"
    )


def _patch(desk, key: Key, option: str, user: str, cookie: bool = False) -> Any:
    body = {"chosen_options": [option]}
    if cookie:
        return desk.http.patch(_url(key), json=body, cookies={"_token": _token(user)})
    return desk.http.patch(
        _url(key), json=body, headers={"Authorization": f"Bearer {_token(user)}"}
    )


_run = hitl.run_answering  # dag.test() here; a second thread answers the parked approval


def _time_out(key: Key) -> None:
    """The response timeout passed: the scheduler's sweep takes the default (Reject)."""
    left = hitl.time_out(key)
    # COMPLIANCE_APPROVAL_TIMEOUT_HOURS reached the parked step
    assert timedelta(0) < left < timedelta(minutes=2), left


def _states(run) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for ti in run.get_task_instances():
        out.setdefault(ti.task_id, set()).add(str(ti.state))
    return out


def _request(stack, n: int = 1) -> list[str]:
    """Drop `n` verified deletion requests of real consumers into the inbox; their e-mails."""
    from datetime import UTC, datetime, timedelta

    engine = sa.create_engine(stack.db_url)
    with engine.connect() as c:
        rows = c.execute(
            sa.text(
                "select c.client_id, c.email from contacts c join clients k "
                "on k.client_id = c.client_id where k.active and c.email is not null "
                "and not c.is_child and not exists (select 1 from legal_holds h "
                "where h.client_id = c.client_id) order by c.contact_id limit :n"
            ),
            {"n": n},
        ).all()
    engine.dispose()
    received = (datetime.now(UTC) - timedelta(days=2)).isoformat()
    for i, (client, email) in enumerate(rows):
        doc = {
            "request_id": f"FE-{i}",
            "client_id": client,
            "type": "delete",
            "identities": {"email": email},
            "received_at": received,
            "verification": {
                "method": "account_login",
                "verified_at": received,
                "verified_by": "staff-7",
            },
        }
        stack.s3.put_object(
            Bucket=stack.bucket, Key=f"inbox/{client}/fe-{i}.json", Body=json.dumps(doc).encode()
        )
    return [r[1] for r in rows]


def _contacts(stack, emails: list[str]) -> int:
    engine = sa.create_engine(stack.db_url)
    try:
        with engine.connect() as c:
            return sum(
                c.execute(
                    sa.text("select count(*) from contacts where lower(email) = lower(:e)"),
                    {"e": e},
                ).scalar()
                for e in emails
            )
    finally:
        engine.dispose()


def _approvals(stack) -> list[Any]:
    from compliance.core import ledger

    engine = sa.create_engine(stack.state_url)
    try:
        return ledger.entries(engine, kind="approval")
    finally:
        engine.dispose()


ERASING = ("erase_system", "scrub_logs", "verify_logs", "erase_recordings", "tombstone_backups")


# -- deletion ----------------------------------------------------------------------------------


def test_own_approve_is_refused_a_second_user_approves(stack, desk, monkeypatch):
    monkeypatch.setenv("COMPLIANCE_APPROVAL_MANUAL_RUNS", "on")
    emails = _request(stack)
    assert _contacts(stack, emails) > 0
    answers: dict[str, Any] = {}

    def answer(key: Key) -> None:
        answers["own"] = _patch(desk, key, "Approve", TRIGGER)
        answers["own_cookie"] = _patch(desk, key, "Approve", TRIGGER, cookie=True)
        # the route coerces map_index like pydantic's lax int: "-1.0" is the same task
        spelt = _url(key).replace(f"/{key[3]}/hitlDetails", "/-1.0/hitlDetails")
        answers["own_spelt"] = desk.http.patch(
            spelt,
            json={"chosen_options": ["Approve"]},
            headers={"Authorization": f"Bearer {_token(TRIGGER)}"},
        )
        answers["second"] = _patch(desk, key, "Approve", "reviewer")

    run, parked = _run("deletion_requests", {"dry_run": False}, answer)
    assert len(parked) == 1
    for how in ("own", "own_cookie", "own_spelt"):
        refused = answers[how]
        assert refused.status_code == 403, (how, refused.text)
        assert refused.headers["content-type"] == "application/problem+json"
        assert refused.json()["code"] == "four_eyes_same_user"
    assert answers["second"].status_code == 200, answers["second"].text
    assert answers["second"].json()["responded_by"]["name"] == "reviewer"
    assert run.state == "success"
    states = _states(run)
    assert states["approve"] == {"success"} and states["finalize"] == {"success"}
    assert states["erase_system"] == {"success"}
    assert states["alert_not_approved"] == {"skipped"}
    assert _contacts(stack, emails) == 0  # erased after the second person's approval
    (entry,) = [e for e in _approvals(stack) if e.payload["run_id"] == run.run_id]
    from compliance.core.hashing import keyed_hash

    assert entry.ref == "deletion_requests"
    assert entry.payload["approver"] == keyed_hash(HASH_KEY, "approver", "reviewer")
    assert entry.payload["why"] == ["manual_run"]
    assert "reviewer" not in json.dumps(entry.payload)


def test_a_rejection_skips_the_erasure_and_alerts(stack, desk, sent, monkeypatch):
    """The trigger's own user may reject (only Approve is refused); a viewer may do neither."""
    monkeypatch.setenv("COMPLIANCE_APPROVAL_MANUAL_RUNS", "on")
    emails = _request(stack)
    before = _contacts(stack, emails)
    replies: list[Any] = []

    def answer(key: Key) -> None:
        viewer = {"Authorization": f"Bearer {_token('auditor', 'viewer')}"}
        replies.append(
            desk.http.patch(_url(key), json={"chosen_options": ["Approve"]}, headers=viewer)
        )
        replies.append(_patch(desk, key, "Reject", TRIGGER))

    run, parked = _run("deletion_requests", {"dry_run": False}, answer)
    assert len(parked) == 1
    assert replies[0].status_code == 403, replies[0].text  # Airflow's own permission check
    assert replies[1].status_code == 200, replies[1].text
    _assert_not_approved(stack, run, emails, before, sent)


def test_a_timeout_is_a_rejection(stack, sent, monkeypatch):
    monkeypatch.setenv("COMPLIANCE_APPROVAL_MANUAL_RUNS", "on")
    monkeypatch.setenv("COMPLIANCE_APPROVAL_TIMEOUT_HOURS", "0.01")  # 36 s
    emails = _request(stack)
    before = _contacts(stack, emails)
    run, parked = _run("deletion_requests", {"dry_run": False}, _time_out)
    assert len(parked) == 1
    _assert_not_approved(stack, run, emails, before, sent)


def test_own_approve_that_bypassed_the_api_is_a_rejection(stack, sent, monkeypatch):
    """Defense in depth: an Approve by the trigger's user that reached the DB without the
    middleware (here: Airflow's endpoint function called directly) is taken as a rejection."""
    monkeypatch.setenv("COMPLIANCE_APPROVAL_MANUAL_RUNS", "on")
    emails = _request(stack)
    before = _contacts(stack, emails)

    def answer(key: Key) -> None:
        from airflow.api_fastapi.core_api.datamodels.hitl import UpdateHITLDetailPayload
        from airflow.api_fastapi.core_api.routes.public.hitl import update_hitl_detail
        from airflow.utils.session import create_session

        class Own:
            def get_id(self) -> str:
                return TRIGGER

            def get_name(self) -> str:
                return TRIGGER

        with create_session() as session:
            update_hitl_detail(
                dag_id=key[0],
                dag_run_id=key[1],
                task_id=key[2],
                update_hitl_detail_payload=UpdateHITLDetailPayload(chosen_options=["Approve"]),
                user=Own(),
                session=session,
            )

    run, parked = _run("deletion_requests", {"dry_run": False}, answer)
    assert len(parked) == 1
    _assert_not_approved(stack, run, emails, before, sent)


def _assert_not_approved(stack, run, emails, before, sent) -> None:
    assert run.state == "success"
    states = _states(run)
    assert states["approve"] == {"success"}
    for task_id in (*ERASING, "notify_subprocessors", "finalize"):
        assert states[task_id] == {"skipped"}, (task_id, states[task_id])
    assert states["alert_not_approved"] == {"success"}
    assert _contacts(stack, emails) == before  # nothing erased
    assert not [e for e in _approvals(stack) if e.payload["run_id"] == run.run_id]
    (alert,) = [a for a in sent if a.kind == "approval"]
    assert "deletion_requests" in alert.subject and "not approved" in alert.subject
    assert "manual_run" in alert.body
    for email in emails:
        assert email not in alert.body


def test_a_small_batch_goes_ahead_without_approval(stack):
    """Manual runs not asked for (the setting off, as for scheduled runs): a batch under the
    size goes ahead; the approval step neither parks nor writes a Required Action."""
    emails = _request(stack)
    run, parked = _run("deletion_requests", {"dry_run": False}, None)
    assert parked == []
    assert run.state == "success"
    states = _states(run)
    assert states["approve"] == {"success"} and states["finalize"] == {"success"}
    assert states["alert_not_approved"] == {"skipped"}
    assert _contacts(stack, emails) == 0
    assert _hitl_rows(run) == 0


def test_a_batch_above_the_size_needs_approval(stack, desk, monkeypatch):
    monkeypatch.setenv("COMPLIANCE_APPROVAL_BATCH_SIZE", "1")
    emails = _request(stack, 2)
    bodies: list[str] = []

    def answer(key: Key) -> None:
        headers = {"Authorization": f"Bearer {_token('reviewer')}"}
        bodies.append(desk.http.get(_url(key), headers=headers).json()["body"])
        assert _patch(desk, key, "Approve", "reviewer").status_code == 200

    run, parked = _run("deletion_requests", {"dry_run": False}, answer)
    assert len(parked) == 1
    assert "larger than the configured size" in bodies[0] and "**2**" in bodies[0]
    for email in emails:
        assert email not in bodies[0]
    assert run.state == "success" and _contacts(stack, emails) == 0


def _hitl_rows(run) -> int:
    from airflow.models.hitl import HITLDetail
    from airflow.utils.session import create_session

    ids = [ti.id for ti in run.get_task_instances()]
    with create_session() as session:
        return session.scalar(
            sa.select(sa.func.count()).select_from(HITLDetail).where(HITLDetail.ti_id.in_(ids))
        )


# -- retention ---------------------------------------------------------------------------------


def test_retention_asks_on_first_run_and_when_the_rules_change(stack, desk, monkeypatch, tmp_path):
    monkeypatch.setenv("COMPLIANCE_APPROVAL_RETENTION_RULES", "on")
    policy = tmp_path / "retention.yaml"
    policy.write_text((REPO / "config" / "retention.yaml").read_text())
    monkeypatch.setenv("COMPLIANCE_RETENTION", str(policy))
    approve = lambda key: _patch(desk, key, "Approve", "reviewer")  # noqa: E731

    first, parked = _run("retention_sweep", {"dry_run": False}, approve)
    assert len(parked) == 1 and first.state == "success"
    assert _states(first)["report"] == {"success"}
    (entry,) = [e for e in _approvals(stack) if e.payload["run_id"] == first.run_id]
    assert entry.ref == "retention_sweep" and entry.payload["why"] == ["first_run"]

    again, parked = _run("retention_sweep", {"dry_run": False}, approve)
    assert parked == [] and again.state == "success"  # unchanged since the approval
    assert _states(again)["report"] == {"success"}

    policy.write_text(policy.read_text() + "\n# edited\n")
    monkeypatch.setenv("COMPLIANCE_APPROVAL_TIMEOUT_HOURS", "0.01")  # nobody answers in time
    changed, parked = _run("retention_sweep", {"dry_run": False}, _time_out)
    assert len(parked) == 1 and changed.state == "success"
    states = _states(changed)
    for task_id in ("expire_minors", "delete_rows", "expire_objects", "report"):
        assert states[task_id] == {"skipped"}, (task_id, states[task_id])
    assert states["alert_not_approved"] == {"success"}
