"""The deletion DAG distributed: CeleryExecutor, PostgreSQL metadata, Redis broker, two workers.

This machine's services (PostgreSQL on 127.0.0.1:5432, Redis on 127.0.0.1:6379) and Airflow's
own components as separate processes, as docker-compose.yml runs them: api-server, scheduler,
dag-processor, triggerer and two Celery workers (w1, w2). The executor settings are read from
docker-compose.yml (hosts swapped for local ones), so the test runs what the deployment runs.
The stack itself is `compliance_dev.celery_stack` (the benchmark's scale-out figure starts the
same one).

Everything is private to this test: a metadata, a CRM and a state database with unique names
(dropped afterwards), a moto S3, free ports, and a Celery queue of its own, so parallel runs on
one Redis cannot take each other's tasks. Everything started is stopped (process groups,
SIGKILL after a grace period). Without PostgreSQL or Redis the test skips; under CI=true it
fails.

Checks: the run succeeds, every task instance succeeded, tasks ran on both workers (each task
instance's hostname, set per worker through `[core] hostname_callable`), the consumer is gone
from the CRM, a receipt was written. The run is given a 6-second Deadline Alert, which it
misses: the triggerer (as in docker-compose.yml) runs the callback and the alert reaches SNS
(read back through a subscribed SQS queue on moto) without the consumer's e-mail.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
import urllib.parse
import urllib.request
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from compliance.core.datamap.validate import load_datamap
from compliance.core.stores.s3 import s3_client
from compliance.core.stores.sql import engine_from_url
from compliance_dev.celery_stack import (
    WORKERS,
    celery_executor_problem,
    celery_stack,
    pg_conn,
    redis_problem,
)
from compliance_dev.localenv import (
    free_port,
    prepare_workspace,
    start_s3,
    start_webhook_receiver,
    stop_group,
)
from compliance_dev.world.generate import seed_world

from ..conftest import IN_CI, fresh_pg_database
from . import staff_desk
from .conftest import AS_OF, REPO

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.timeout(600)]

DAG_ID = "deletion_requests"


def _need_redis() -> None:
    reason = redis_problem()
    if reason:
        if IN_CI:
            pytest.fail(f"CI=true and {reason}")
        pytest.skip(reason)


def _need_celery_executor() -> None:
    """The executor must import; celery 5.7.0 broke providers-celery 3.26.0 (no `retry`)."""
    reason = celery_executor_problem()
    if reason:
        pytest.fail(reason)


def test_deletion_dag_runs_on_two_celery_workers(tmp_path):
    _need_redis()
    _need_celery_executor()
    t_start = time.monotonic()
    timings: dict[str, float] = {}
    with contextlib.ExitStack() as stack:
        meta_url = stack.enter_context(fresh_pg_database())
        crm_url = stack.enter_context(fresh_pg_database())
        state_url = stack.enter_context(fresh_pg_database())
        s3_proc, s3_url = start_s3(tmp_path)
        stack.callback(stop_group, s3_proc.pid, 5)

        # The world: a tiny CRM on PostgreSQL, its object stores and the workspace on moto, and
        # the ESP's deletion webhook on a free port (a copy of the demo map points at it).
        esp = start_webhook_receiver(free_port())
        assert esp is not None
        stack.callback(esp.shutdown)
        datamap = tmp_path / "datamap.yaml"
        datamap.write_text(
            (REPO / "config" / "datamap.yaml")
            .read_text()
            .replace("http://127.0.0.1:8719/", f"http://127.0.0.1:{esp.server_port}/")
        )
        s3 = s3_client(s3_url, access_key="testing", secret_key="testing")
        topic, inbox = _alert_inbox(s3_url)
        crm = engine_from_url(crm_url)
        seed_world(crm, s3, load_datamap(datamap), "tiny", 7, AS_OF)
        client_id, address = _consumer(crm)
        prepare_workspace(s3_url, "cj-compliance", datamap)
        timings["setup"] = time.monotonic() - t_start

        # Airflow: one environment for every component (compliance_dev.celery_stack), executor
        # settings from compose; only the DAG under test, so parsing is quick.
        env = {
            "AIRFLOW_CONN_CRM_DB": pg_conn(crm_url),
            "AIRFLOW_CONN_COMPLIANCE_DB": pg_conn(state_url),
            "COMPLIANCE_DATAMAP": str(datamap),
            "COMPLIANCE_DEADLINE_ALERTS": "on",
            # Due 6 s after queued: this run misses it, so the alert path runs for real.
            f"COMPLIANCE_DEADLINE_MINUTES__{DAG_ID.upper()}": "0.1",
            "COMPLIANCE_ALERT_SNS_TOPIC": topic,
        }
        cel = stack.enter_context(
            celery_stack(tmp_path, meta_url=meta_url, s3_url=s3_url, dag_ids=[DAG_ID], env=env)
        )
        logs, api, url = cel.logs, cel.api, cel.url
        timings["db migrate"] = timings["setup"] + cel.timings["db migrate"]
        timings["components up"] = timings["setup"] + cel.timings["components up"]

        request_id = f"CEL-{uuid.uuid4().hex[:8]}"
        received = (datetime.now(UTC) - timedelta(days=2)).isoformat()
        fields = {  # the staff page: identities go to the inbox, the run gets a reference
            "type": "delete",
            "execute": "on",
            "request_id": request_id,
            "client_id": str(client_id),
            "email": address,
            "received_at": received,
            "verification_method": "email_link",
            "verified_by": "client-staff",
        }
        api("GET", "/api/v2/version")  # signs in
        page = urllib.request.Request(
            f"{url}/compliance/requests",
            data=urllib.parse.urlencode(fields).encode(),
            headers={"Authorization": f"Bearer {api.token}"},
        )
        with urllib.request.urlopen(page, timeout=60) as resp:
            _, run_id = staff_desk.run_id_of(resp.read().decode())
        state = cel.wait_run(DAG_ID, run_id, 240)["state"]
        timings["run"] = time.monotonic() - t_start

        tis = cel.task_instances(DAG_ID, run_id)
        states = {(t["task_id"], t["map_index"]): t["state"] for t in tis}
        assert state == "success", f"run {state}: {states}; logs in {logs}"
        # every task succeeded; the four-eyes alert is skipped (nothing was rejected)
        assert states.pop(("alert_not_approved", -1)) == "skipped", states
        assert tis and all(s == "success" for s in states.values()), states
        tis = [t for t in tis if t["state"] == "success"]  # a skipped task ran nowhere
        hosts = {t["hostname"] for t in tis}
        assert hosts == set(WORKERS), f"tasks ran on {hosts}"
        assert {t["queue"] for t in tis} == {cel.queue}
        per_worker = {h: sum(t["hostname"] == h for t in tis) for h in WORKERS}

        # The deletion happened, and the receipt says so.
        with crm.connect() as c:
            left = c.execute(
                sa.text("select count(*) from contacts where client_id = :c and email = :e"),
                {"c": client_id, "e": address},
            ).scalar_one()
        crm.dispose()
        assert left == 0
        s3.head_object(Bucket="cj-compliance", Key=f"receipts/{client_id}/{request_id}.delete.json")

        # The Deadline Alert: missed after 6 s, run by the triggerer, sent to SNS; PII-free.
        (alert,) = cel.wait("the deadline alert", lambda: _missed(inbox()), 90)
        assert alert["Subject"] == f"[compliance] {DAG_ID} run {run_id} missed its deadline"
        assert alert["MessageAttributes"]["kind"]["Value"] == "deadline_missed"
        everything = json.dumps(inbox())
        assert address not in everything and address.split("@")[0] not in everything
        procs_done = time.monotonic()
    timings["teardown"] = time.monotonic() - procs_done
    print(
        f"\ncelery run: {len(tis)} task instances, per worker {per_worker}; "
        + ", ".join(f"{k} {v:.0f}s" for k, v in timings.items()),
        file=sys.stderr,
    )


def _consumer(engine) -> tuple[int, str]:
    """A consumer with an e-mail, of an active client, not a child, under no legal hold."""
    with engine.connect() as c:
        row = c.execute(
            sa.text(
                "select c.client_id, c.email from contacts c join clients k "
                "on k.client_id = c.client_id where k.active and c.email is not null "
                "and not c.is_child and not exists (select 1 from legal_holds h "
                "where h.client_id = c.client_id) "
                "and (select count(*) from contacts o where o.client_id = c.client_id "
                "and lower(o.email) = lower(c.email)) = 1 "
                "order by c.contact_id limit 1"
            )
        ).one()
    return int(row[0]), str(row[1])


def _alert_inbox(s3_url: str) -> tuple[str, Any]:
    """An SNS topic for the alerts and a reader of the SQS queue subscribed to it."""
    import boto3

    aws = {"endpoint_url": s3_url, "region_name": "us-east-1"}
    keys = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
    sns, sqs = boto3.client("sns", **aws, **keys), boto3.client("sqs", **aws, **keys)
    topic = sns.create_topic(Name="compliance-alerts")["TopicArn"]
    queue = sqs.create_queue(QueueName="compliance-alerts")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"]
    sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=arn["QueueArn"])
    seen: list[dict] = []

    def read() -> list[dict]:
        got = sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10).get("Messages", [])
        seen.extend(json.loads(m["Body"]) for m in got)
        return seen

    return topic, read


def _missed(messages: list[dict]) -> list[dict]:
    return [m for m in messages if "missed its deadline" in m.get("Subject", "")]
