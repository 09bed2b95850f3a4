"""The deletion DAG distributed: CeleryExecutor, PostgreSQL metadata, Redis broker, two workers.

This machine's services (PostgreSQL on 127.0.0.1:5432, Redis on 127.0.0.1:6379) and Airflow's
own components as separate processes, as docker-compose.yml runs them: api-server, scheduler,
dag-processor, triggerer and two Celery workers (w1, w2). The executor settings are read from
docker-compose.yml (hosts swapped for local ones), so the test runs what the deployment runs.

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
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import yaml

from compliance.core.datamap.validate import load_datamap
from compliance.core.stores.s3 import s3_client
from compliance.core.stores.sql import engine_from_url
from compliance_dev.localenv import (
    airflow_env,
    free_port,
    prepare_workspace,
    start_group,
    start_s3,
    start_webhook_receiver,
    stop_group,
    stop_groups,
    wait_http,
)
from compliance_dev.world.generate import seed_world

from ..conftest import IN_CI, fresh_pg_database
from . import staff_desk
from .conftest import AS_OF, REPO

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.timeout(600)]

REDIS = ("127.0.0.1", 6379)
DAG_ID = "deletion_requests"
WORKERS = ("w1", "w2")
PASSWORD = "celery-test"


def _redis_ok() -> str | None:
    try:
        with socket.create_connection(REDIS, timeout=2) as sock:
            sock.sendall(b"PING\r\n")
            if sock.recv(16).startswith(b"+PONG"):
                return None
            return "Redis on 127.0.0.1:6379 did not answer PING"
    except OSError as exc:
        return f"Redis not reachable on 127.0.0.1:6379: {type(exc).__name__}"


def _need_redis() -> None:
    reason = _redis_ok()
    if reason:
        if IN_CI:
            pytest.fail(f"CI=true and {reason}")
        pytest.skip(reason)


def _need_celery_executor() -> None:
    """The executor must import; celery 5.7.0 broke providers-celery 3.26.0 (no `retry`)."""
    probe = "import airflow.providers.celery.executors.celery_executor_utils"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    if out.returncode:
        from importlib.metadata import version

        pytest.fail(
            f"the CeleryExecutor cannot be imported with celery {version('celery')} and "
            f"apache-airflow-providers-celery {version('apache-airflow-providers-celery')}: "
            f"{out.stderr.strip().splitlines()[-1]}. Pin celery<5.7 in requirements.in "
            "(docs/operations.md, known issues)."
        )


def compose_executor_env(meta_url: str, broker_url: str) -> dict[str, str]:
    """docker-compose.yml's executor settings with its service hosts swapped for local ones."""
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    common = compose["x-airflow-common"]["environment"]
    wanted = {k: str(v) for k, v in common.items() if k.startswith("AIRFLOW__CELERY__")}
    wanted["AIRFLOW__CORE__EXECUTOR"] = str(common["AIRFLOW__CORE__EXECUTOR"])
    assert wanted["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert wanted["AIRFLOW__CELERY__BROKER_URL"].startswith("redis://")
    assert wanted["AIRFLOW__CELERY__RESULT_BACKEND"].startswith("db+postgresql://")
    wanted["AIRFLOW__CELERY__BROKER_URL"] = broker_url
    wanted["AIRFLOW__CELERY__RESULT_BACKEND"] = "db+" + meta_url.replace("+psycopg2", "")
    wanted["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = meta_url
    return wanted


def _pg_conn(url: str) -> str:
    return json.dumps({"conn_type": "postgres", "extra": {"sqlalchemy_url": url}})


class Api:
    def __init__(self, url: str) -> None:
        self.url = url
        self.token: str | None = None

    def __call__(self, method: str, path: str, body: dict | None = None) -> Any:
        for attempt in range(5):
            try:
                if self.token is None:
                    self.token = self._call(
                        "POST", "/auth/token", {"username": "admin", "password": PASSWORD}
                    )["access_token"]
                return self._call(method, path, body, self.token)
            except (TimeoutError, urllib.error.URLError) as exc:
                if isinstance(exc, urllib.error.HTTPError) and exc.code < 500:
                    raise
                if attempt == 4:
                    raise
                time.sleep(2)
        raise AssertionError("unreachable")

    def _call(self, method: str, path: str, body: dict | None, token: str | None = None) -> Any:
        headers = {"Content-Type": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, method=method, data=data, headers=headers)
        with urllib.request.urlopen(req, timeout=30) as resp:
            return json.loads(resp.read() or b"null")


def _wait(what: str, check, timeout: float, logs: Path, procs: list | None = None) -> Any:
    """Poll `check` until truthy; fail at once if one of `procs` has exited."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        for proc in procs or []:
            if proc.poll() is not None:
                raise RuntimeError(f"{proc.args} exited ({proc.returncode}); logs in {logs}")
        time.sleep(2)
    raise TimeoutError(f"{what} not within {timeout:.0f} s; logs in {logs}")


@contextlib.contextmanager
def _processes() -> Iterator[list]:
    procs: list = []
    try:
        yield procs
    finally:
        stop_groups([proc.pid for proc in procs], grace=10)


def test_deletion_dag_runs_on_two_celery_workers(tmp_path):
    _need_redis()
    _need_celery_executor()
    t_start = time.monotonic()
    timings: dict[str, float] = {}
    logs = tmp_path / "logs"
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

        # Airflow: one environment for every component, executor settings from compose.
        dags = tmp_path / "dags"  # only the DAG under test, so parsing is quick
        dags.mkdir()
        (dags / f"{DAG_ID}.py").symlink_to(REPO / "dags" / f"{DAG_ID}.py")
        port = free_port()
        queue = f"cj_{uuid.uuid4().hex[:10]}"
        env = airflow_env(tmp_path, s3_url, tmp_path / "unused.db")
        env.update(compose_executor_env(meta_url, f"redis://{REDIS[0]}:{REDIS[1]}/0"))
        env.update(
            {
                "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
                "AIRFLOW_CONN_CRM_DB": _pg_conn(crm_url),
                "AIRFLOW_CONN_COMPLIANCE_DB": _pg_conn(state_url),
                "COMPLIANCE_DATAMAP": str(datamap),
                "COMPLIANCE_DEADLINE_ALERTS": "on",
                # Due 6 s after queued: this run misses it, so the alert path runs for real.
                f"COMPLIANCE_DEADLINE_MINUTES__{DAG_ID.upper()}": "0.1",
                "COMPLIANCE_ALERT_SNS_TOPIC": topic,
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
                "AIRFLOW__API__HOST": "127.0.0.1",
                "AIRFLOW__API__PORT": str(port),
                "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}/",
                "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
                "AIRFLOW__API_AUTH__JWT_SECRET": uuid.uuid4().hex * 2,
                "AIRFLOW__API__SECRET_KEY": uuid.uuid4().hex,
                "AIRFLOW__WORKERS__EXECUTION_API_TIMEOUT": "30",
                "AIRFLOW__OPERATORS__DEFAULT_QUEUE": queue,
                "AIRFLOW__CORE__HOSTNAME_CALLABLE": "compliance_dev.localenv.worker_hostname",
                "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False",  # only the run we trigger
                "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "False",
                "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
            }
        )
        af_home = Path(env["AIRFLOW_HOME"])
        af_home.mkdir(parents=True, exist_ok=True)
        (af_home / "simple_auth_manager_passwords.json.generated").write_text(
            json.dumps({"admin": PASSWORD})
        )
        timings["setup"] = time.monotonic() - t_start
        migrate = start_group(["airflow", "db", "migrate"], logs / "migrate.log", env)
        assert migrate.wait(timeout=240) == 0, (logs / "migrate.log").read_text()[-3000:]
        timings["db migrate"] = time.monotonic() - t_start

        procs = stack.enter_context(_processes())
        procs.append(start_group(["airflow", "api-server"], logs / "api-server.log", env))
        procs.append(start_group(["airflow", "scheduler"], logs / "scheduler.log", env))
        procs.append(start_group(["airflow", "dag-processor"], logs / "dag-processor.log", env))
        procs.append(start_group(["airflow", "triggerer"], logs / "triggerer.log", env))
        for name in WORKERS:
            worker_env = {
                **env,
                "COMPLIANCE_WORKER_NAME": name,
                "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
            }
            cmd = ["airflow", "celery", "worker", "-H", f"{name}@%h", "-q", queue]
            cmd += ["--concurrency", "2", "--skip-serve-logs", "--without-gossip"]
            procs.append(start_group(cmd, logs / f"worker-{name}.log", worker_env))

        url = f"http://127.0.0.1:{port}"
        wait_http(f"{url}/api/v2/monitor/health", procs[0], 180, logs / "api-server.log")
        api = Api(url)
        for name in WORKERS:
            log = logs / f"worker-{name}.log"
            _wait(f"worker {name}", lambda log=log: " ready." in log.read_text(), 180, logs, procs)
        _wait(f"DAG {DAG_ID} parsed", lambda: _dag_known(api), 180, logs, procs)
        timings["components up"] = time.monotonic() - t_start

        api("PATCH", f"/api/v2/dags/{DAG_ID}", {"is_paused": False})
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
        path = f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}"
        state = _wait("the run", lambda: _finished(api, path), 240, logs, procs)
        timings["run"] = time.monotonic() - t_start

        tis = api("GET", f"{path}/taskInstances?limit=200")["task_instances"]
        states = {(t["task_id"], t["map_index"]): t["state"] for t in tis}
        assert state == "success", f"run {state}: {states}; logs in {logs}"
        # every task succeeded; the four-eyes alert is skipped (nothing was rejected)
        assert states.pop(("alert_not_approved", -1)) == "skipped", states
        assert tis and all(s == "success" for s in states.values()), states
        tis = [t for t in tis if t["state"] == "success"]  # a skipped task ran nowhere
        hosts = {t["hostname"] for t in tis}
        assert hosts == set(WORKERS), f"tasks ran on {hosts}"
        assert {t["queue"] for t in tis} == {queue}
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
        (alert,) = _wait("the deadline alert", lambda: _missed(inbox()), 90, logs, procs)
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


def _finished(api: Api, path: str) -> str | None:
    state = api("GET", path)["state"]
    return state if state in ("success", "failed") else None


def _dag_known(api: Api) -> bool:
    try:
        api("GET", f"/api/v2/dags/{DAG_ID}")
        return True
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return False
        raise
